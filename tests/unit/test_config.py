"""Recipe validation: every malformed recipe fails before anything runs, naming file, line, key path and expectation."""
import textwrap

import pytest

from support import echo_stage  # noqa: F401 - registered below
from compass import stages
from compass.config import load_recipe, load_stage_config
from compass.errors import CompassError
from compass.pipeline import check_recipe

GOOD_STAGE = """\
  - name: first
    stage: echo
    inputs: {text: in.txt}
    config: {suffix: "!"}
"""


@pytest.fixture(autouse=True)
def echo_registered(monkeypatch):
    monkeypatch.setitem(stages.STAGES, "echo", "support.echo_stage")


# (recipe text, regex the one-line message must match) - each a different way to get a recipe wrong
MALFORMED = [
    ("name: r\nstages: []\n", r"r\.yaml:2: stages: List should have at least 1 item"),
    ("stages:\n" + GOOD_STAGE, r"r\.yaml:1: name: missing required value"),
    ("name: r\ncolour: blue\nstages:\n" + GOOD_STAGE, r"r\.yaml:2: colour: unknown key"),
    ("name: r\nstages:\n" + GOOD_STAGE.replace("suffix", "sufix"), r"r\.yaml:6: stages\.0\.config\.sufix: unknown key"),
    ("name: r\nstages:\n" + GOOD_STAGE.replace('{suffix: "!"}', "{repeat: many}"),
     r"r\.yaml:6: stages\.0\.config\.repeat: Input should be a valid integer.*'many'"),
    ("name: r\nstages:\n" + GOOD_STAGE.replace('{suffix: "!"}', "{repeat: 0}"),
     r"r\.yaml:6: stages\.0\.config\.repeat: Input should be greater than or equal to 1 \(got 0\)"),
    ("name: r\nstages:\n" + GOOD_STAGE.replace("stage: echo", "stage: ecko"), r"r\.yaml:4: stages\.0\.stage: unknown stage 'ecko'"),
    ("name: r\nstages:\n" + GOOD_STAGE.replace("inputs: {text: in.txt}", "inputs: {txt: in.txt}"),
     r"r\.yaml:5: stages\.0\.inputs\.txt: stage echo has no input 'txt'"),
    ("name: r\nstages:\n" + GOOD_STAGE.replace("inputs: {text: in.txt}", "inputs: {}"),
     r"r\.yaml:5: stages\.0\.inputs: stage echo needs input\(s\) \['text'\]"),
    ("name: r\nstages:\n" + GOOD_STAGE + GOOD_STAGE, r"r\.yaml:7: stages\.1\.name: duplicate stage name 'first'"),
    ("name: r\nstages:\n" + GOOD_STAGE.replace("in.txt", "later.text") + GOOD_STAGE.replace("first", "later"),
     r"r\.yaml:5: stages\.0\.inputs\.text: refers to stage 'later', which does not run before 'first'"),
    ("name: r\nstages:\n  - name: a b\n    stage: echo\n", r"r\.yaml:3: stages\.0\.name: Value error, stage name must be"),
    ("name: r\nstages:\n" + GOOD_STAGE.replace("config: {suffix: \"!\"}", "config: [1, 2]"),
     r"r\.yaml:6: stages\.0\.config: Input should be a valid dictionary"),
    ("name: r\nstages: {a: 1}\n", r"r\.yaml:2: stages: Input should be a valid list"),
    ("- just\n- a list\n", r"r\.yaml:1: <top level>: a recipe must be a mapping"),
    ("name: r\nstages:\n  - name: [unclosed\n", r"r\.yaml:\d+: not valid YAML"),
    ("name: r\nstages:\n" + GOOD_STAGE + "    launch: {num_processes: 0}\n",
     r"r\.yaml:7: stages\.0\.launch\.num_processes: Input should be greater than or equal to 1"),
]


@pytest.mark.parametrize("text,expected", MALFORMED, ids=[f"case{i}" for i in range(len(MALFORMED))])
def test_malformed_recipe_is_rejected_with_file_line_key_and_expectation(tmp_path, text, expected):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    with pytest.raises(CompassError) as err:
        recipe, doc = load_recipe(path)
        check_recipe(recipe, doc)
    message = str(err.value)
    assert "\n" not in message
    assert str(path) in message
    import re

    assert re.search(expected, message), message


def test_missing_recipe_file(tmp_path):
    with pytest.raises(CompassError, match="config file not found: .*nope.yaml"):
        load_recipe(tmp_path / "nope.yaml")


def test_stage_config_file_and_overrides(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("suffix: '?'\nrepeat: 2\n")
    config = load_stage_config(echo_stage.Config, cfg, {"repeat": 5})
    assert (config.suffix, config.repeat, config.seed) == ("?", 5, 42)
    cfg.write_text("suffix: '?'\nrepeet: 2\n")
    with pytest.raises(CompassError, match=r"c\.yaml:2: repeet: unknown key"):
        load_stage_config(echo_stage.Config, cfg, {})
    with pytest.raises(CompassError, match=r"command line: repeat: Input should be a valid integer"):
        load_stage_config(echo_stage.Config, None, {"repeat": "x"})


def test_every_shipped_recipe_validates():
    from compass.demo import RECIPE_DIR

    shipped = sorted(p for p in RECIPE_DIR.iterdir() if p.name.endswith(".yaml"))
    assert any(p.name == "tiny.yaml" for p in shipped)
    for path in shipped:
        recipe, doc = load_recipe(path)
        check_recipe(recipe, doc)
        assert path.read_text().startswith("# "), f"{path.name} must begin with the command that runs it"
