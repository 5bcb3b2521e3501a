"""Execute one stage: resolve and hash inputs, skip when a completed manifest matches, run (in-process or
under `accelerate launch`), hash outputs, write the manifest last. A directory without a manifest is an
interrupted run: the stage runs again there and may resume from what it finds."""
from __future__ import annotations

import json
import os
import random
import shlex
import subprocess
import sys
import time
import uuid
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

from compass.config import Launch, StageConfig, config_hash
from compass.errors import CompassError
from compass.hub import resolve_all
from compass.io import HASH_CACHE_NAME, HashCache, hash_tree, write_json_atomic
from compass.ledger import detach_links, record_stage_run
from compass.ledger.tracking import live_stage_run
from compass.ledger.workspace import find_workspace
from compass.manifest import MANIFEST_NAME, InputRecord, Manifest, code_version, library_versions, now_iso, read_manifest, write_manifest
from compass.ledger.redact import redact_value
from compass.stagekit import (DirLock, build_context, check_out_dir_location, claim_out_dir, clear_finished_run, clear_interrupted_run,
                              remove_orphan_temps, resume_hint, tidy_failed_out_dir)
from compass.stages import get_stage, hub_inputs

WORKER_METRICS = ".metrics.json"  # written by rank 0 of a launched stage


@dataclass
class StageResult:
    manifest: Manifest
    out_dir: Path
    cached: bool


def set_seed(seed: int) -> None:
    """One explicit seeding per run: python, numpy and torch (if imported by the stage)."""
    random.seed(seed)
    import numpy as np

    np.random.seed(seed)
    if "torch" in sys.modules:
        import torch

        torch.manual_seed(seed)


def resolve_inputs(kind: str, inputs: dict[str, str | Path]) -> dict[str, Path]:
    ports = get_stage(kind).INPUTS
    unknown = sorted(set(inputs) - set(ports))
    if unknown:
        raise CompassError(f"stage {kind}: unknown input(s) {unknown}; it takes {sorted(ports)}")
    resolved: dict[str, Path] = {}
    for name, port in ports.items():
        if name not in inputs or inputs[name] is None:
            if port.required:
                raise CompassError(f"stage {kind}: missing input '{name}' ({port.help})")
            continue
        path = Path(inputs[name]).resolve()
        if not path.exists() and port.hub_model:
            from compass.models.hub_models import looks_like_repo_id, snapshot_dir

            if looks_like_repo_id(str(inputs[name])):
                path = snapshot_dir(str(inputs[name]))  # a hub model id: its snapshot in the local hub cache
        if not path.exists():
            raise CompassError(f"stage {kind}: input '{name}' does not exist: {path}")
        resolved[name] = path
    return resolved


def hash_cache(rehash: bool = False) -> HashCache:
    """The stat cache of file hashes, beside the ledger (one per workspace, shared by its processes)."""
    return HashCache(find_workspace() / HASH_CACHE_NAME, rehash=rehash)


def cached_manifest(out_dir: Path, cfg_hash: str, input_hashes: dict[str, dict[str, str]],
                    cache: HashCache | None = None, *, stage_version: int, hub_revisions: dict[str, str]) -> Manifest | None:
    manifest = read_manifest(out_dir)
    if manifest is None or manifest.status != "complete":
        return None
    if manifest.config_hash != cfg_hash or manifest.input_key() != input_hashes:
        return None
    # the stage's code changed what it writes, or a hub branch moved: the old outputs are not this run's
    if manifest.stage_version != stage_version or manifest.hub_revisions != hub_revisions:
        return None
    # outputs must still be the bytes the manifest recorded
    if hash_tree(out_dir, exclude=[MANIFEST_NAME], cache=cache) != manifest.outputs:
        return None
    return manifest


def execute_stage(kind: str, config: StageConfig, inputs: dict[str, str | Path], out_dir: str | Path, **options) -> StageResult:
    """Run one stage into `out_dir` (options: see _execute_stage) holding the directory's lock; refuses an
    output directory compass did not make, or one that overlaps an input, before anything is written. A
    failed run leaves no empty files, temp files or (when it made it) empty directory behind."""
    module = get_stage(kind)
    if not isinstance(config, module.Config):
        raise CompassError(f"stage {kind}: config must be {module.Config.__name__}, got {type(config).__name__}")
    out_dir = Path(out_dir).resolve()
    if process_rank() > 0:  # rank 0 of the same launch holds the lock and keeps the books
        return _execute_stage(kind, config, inputs, out_dir, **options)
    check_out_dir_location(out_dir, resolve_inputs(kind, inputs))  # before anything is created
    existed = out_dir.exists()
    with DirLock(out_dir, "output directory") as lock:
        try:
            fresh = claim_out_dir(out_dir) or not existed
        except CompassError:
            lock.discard()  # a directory compass may not use is left exactly as it was
            raise
        try:
            return _execute_stage(kind, config, inputs, out_dir, **options)
        except CompassError as err:
            tidy_failed_out_dir(out_dir, remove_if_empty=fresh)
            hint = resume_hint(out_dir)
            if hint and "rerun" not in str(err):
                raise CompassError(f"{err}; {hint}") from None
            raise
        except BaseException:
            tidy_failed_out_dir(out_dir, remove_if_empty=fresh)
            raise


def _execute_stage(
    kind: str,
    config: StageConfig,
    inputs: dict[str, str | Path],
    out_dir: str | Path,
    *,
    name: str | None = None,
    launch: Launch | None = None,
    recipe: str | None = None,
    force: bool = False,
    rehash: bool = False,
    gather_from: list[Path] | None = None,
    sweep: dict | None = None,
) -> StageResult:
    module = get_stage(kind)
    out_dir = Path(out_dir).resolve()
    paths = resolve_inputs(kind, inputs)
    cache = hash_cache(rehash)  # rehash: read every file again (and refresh the cache)
    input_hashes = {key: hash_tree(path, cache=cache) for key, path in paths.items()}
    cfg_hash = config_hash(config)
    hub_revisions = resolve_all(hub_inputs(module, config))
    # Under `accelerate launch ... compass <verb>` every process runs this function and trains; only rank 0
    # keeps the books (stale manifest, ledger, new manifest). All ranks reach the same cache decision: they
    # hash the same files, and rank 0 only removes a manifest that does not match.
    secondary = process_rank() > 0
    if not force:
        cached = cached_manifest(out_dir, cfg_hash, input_hashes, cache, stage_version=module.VERSION,
                                 hub_revisions=hub_revisions)
        if cached is not None:
            if not secondary:
                # a cached hit makes no new ledger run; this only records it if it never was (idempotent)
                record_stage_run(cached, out_dir)
            return StageResult(cached, out_dir, cached=True)

    out_dir.mkdir(parents=True, exist_ok=True)
    if not secondary:
        previous = read_manifest(out_dir)
        if previous is not None:
            # a finished run of another config or other inputs (or --force): its files must not leak into this
            # run's outputs. A directory without a manifest is an interrupted run and is kept for the stage to
            # resume, unless --force asks for a clean start.
            clear_finished_run(out_dir, previous.outputs)
        elif force:
            clear_interrupted_run(out_dir)
        remove_orphan_temps(out_dir)  # temp files of atomic writes a killed run never renamed
        detach_links(out_dir)  # files the ledger's store shares by hard link get their own copy before rewrites
    started_at, t0 = now_iso(), time.perf_counter()
    # the stage's MLflow run is open while it runs (live metrics; FAILED if it raises); rank 0 only
    with live_stage_run(kind, name or kind, out_dir, recipe) if not secondary else nullcontext():
        if gather_from is not None:  # shard runs of this config joined into its unsharded output
            from compass.launch.gather import gather_shards

            metrics = gather_shards(kind, config, input_hashes, gather_from, out_dir, cache)
        elif launch is not None and launch.slurm is not None:  # a Slurm job (or array of shards), waited for here
            from compass.launch.slurm import run_on_slurm

            metrics = run_on_slurm(kind, config, paths, out_dir, launch, input_hashes, cache,
                                   metrics_file=out_dir / WORKER_METRICS, name=name or kind)
        elif launch is not None and (launch.num_processes > 1 or launch.accelerate_config):
            metrics = _run_launched(kind, config, paths, out_dir, launch, input_hashes)
        else:
            set_seed(config.seed)
            metrics = module.run(config, build_context(kind, config, paths, out_dir, input_hashes=input_hashes,
                                                       stage_version=module.VERSION))
    wall = time.perf_counter() - t0

    manifest = Manifest(
        stage=kind,
        name=name or kind,
        run_id=uuid.uuid4().hex,
        config=redact_value(config.model_dump(mode="json")),  # the hash above is of the real config
        config_hash=cfg_hash,
        stage_version=module.VERSION,
        hub_revisions=hub_revisions,
        seed=config.seed,
        code=code_version(),
        versions=library_versions(),
        inputs={key: InputRecord(path=str(paths[key]), files=input_hashes[key]) for key in paths},
        outputs={} if secondary else hash_tree(out_dir, exclude=[MANIFEST_NAME], cache=cache),
        started_at=started_at,
        wall_time_s=round(wall, 3),
        metrics=redact_value(metrics),
        launch=launch.model_dump() if launch else None,
        sweep=sweep,
        recipe=recipe,
    )
    if secondary:
        return StageResult(manifest, out_dir, cached=False)  # rank 0's manifest is the record of this run
    write_manifest(out_dir, manifest)
    with live_stage_run.recording(out_dir):  # a failed recording ends the stage's MLflow run FAILED, not RUNNING
        record_stage_run(manifest, out_dir)  # the ledger: store, MLflow run, lineage, search index
    return StageResult(manifest, out_dir, cached=False)


def process_rank() -> int:
    """This process's rank when `accelerate launch`/torchrun started several (they set RANK in each one);
    a process started any other way is alone, rank 0."""
    return int(os.environ.get("RANK", "0"))


def launch_command(launch: Launch) -> tuple[list[str], dict[str, str]]:
    """The `accelerate launch` command line (up to the script) and the extra environment for `launch`.

    `accelerate launch --cpu` starts ONE process whatever --num_processes says (its simple launcher), so
    several CPU processes go through the multi-process launcher (`--multi_gpu`, i.e. torchrun) with the GPUs
    hidden; each process then joins a gloo group (accelerate's MULTI_CPU)."""
    if launch.cpu and launch.accelerate_config:
        raise CompassError(f"launch: cpu: true takes no accelerate_config (got {launch.accelerate_config}); "
                           "the shipped configs are for GPUs")
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    env: dict[str, str] = {}
    if launch.accelerate_config:
        config_file = Path(launch.accelerate_config)
        if not config_file.is_file():
            raise CompassError(f"launch: accelerate_config not found: {config_file.resolve()}")
        cmd += ["--config_file", str(config_file)]
    elif launch.num_processes > 1:
        cmd += ["--multi_gpu", "--num_machines", "1"]
    elif launch.cpu:
        cmd += ["--cpu"]
    if launch.cpu:
        env.update(CUDA_VISIBLE_DEVICES="", ACCELERATE_USE_CPU="true")
    cmd += ["--num_processes", str(launch.num_processes)]
    return cmd, env


def _run_launched(kind: str, config: StageConfig, paths: dict[str, Path], out_dir: Path, launch: Launch,
                  input_hashes: dict[str, dict[str, str]]) -> dict:
    """Run the stage body under `accelerate launch`; rank 0 leaves its metrics in out_dir."""
    job = out_dir / ".launch.json"
    write_json_atomic(job, {"kind": kind, "config": config.model_dump(mode="json"),
                            "inputs": {k: str(v) for k, v in paths.items()}, "input_hashes": input_hashes,
                            "out_dir": str(out_dir)})
    cmd, env = launch_command(launch)
    cmd += ["-m", "compass.worker", str(job)]
    metrics_file = out_dir / WORKER_METRICS
    metrics_file.unlink(missing_ok=True)
    proc = subprocess.run(cmd, env={**os.environ, **env})
    if proc.returncode != 0:
        raise CompassError(f"stage {kind}: launched run failed with exit code {proc.returncode}: {shlex.join(cmd)}")
    if not metrics_file.is_file():
        raise CompassError(f"stage {kind}: launched run wrote no metrics ({metrics_file})")
    metrics = json.loads(metrics_file.read_text())
    metrics_file.unlink()
    job.unlink()
    return metrics
