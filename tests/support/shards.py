"""Shard runs for the sharding tests: each shard as its own runner call, then `compass gather` (shard dirs given
in reverse order: gather takes them in any order)."""
from __future__ import annotations

from pathlib import Path

from compass.cli import main
from compass.runner import execute_stage


def gather_shards(kind: str, config, inputs: dict, root: Path, count: int) -> tuple[int, Path]:
    """(gather's exit code, the joined directory)."""
    shard_dirs = []
    for index in range(count):
        shard_dirs.append(root / f"shard-{index}")
        execute_stage(kind, config.model_copy(update={"shard": f"{index}/{count}"}), inputs, shard_dirs[-1])
    return main(["gather", "--out", str(root / "joined"), *map(str, reversed(shard_dirs))]), root / "joined"


def run_sharded(kind: str, config, inputs: dict, root: Path, count: int) -> Path:
    code, joined = gather_shards(kind, config, inputs, root, count)
    assert code == 0
    return joined
