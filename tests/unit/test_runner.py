"""Stage runner and recipe pipeline: manifests, caching, interrupted runs, wiring by name."""
import json
import textwrap

import pytest

from support import echo_stage
from compass import stages
from compass.config import StageConfig
from compass.errors import CompassError
from compass.io import sha256_file
from compass.manifest import read_manifest
from compass.pipeline import run_recipe
from compass.runner import execute_stage


@pytest.fixture(autouse=True)
def echo_registered(monkeypatch):
    monkeypatch.setitem(stages.STAGES, "echo", "support.echo_stage")
    echo_stage.CALLS.clear()


def test_manifest_records_config_inputs_outputs_and_versions(tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("hello")
    result = execute_stage("echo", echo_stage.Config(suffix="?", repeat=2), {"text": src}, tmp_path / "out")
    m = read_manifest(tmp_path / "out")
    assert not result.cached
    assert (tmp_path / "out" / "out.txt").read_text() == "hello??"
    assert m.config == {"seed": 42, "suffix": "?", "repeat": 2, "fail_after_partial": False}
    assert m.seed == 42
    assert m.inputs["text"].files == {"in.txt": sha256_file(src)}
    assert m.outputs == {"out.txt": sha256_file(tmp_path / "out" / "out.txt")}
    assert m.metrics == {"chars": 7}
    assert m.versions["torch"] == "2.13.0+cpu" or m.versions["torch"].startswith("2.13.0")
    assert len(m.code.commit or "") in (0, 40)
    assert m.wall_time_s >= 0
    # the file on disk is plain JSON a person can read
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["stage"] == "echo"


def test_cached_when_config_and_inputs_match_and_rerun_when_they_change(tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("a")
    out = tmp_path / "out"
    assert not execute_stage("echo", echo_stage.Config(), {"text": src}, out).cached
    assert execute_stage("echo", echo_stage.Config(), {"text": src}, out).cached
    assert len(echo_stage.CALLS) == 1
    assert not execute_stage("echo", echo_stage.Config(repeat=3), {"text": src}, out).cached
    src.write_text("b")
    assert not execute_stage("echo", echo_stage.Config(repeat=3), {"text": src}, out).cached
    assert (out / "out.txt").read_text() == "b!!!"
    # an output edited after the run invalidates the cache
    (out / "out.txt").write_text("tampered")
    assert not execute_stage("echo", echo_stage.Config(repeat=3), {"text": src}, out).cached
    assert (out / "out.txt").read_text() == "b!!!"


def test_interrupted_stage_leaves_no_manifest_and_is_redone(tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("xyz")
    out = tmp_path / "out"
    execute_stage("echo", echo_stage.Config(), {"text": src}, out)
    with pytest.raises(CompassError, match="simulated interruption"):
        execute_stage("echo", echo_stage.Config(fail_after_partial=True), {"text": src}, out)
    assert read_manifest(out) is None  # the old manifest no longer vouches for the directory
    result = execute_stage("echo", echo_stage.Config(), {"text": src}, out)
    assert not result.cached and (out / "out.txt").read_text() == "xyz!"


def test_missing_and_unknown_inputs_fail_with_the_name(tmp_path):
    with pytest.raises(CompassError, match="missing input 'text'"):
        execute_stage("echo", echo_stage.Config(), {}, tmp_path / "o")
    with pytest.raises(CompassError, match="does not exist"):
        execute_stage("echo", echo_stage.Config(), {"text": tmp_path / "nope.txt"}, tmp_path / "o")
    with pytest.raises(CompassError, match=r"unknown input\(s\) \['bogus'\]"):
        execute_stage("echo", echo_stage.Config(), {"text": tmp_path, "bogus": tmp_path}, tmp_path / "o")
    with pytest.raises(CompassError, match="config must be Config"):
        execute_stage("echo", StageConfig(), {"text": tmp_path}, tmp_path / "o")


def test_recipe_wires_outputs_to_inputs_and_second_run_is_cached(tmp_path, capsys):
    (tmp_path / "seed.txt").write_text("s")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(textwrap.dedent(f"""\
        # compass run r.yaml
        name: chain
        seed: 7
        stages:
          - name: first
            stage: echo
            inputs: {{text: {tmp_path / 'seed.txt'}}}
            config: {{suffix: "1"}}
          - name: second
            stage: echo
            inputs: {{text: first.text}}
            config: {{suffix: "2", repeat: 2}}
        """))
    results = run_recipe(recipe, tmp_path / "work")
    assert (tmp_path / "work" / "second" / "out.txt").read_text() == "s122"
    assert results["second"].manifest.seed == 7
    assert results["second"].manifest.inputs["text"].path == str(tmp_path / "work" / "first" / "out.txt")
    capsys.readouterr()
    again = run_recipe(recipe, tmp_path / "work")
    assert all(r.cached for r in again.values())
    assert capsys.readouterr().out.count("cached") == 2


def test_rerun_with_another_config_drops_the_previous_runs_files(tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("a")
    out = tmp_path / "out"
    execute_stage("echo", echo_stage.Config(), {"text": src}, out)
    (out / ".stage-state.json").write_text("hidden bookkeeping of the first run")
    execute_stage("echo", echo_stage.Config(repeat=2), {"text": src}, out, force=True)
    assert sorted(p.name for p in out.iterdir() if p.name != ".compass-out") == ["manifest.json", "out.txt"]
    assert read_manifest(out).outputs.keys() == {"out.txt"}
    # a file someone put there since is not the run's to delete: the rerun refuses, naming it, and keeps it
    (out / "notes.txt").write_text("mine")
    with pytest.raises(CompassError, match=r"did not write \(notes.txt\)"):
        execute_stage("echo", echo_stage.Config(repeat=3), {"text": src}, out)
    assert (out / "notes.txt").read_text() == "mine" and (out / "out.txt").read_text() == "a!!"
