"""Stages on a Slurm cluster: `launch: {slurm: {...}}` in a recipe submits that stage with sbatch, and
`compass run` waits for it, streams its log, and then keeps the books as for a local run (the runner hashes
the outputs, writes the manifest, records the ledger run). The cache check happens before anything is
submitted, so a resubmitted recipe skips the stages that finished.

One job: `python -m compass.worker JOB` in the job (the same entry point `accelerate launch` uses). With
several nodes, or several GPUs or processes, srun starts `accelerate launch` once per node (machine rank =
SLURM_NODEID, rendezvous on the first node of the allocation), and rank 0 writes the metrics.

A job array (`shards: N`, data stages): task I runs the stage with `shard: I/N` into
.OUT.shard-I-of-N beside OUT as an ordinary cached stage run (compass.launch.task); shards already complete for
this config and these inputs are not submitted again; when all are done they are gathered into OUT
(compass.launch.gather), byte-identical to an unsharded run.

Jobs are followed with `scontrol show job` (no accounting database needed; `sacct` when the controller has
already forgotten the job). The job inherits the submitting environment (sbatch's default --export=ALL) and
runs in the current directory with this Python. Ctrl-C cancels the job (scancel).
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from compass.config import Launch, SlurmLaunch, StageConfig, config_hash
from compass.data.shards import ShardedStageConfig
from compass.errors import CompassError
from compass.io import HashCache, write_json_atomic, write_text_atomic
from compass.manifest import read_manifest

JOB_DIR = ".slurm"  # inside the stage's output dir: hidden, so never part of its hashed outputs
TERMINAL_OK = {"COMPLETED"}
TERMINAL_BAD = {"FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE"}


def require_slurm() -> None:
    missing = [name for name in ("sbatch", "scontrol", "scancel", "srun") if shutil.which(name) is None]
    if missing:
        raise CompassError(f"launch: slurm: {', '.join(missing)} not found on PATH; run compass on a Slurm login node "
                           "(or drop `launch: slurm` to run the stage here)")


def sbatch_options(slurm: SlurmLaunch, job_name: str, log: str) -> list[str]:
    """The #SBATCH lines of a job, from the recipe's launch block."""
    options = [f"--job-name={job_name}", f"--output={log}", f"--nodes={slurm.nodes}", "--ntasks-per-node=1",
               f"--chdir={os.getcwd()}"]
    for flag, value in (("partition", slurm.partition), ("time", slurm.time), ("mem", slurm.mem),
                        ("account", slurm.account), ("qos", slurm.qos), ("cpus-per-task", slurm.cpus_per_task)):
        if value is not None:
            options.append(f"--{flag}={value}")
    if slurm.gpus_per_node:
        options.append(f"--gpus-per-node={slurm.gpus_per_node}")
    return options + list(slurm.sbatch_args)


def job_script(options: list[str], setup: list[str], body: list[str]) -> str:
    lines = ["#!/bin/bash"] + [f"#SBATCH {option}" for option in options] + ["set -euo pipefail"] + list(setup) + body
    return "\n".join(lines) + "\n"


def worker_command(launch: Launch, job_file: Path) -> list[str]:
    """The job's body: compass.worker directly, or `accelerate launch` once per node through srun."""
    slurm = launch.slurm
    per_node = max(slurm.gpus_per_node, launch.num_processes if slurm.nodes == 1 else 1, 1)
    total = slurm.nodes * per_node
    worker = [sys.executable, "-m", "compass.worker", str(job_file)]
    if total == 1 and not launch.accelerate_config:
        return ["srun " + shlex.join(worker)]
    accelerate = [sys.executable, "-m", "accelerate.commands.launch"]
    if launch.accelerate_config:
        accelerate += ["--config_file", str(Path(launch.accelerate_config).resolve())]
    elif total > 1:
        accelerate += ["--multi_gpu"]  # torchrun's launcher; with launch.cpu the GPUs are hidden (gloo)
    elif launch.cpu:
        accelerate += ["--cpu"]
    accelerate += ["--num_machines", str(slurm.nodes), "--num_processes", str(total),
                   "--main_process_port", str(slurm.main_process_port)]
    # expanded on each node by its own bash: its node id is its machine rank; the first node hosts the rendezvous
    per_node_command = (shlex.join(accelerate) + " --machine_rank $SLURM_NODEID --main_process_ip $head_node "
                        + shlex.join(worker[1:]))
    env = "export CUDA_VISIBLE_DEVICES= ACCELERATE_USE_CPU=true; " if launch.cpu else ""
    return [
        'head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        "export head_node",
        "srun --kill-on-bad-exit=1 bash -c " + shlex.quote(env + "exec " + per_node_command),
    ]


def submit(script: Path) -> str:
    proc = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise CompassError(f"launch: slurm: sbatch refused {script}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout.strip().split(";")[0]


def job_states(job_id: str) -> dict[str, tuple[str, str]] | None:
    """{job or array task id: (state, exit code)} of a submitted job; None while it has no task record yet."""
    proc = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True)
    if proc.returncode == 0 and proc.stdout.strip():
        states = {}
        for line in proc.stdout.strip().splitlines():
            fields = dict(item.split("=", 1) for item in line.split() if "=" in item)
            task = fields["JobId"] if fields.get("ArrayTaskId") in (None, "N/A") else f"{fields['ArrayJobId']}_{fields['ArrayTaskId']}"
            states[task] = (fields["JobState"], fields["ExitCode"])
        return states
    if shutil.which("sacct") is None:
        raise CompassError(f"launch: slurm: scontrol no longer knows job {job_id} and there is no sacct: {proc.stderr.strip()}")
    acct = subprocess.run(["sacct", "-j", job_id, "-X", "-n", "-P", "-o", "JobID,State,ExitCode"], capture_output=True, text=True)
    if acct.returncode != 0:
        raise CompassError(f"launch: slurm: cannot follow job {job_id}: {proc.stderr.strip()}; sacct: {acct.stderr.strip()}")
    rows = [line.split("|") for line in acct.stdout.strip().splitlines() if line.strip()]
    return {row[0]: (row[1].split()[0], row[2]) for row in rows} or None


class LogTail:
    """Prints what each log file gains, line by line, with a prefix (one per array task)."""

    def __init__(self, log: Callable[[str], None] = print):
        self.offsets: dict[Path, int] = {}
        self.partial: dict[Path, str] = {}
        self.log = log

    def poll(self, files: dict[Path, str], final: bool = False) -> None:
        for path, prefix in files.items():
            if not path.is_file():
                continue
            with open(path, encoding="utf-8", errors="replace") as fh:
                fh.seek(self.offsets.get(path, 0))
                text = self.partial.pop(path, "") + fh.read()
                self.offsets[path] = fh.tell()
            lines = text.split("\n")
            if not final:
                self.partial[path] = lines.pop()
            for line in lines:
                if line or not final:
                    self.log(f"{prefix}{line}")


def wait_for(job_id: str, logs: dict[Path, str], poll_s: float) -> dict[str, tuple[str, str]]:
    """Block until every task of the job ends, streaming the logs; returns the final states."""
    tail = LogTail()
    try:
        while True:
            states = job_states(job_id)
            tail.poll(logs)
            if states and all(state in TERMINAL_OK | TERMINAL_BAD for state, _ in states.values()):
                tail.poll(logs, final=True)
                return states
            time.sleep(poll_s)
    except KeyboardInterrupt:
        subprocess.run(["scancel", job_id], capture_output=True)
        raise


def check_states(job_id: str, states: dict[str, tuple[str, str]], logs: dict[Path, str]) -> None:
    bad = {task: state for task, state in states.items() if state[0] not in TERMINAL_OK}
    if bad:
        first = ", ".join(f"{task} {state} (exit {code})" for task, (state, code) in sorted(bad.items())[:5])
        raise CompassError(f"launch: slurm: job {job_id} did not complete: {first}; logs: "
                           f"{', '.join(str(p) for p in list(logs)[:3])}")


def run_on_slurm(kind: str, config: StageConfig, paths: dict[str, Path], out_dir: Path, launch: Launch,
                 input_hashes: dict[str, dict[str, str]], cache: HashCache | None, metrics_file: Path,
                 name: str) -> dict:
    """Run the stage body as a Slurm job (or a job array of shards, then gathered); returns its metrics."""
    require_slurm()
    slurm = launch.slurm
    job_dir = out_dir / JOB_DIR
    job_dir.mkdir(parents=True, exist_ok=True)
    if slurm.shards > 1:
        return _run_array(kind, config, paths, out_dir, slurm, input_hashes, cache, name)
    if isinstance(config, ShardedStageConfig) and config.shard is not None:
        raise CompassError(f"launch: slurm: stage {name} sets shard {config.shard} itself; use launch.slurm.shards")
    job_file = job_dir / "job.json"
    write_json_atomic(job_file, {"kind": kind, "config": config.model_dump(mode="json"),
                                 "inputs": {k: str(v) for k, v in paths.items()}, "input_hashes": input_hashes,
                                 "out_dir": str(out_dir)})
    log = job_dir / "job-%j.log"
    script = job_dir / "job.sbatch"
    write_text_atomic(script, job_script(sbatch_options(slurm, f"compass-{name}", str(log)), slurm.setup,
                                         worker_command(launch, job_file)))
    metrics_file.unlink(missing_ok=True)
    job_id = submit(script)
    print(f"launch: slurm: {name} submitted as job {job_id} ({script})", flush=True)
    logs = {job_dir / f"job-{job_id}.log": f"[{name} {job_id}] "}
    check_states(job_id, wait_for(job_id, logs, slurm.poll_s), logs)
    if not metrics_file.is_file():
        raise CompassError(f"launch: slurm: job {job_id} of stage {name} completed but wrote no metrics ({metrics_file})")
    metrics = json.loads(metrics_file.read_text())
    metrics_file.unlink()
    return metrics


def shard_dir(out_dir: Path, index: int, count: int) -> Path:
    """Where shard I of OUT runs until it is gathered: the hidden sibling .OUT.shard-I-of-N. Beside the output,
    not in it (each shard is an output directory of its own, with its own lock and manifest), and at its
    depth (stages such as doc-traces write paths relative to their output directory)."""
    return out_dir.parent / f".{out_dir.name}.shard-{index}-of-{count}"


def shard_done(folder: Path, config: StageConfig, input_hashes: dict[str, dict[str, str]]) -> bool:
    """A shard run that needs no resubmission: complete, this shard's config, these inputs (the task's own
    cache check also verifies the output bytes)."""
    manifest = read_manifest(folder)
    return (manifest is not None and manifest.status == "complete" and manifest.config_hash == config_hash(config)
            and manifest.input_key() == input_hashes)


def _run_array(kind: str, config: StageConfig, paths: dict[str, Path], out_dir: Path, slurm: SlurmLaunch,
               input_hashes: dict[str, dict[str, str]], cache: HashCache | None, name: str) -> dict:
    from compass.launch.gather import gather_shards

    if not isinstance(config, ShardedStageConfig):
        raise CompassError(f"launch: slurm: shards: {slurm.shards} needs a stage that takes --shard; {kind} does not")
    if slurm.nodes > 1:
        raise CompassError(f"launch: slurm: a sharded stage runs each shard on one node; got nodes: {slurm.nodes}")
    count = slurm.shards
    job_dir = out_dir / JOB_DIR
    dirs = [shard_dir(out_dir, index, count) for index in range(count)]
    pending = [index for index, folder in enumerate(dirs)
               if not shard_done(folder, config.model_copy(update={"shard": f"{index}/{count}"}), input_hashes)]
    if pending:
        job_file = job_dir / "array.json"
        write_json_atomic(job_file, {"kind": kind, "name": name, "config": config.model_dump(mode="json"),
                                     "inputs": {k: str(v) for k, v in paths.items()}, "count": count,
                                     "shard_dirs": [str(d) for d in dirs]})
        log = job_dir / "shard-%a-%A.log"
        options = sbatch_options(slurm, f"compass-{name}", str(log))
        spec = ",".join(str(i) for i in pending) + (f"%{slurm.max_parallel}" if slurm.max_parallel else "")
        options.append(f"--array={spec}")
        script = job_dir / "array.sbatch"
        body = ["srun " + shlex.join([sys.executable, "-m", "compass.launch.task", str(job_file)]) + ' "$SLURM_ARRAY_TASK_ID"']
        write_text_atomic(script, job_script(options, slurm.setup, body))
        job_id = submit(script)
        done = count - len(pending)
        print(f"launch: slurm: {name} submitted as array job {job_id}: shards {spec} of {count}"
              + (f" ({done} already complete)" if done else ""), flush=True)
        logs = {job_dir / f"shard-{i}-{job_id}.log": f"[{name} shard {i}/{count}] " for i in pending}
        check_states(job_id, wait_for(job_id, logs, slurm.poll_s), logs)
    else:
        print(f"launch: slurm: {name}: all {count} shards already complete; gathering", flush=True)
    metrics = gather_shards(kind, config, input_hashes, dirs, out_dir, cache)
    for folder in dirs:  # joined into out_dir (their files hard-linked or copied there)
        shutil.rmtree(folder)
    return metrics
