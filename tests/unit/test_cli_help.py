"""`compass --help` and friends: YAML defaults, DIR/PATH metavars, did-you-mean, the packaged recipes by name."""
from pathlib import Path

import pytest
import yaml

from compass.cli import default_text, main
from compass.errors import CompassError
from compass.packaged import copy_recipe, packaged_recipe, recipe_names, resolve_recipe


def test_defaults_are_yaml_not_python_reprs():
    assert default_text({"on": 0.45, "none": 0.05}) == "{none: 0.05, 'on': 0.45}"
    assert yaml.safe_load(default_text({"on": 0.45, "none": 0.05})) == {"on": 0.45, "none": 0.05}
    assert default_text(["q_proj", "v_proj"]) == "[q_proj, v_proj]"
    assert default_text(None) == "null" and default_text(True) == "true" and default_text("cpu") == "cpu"
    assert default_text(Path("a/b")) == "a/b"


def test_stage_help_shows_dir_inputs_and_yaml_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["sft", "--help"])
    out = capsys.readouterr().out
    assert "--model DIR" in out and "--data PATH" in out and "INPUT__" not in out
    assert "(default: null)" in out and "(default: [])" in out
    assert "(default: None)" not in out


def test_unknown_flag_and_verb_suggest_the_closest(capsys):
    with pytest.raises(SystemExit) as err:
        main(["sft", "--out", "x", "--learning-rte", "1"])
    assert err.value.code == 2
    assert "did you mean --learning-rate?" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["sfft", "--out", "x"])
    assert "unknown VERB 'sfft'; did you mean 'sft'?" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["run", "tiny", "--onyl", "sft"])
    assert "did you mean --only?" in capsys.readouterr().err


def test_recipes_by_name_and_an_editable_copy(tmp_path, capsys):
    assert recipe_names() == ["compass-phase2", "longdoc-internalized", "tiny"]
    assert resolve_recipe("tiny") == packaged_recipe("tiny") == resolve_recipe("tiny.yaml")
    with pytest.raises(CompassError, match=r"recipe not found: tinyy .*'tiny'"):
        resolve_recipe("tinyy")
    assert main(["recipes"]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in listing[:3]] == recipe_names()
    assert "22 stages" in listing[2]

    written = copy_recipe("longdoc-internalized", tmp_path / "mine")
    assert written == [tmp_path / "mine/longdoc-internalized.yaml", tmp_path / "mine/configs/accelerate/zero3.yaml"]
    assert written[1].read_bytes() == (packaged_recipe("tiny").parent / "configs/accelerate/zero3.yaml").read_bytes()
    with pytest.raises(CompassError, match="not overwriting .*--force"):
        copy_recipe("longdoc-internalized", tmp_path / "mine")
    assert main(["recipes", "copy", "longdoc-internalized", str(tmp_path / "mine"), "--force"]) == 0
