"""MLflow runs are live: while `compass sft` trains in another process, the workspace's sqlite store shows its
run RUNNING with a loss history that grows; afterwards the run is FINISHED with its real duration, the tags a
person filters on (no per-file hash tags), and artifacts to open (files.json, log history, adapter config).
A stage that raises leaves a FAILED run. `compass run` makes one parent run per recipe run in the recipe's
experiment, which MLflow's UI opens on its runs table; the stages that ran are its children."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from support import echo_stage
from support.traces import synthetic_trace

from compass import stages
from compass.errors import CompassError
from compass.ledger.workspace import Workspace
from compass.runner import execute_stage


def client_for(home: Path):
    """A client on the workspace's store, opened under the ledger lock: compass creates the store (MLflow's
    migrations) under that lock, and a second process migrating the same new file at once breaks it."""
    from mlflow.tracking import MlflowClient

    from compass.ledger.workspace import ledger_lock

    workspace = Workspace(home)
    with ledger_lock(workspace):
        client = MlflowClient(tracking_uri=workspace.tracking_uri)
        client.search_experiments()  # the first use opens the store (and would migrate it)
    return client


def sft_runs(client):
    experiment = client.get_experiment_by_name("compass")
    if experiment is None:
        return []
    return client.search_runs([experiment.experiment_id], filter_string="tags.`compass.stage` = 'sft'")


@pytest.mark.slow
def test_training_run_is_running_with_growing_loss_while_it_trains(tiny_models, tmp_path):
    home = tmp_path / "home"
    data = tmp_path / "traces.jsonl"
    data.write_text("".join(synthetic_trace(i).model_dump_json() + "\n" for i in range(16)))
    out = tmp_path / "sft"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "COMPASS_HOME": str(home)}
    proc = subprocess.Popen([sys.executable, "-m", "compass.cli", "sft", "--model", str(tiny_models.llm), "--data", str(data),
                             "--out", str(out), "--max-steps", "120", "--global-batch-size", "2", "--logging-steps", "2",
                             "--max-length", "96", "--save-steps", "1000"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: list[int] = []  # length of train/loss history each time the run was seen RUNNING
    try:
        deadline = time.monotonic() + 540
        while proc.poll() is None and time.monotonic() < deadline:
            if (home / "mlflow.db").is_file():
                runs = sft_runs(client_for(home))
                if runs and runs[0].info.status == "RUNNING":
                    seen.append(len(client_for(home).get_metric_history(runs[0].info.run_id, "train/loss")))
            time.sleep(0.5)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr[-3000:]
    growing = [n for n in seen if n > 0]
    assert len(set(growing)) >= 2 and growing == sorted(growing), seen  # seen RUNNING at two history lengths

    client = client_for(home)
    (run,) = sft_runs(client)
    assert run.info.status == "FINISHED"
    assert run.info.end_time - run.info.start_time >= 1000, "the run spans the training, not the recording"
    losses = client.get_metric_history(run.info.run_id, "train/loss")
    logged = [e for e in json.loads((out / "log_history.json").read_text()) if "loss" in e]
    assert [m.step for m in losses] == [e["step"] for e in logged]  # streamed once, not again at recording
    assert [m.value for m in losses] == pytest.approx([e["loss"] for e in logged])
    stamps = [m.timestamp for m in losses]
    assert stamps[-1] - stamps[0] >= 500 and run.info.start_time <= stamps[0] <= stamps[-1] <= run.info.end_time
    tags = run.data.tags
    assert tags["compass.stage"] == "sft" and tags["compass.run_id"] and tags["compass.name"] == "sft"
    assert not [k for k in tags if k.startswith(("compass.output", "compass.input", "compass.version."))]
    assert len([k for k in tags if k.startswith("compass.")]) <= 20, sorted(tags)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)} | \
        {a.path for a in client.list_artifacts(run.info.run_id, "outputs")} | \
        {a.path for a in client.list_artifacts(run.info.run_id, "outputs/adapter")}
    for expected in ("manifest.json", "config.yaml", "files.json", "outputs/log_history.json", "outputs/adapter/adapter_config.json"):
        assert expected in artifacts, sorted(artifacts)
    files = json.loads(Path(client.download_artifacts(run.info.run_id, "files.json", str(tmp_path))).read_text())
    assert "adapter/adapter_model.safetensors" in files["outputs"] and files["inputs"]["data"]
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


@pytest.fixture
def echo(monkeypatch):
    monkeypatch.setitem(stages.STAGES, "echo", "support.echo_stage")


def test_a_stage_that_raises_leaves_a_failed_run(echo, tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("COMPASS_HOME", str(home))
    src = tmp_path / "in.txt"
    src.write_text("hi")
    with pytest.raises(CompassError, match="simulated interruption"):
        execute_stage("echo", echo_stage.Config(fail_after_partial=True), {"text": src}, tmp_path / "out")
    client = client_for(home)
    (run,) = client.search_runs([client.get_experiment_by_name("compass").experiment_id])
    assert run.info.status == "FAILED" and run.info.end_time >= run.info.start_time
    assert run.data.tags["compass.error"] == "CompassError: simulated interruption"
    assert "compass.run_id" not in run.data.tags  # never recorded: `compass runs check` does not see it as a leftover


def test_recipe_run_is_a_parent_with_stage_children_in_the_recipe_experiment(echo, tmp_path, monkeypatch):
    from compass.pipeline import run_recipe

    home = tmp_path / "home"
    monkeypatch.setenv("COMPASS_HOME", str(home))
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    (tmp_path / "in.txt").write_text("hi")
    recipe = tmp_path / "two.yaml"
    recipe.write_text(yaml.safe_dump({"name": "echo-twice", "stages": [
        {"name": "a", "stage": "echo", "inputs": {"text": str(tmp_path / "in.txt")}},
        {"name": "b", "stage": "echo", "inputs": {"text": "a.text"}}]}))
    run_recipe(recipe, tmp_path / "work", log=lambda line: None)
    run_recipe(recipe, tmp_path / "work", log=lambda line: None)  # all cached: a parent without new children

    client = client_for(home)
    experiment = client.get_experiment_by_name("echo-twice")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    parents = [r for r in runs if r.data.tags.get("compass.kind") == "recipe"]
    children = [r for r in runs if r not in parents]
    assert len(parents) == 2 and all(p.info.status == "FINISHED" for p in parents)
    assert sorted(c.data.tags["compass.name"] for c in children) == ["a", "b"]
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    b = next(c for c in children if c.data.tags["compass.name"] == "b")
    a = next(c for c in children if c.data.tags["compass.name"] == "a")
    assert b.data.tags["compass.parent_mlflow_runs"] == a.info.run_id
    summary = client.download_artifacts(parents[1].info.run_id, "summary.txt", str(tmp_path))
    assert "2 stage(s): 0 ran" in Path(summary).read_text()
    assert client.get_experiment_by_name("compass") is None  # nothing went to the default experiment
