"""The CLI: every verb's help shows an example; bad input is one line and a non-zero exit; --debug shows the traceback."""
import os
import subprocess
import sys

import pytest

from compass.cli import DELEGATED, main
from compass.stages import available_stages


def help_text(argv, capsys) -> str:
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 0
    return capsys.readouterr().out


def test_top_level_help_shows_examples(capsys):
    out = help_text(["--help"], capsys)
    assert "examples:" in out and "compass demo" in out


@pytest.mark.parametrize("verb", ["demo", "run", *available_stages()])
def test_every_verb_help_shows_an_example(verb, capsys):
    out = help_text([verb, "--help"], capsys)
    assert "example" in out and f"compass {verb}" in out


@pytest.mark.parametrize("verb", sorted(DELEGATED))
def test_delegated_verb_help_shows_an_example(verb, capsys):
    out = help_text([verb, "--help"], capsys)
    assert "example" in out.lower() and f"compass {verb}" in out


def test_bad_recipe_is_one_line_and_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nstages: []\n")
    assert main(["run", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {bad}:2: stages:")


def test_debug_shows_the_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nstages: []\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    plain = subprocess.run([sys.executable, "-m", "compass.cli", "run", str(bad)], capture_output=True, text=True, env=env)
    debug = subprocess.run([sys.executable, "-m", "compass.cli", "--debug", "run", str(bad)], capture_output=True, text=True, env=env)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "CompassError" in debug.stderr
