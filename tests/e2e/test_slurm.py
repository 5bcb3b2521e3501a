"""Recipes on a real one-node Slurm cluster (slurm-wlm: munged + slurmctld + slurmd started by this module's
setup, stopped after): a recipe whose data stage runs as a job array of shards and whose CPU training stage
runs as a job completes, its outputs equal a local run of the same recipe, the runs are recorded as usual,
and a resubmitted recipe submits nothing. The binaries come from scripts/ensure-slurm.sh (Debian's packages)
when missing and this user is root; otherwise the module is skipped with the reason."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from support.slurm_cluster import SlurmCluster, missing_binaries
from support.traces import synthetic_trace
from compass.config import Launch, SlurmLaunch
from compass.io import sha256_file, write_jsonl
from compass.launch.slurm import shard_dir, worker_command
from compass.pipeline import run_recipe
from compass.runner import execute_stage
from compass.stages import pairs

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
TINY = dict(max_steps=4, global_batch_size=4, micro_batch_size=2, lora_r=8, lora_alpha=16, learning_rate=5e-3,
            max_length=256, logging_steps=1, warmup_ratio=0.0, lora_dropout=0.0)


def ensure_slurm() -> None:
    if not missing_binaries():
        return
    if os.geteuid() != 0:
        pytest.skip(f"slurm binaries missing ({', '.join(missing_binaries())}) and this user cannot install them "
                    "(run scripts/ensure-slurm.sh as root)")
    done = subprocess.run(["bash", str(ROOT / "scripts" / "ensure-slurm.sh")], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"could not install slurm: {done.stderr[-2000:]}"
    assert not missing_binaries()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    ensure_slurm()
    slurm = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        slurm.start()
        yield slurm
    finally:
        slurm.stop()


@pytest.fixture(scope="module")
def traces(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("slurm-data") / "traces.jsonl"
    write_jsonl(path, [synthetic_trace(i) for i in range(40)])
    return path


def recipe_text(llm: Path, traces: Path, slurm: bool) -> str:
    config = ", ".join(f"{k}: {v}" for k, v in TINY.items())
    return (
        "# compass run slurm.yaml\n"
        "name: slurm-e2e\n"
        "seed: 7\n"
        "stages:\n"
        "  - name: pairs\n"
        "    stage: pairs\n"
        f"    inputs: {{traces: {traces}}}\n"
        + ("    launch: {slurm: {shards: 3, poll_s: 0.5}}\n" if slurm else "")
        + "  - name: sft\n"
        "    stage: sft\n"
        f"    inputs: {{model: {llm}, data: {traces}}}\n"
        f"    config: {{{config}}}\n"
        + ("    launch: {slurm: {cpus_per_task: 1, time: '00:20:00', poll_s: 0.5}}\n" if slurm else "")
    )


def losses(out: Path) -> list[float]:
    return [e["loss"] for e in json.loads((out / "log_history.json").read_text()) if "loss" in e]


def test_recipe_on_slurm_equals_a_local_run_and_resubmits_nothing(cluster, tiny_models, traces, tmp_path, capsys):
    on_slurm = tmp_path / "slurm.yaml"
    on_slurm.write_text(recipe_text(tiny_models.llm, traces, slurm=True))
    local = tmp_path / "local.yaml"
    local.write_text(recipe_text(tiny_models.llm, traces, slurm=False))
    lines: list[str] = []
    results = run_recipe(on_slurm, tmp_path / "work-slurm", log=lines.append)
    here = run_recipe(local, tmp_path / "work-local", log=lambda _: None)

    # the sharded data stage: byte-identical to the local run, through a 3-task array
    pair = results["pairs"]
    assert not pair.cached and pair.manifest.outputs == here["pairs"].manifest.outputs
    assert pair.manifest.metrics == here["pairs"].manifest.metrics
    assert pair.manifest.launch["slurm"]["shards"] == 3
    assert not any(shard_dir(pair.out_dir, i, 3).exists() for i in range(3))  # joined, then removed
    shard_logs = sorted((pair.out_dir / ".slurm").glob("shard-*.log"))
    assert len(shard_logs) == 3 and all("pairs shard" in p.read_text() for p in shard_logs)

    # the training stage: a job on the cluster, the same training as here (one process, same seed)
    train = results["sft"]
    assert not train.cached and train.manifest.launch["slurm"]["cpus_per_task"] == 1
    job_logs = list((train.out_dir / ".slurm").glob("job-*.log"))
    assert len(job_logs) == 1
    assert losses(train.out_dir) == pytest.approx(losses(here["sft"].out_dir), abs=1e-6)
    assert train.manifest.metrics["last_loss"] < train.manifest.metrics["first_loss"]
    for name in ("adapter/adapter_model.safetensors", "merged/model.safetensors"):
        if name in here["sft"].manifest.outputs:
            assert train.manifest.outputs[name] == here["sft"].manifest.outputs[name], name
    assert not (train.out_dir / ".metrics.json").exists()
    # the jobs' logs were streamed while compass run waited: every line of each, with its job's prefix
    printed = capsys.readouterr().out.splitlines()
    job_id = job_logs[0].stem.removeprefix("job-")
    assert f"launch: slurm: sft submitted as job {job_id} ({train.out_dir / '.slurm' / 'job.sbatch'})" in printed
    for line in filter(None, job_logs[0].read_text().splitlines()):
        assert f"[sft {job_id}] {line}" in printed
    for index in range(3):
        assert any(p.startswith(f"[pairs shard {index}/3] pairs shard {index}/3: done") for p in printed)
    assert [line for line in lines if "sft" in line][-1].startswith("[2/2] sft: done")

    # a resubmitted recipe: every stage is a cache hit, nothing goes to sbatch
    queue_before = job_count()
    again = run_recipe(on_slurm, tmp_path / "work-slurm", log=lambda _: None)
    assert again["pairs"].cached and again["sft"].cached
    assert job_count() == queue_before


def job_count() -> int:
    """Jobs the controller knows (running or recently finished)."""
    out = subprocess.run(["scontrol", "show", "job", "-o"], capture_output=True, text=True, check=True).stdout
    return sum(1 for line in out.splitlines() if line.startswith("JobId="))


def test_array_submits_only_the_shards_not_yet_complete(cluster, traces, tmp_path, capsys):
    out = tmp_path / "pairs"
    config = pairs.Config(seed=3)
    # shard 0 of 2 already ran (e.g. an earlier submission whose other task failed)
    execute_stage("pairs", config.model_copy(update={"shard": "0/2"}), {"traces": traces}, shard_dir(out, 0, 2))
    launch = Launch(slurm=SlurmLaunch(shards=2, poll_s=0.5))
    result = execute_stage("pairs", config, {"traces": traces}, out, launch=launch)
    printed = capsys.readouterr().out
    assert "shards 1 of 2 (1 already complete)" in printed
    whole = execute_stage("pairs", config, {"traces": traces}, tmp_path / "whole")
    assert result.manifest.outputs == whole.manifest.outputs
    assert sha256_file(out / "pairs.jsonl") == sha256_file(tmp_path / "whole" / "pairs.jsonl")


def test_multi_node_training_goes_through_srun_and_accelerate():
    """The job body for 2 nodes x 4 GPUs: one `accelerate launch` per node via srun, machine rank from
    SLURM_NODEID, rendezvous on the allocation's first node, 8 processes in all (not run: one node here)."""
    body = worker_command(Launch(slurm=SlurmLaunch(nodes=2, gpus_per_node=4)), Path("/jobs/job.json"))
    script = "\n".join(body)
    assert 'scontrol show hostnames "$SLURM_JOB_NODELIST"' in script
    assert body[-1].startswith("srun --kill-on-bad-exit=1 bash -c ")
    for part in ("--multi_gpu", "--num_machines 2", "--num_processes 8", "--machine_rank $SLURM_NODEID",
                 "--main_process_ip $head_node", "-m compass.worker /jobs/job.json"):
        assert part in script, part
    assert worker_command(Launch(slurm=SlurmLaunch()), Path("j.json"))[-1].endswith("-m compass.worker j.json")
