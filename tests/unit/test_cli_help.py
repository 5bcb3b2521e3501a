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
    assert {"compass-phase2", "longdoc-internalized", "tiny"} <= set(recipe_names()) and recipe_names() == sorted(recipe_names())
    assert resolve_recipe("tiny") == packaged_recipe("tiny") == resolve_recipe("tiny.yaml")
    with pytest.raises(CompassError, match=r"recipe not found: tinyy .*'tiny'"):
        resolve_recipe("tinyy")
    assert main(["recipes"]) == 0
    listing = capsys.readouterr().out.splitlines()
    names = recipe_names()
    assert [line.split()[0] for line in listing[:len(names)]] == names
    assert "22 stages" in listing[names.index("tiny")]

    written = copy_recipe("longdoc-internalized", tmp_path / "mine")
    assert written == [tmp_path / "mine/longdoc-internalized.yaml", tmp_path / "mine/configs/accelerate/zero3.yaml"]
    assert written[1].read_bytes() == (packaged_recipe("tiny").parent / "configs/accelerate/zero3.yaml").read_bytes()
    with pytest.raises(CompassError, match="not overwriting .*--force"):
        copy_recipe("longdoc-internalized", tmp_path / "mine")
    assert main(["recipes", "copy", "longdoc-internalized", str(tmp_path / "mine"), "--force"]) == 0


def test_every_device_default_is_auto_and_resolves_to_this_machine():
    import typing

    from pydantic import BaseModel

    from compass.generate.base import torch_device
    from compass.stages import STAGES, get_stage

    def device_defaults(model, where):
        for name, field in model.model_fields.items():
            if name == "device":
                yield where + name, field.get_default(call_default_factory=True)
            for arg in (field.annotation, *typing.get_args(field.annotation)):
                if isinstance(arg, type) and issubclass(arg, BaseModel):
                    yield from device_defaults(arg, f"{where}{name}.")

    found = {f"{kind}: {path}": default for kind in STAGES for path, default in device_defaults(get_stage(kind).Config, "")}
    assert {"sft: device", "dpo: device", "eval: device"} <= set(found), sorted(found)
    assert any(key.startswith("distill: ") for key in found), sorted(found)
    assert set(found.values()) == {"auto"}, {k: v for k, v in found.items() if v != "auto"}
    import torch

    assert torch_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert torch_device("cuda:1") == "cuda:1"
