"""Join the N shard runs of a data stage (`--shard I/N`, each with its own complete manifest) into the output
of the unsharded run: same config (without `shard`), same inputs, same bytes (the stage's own `gather`
concatenates in shard order). The joined run's cache key is the unsharded run's, so a later unsharded
check of the same config and inputs finds it.

    compass gather --out work/pages work/pages-shards/0-of-4 work/pages-shards/1-of-4 ...
"""
from __future__ import annotations

from pathlib import Path

from compass.config import StageConfig, config_hash
from compass.data.shards import ShardRun, parse_shard
from compass.errors import CompassError
from compass.io import HashCache, hash_tree
from compass.manifest import MANIFEST_NAME, Manifest, read_manifest
from compass.stages import get_stage


def unsharded(config: StageConfig) -> StageConfig:
    return config.model_copy(update={"shard": None})


def shard_manifests(shard_dirs: list[Path]) -> list[tuple[Path, Manifest]]:
    """(dir, manifest) of each shard run, sorted by shard index; every one complete, of one stage and one N,
    each index exactly once."""
    found = []
    for folder in shard_dirs:
        folder = Path(folder).resolve()
        manifest = read_manifest(folder)
        if manifest is None or manifest.status != "complete":
            raise CompassError(f"gather: {folder} holds no completed shard run (no manifest.json)")
        if "shard" not in manifest.config or manifest.config["shard"] is None:  # not a data stage, or unsharded
            raise CompassError(f"gather: {folder} is a run of {manifest.stage} without --shard")
        found.append((parse_shard(manifest.config["shard"]), folder, manifest))
    if not found:
        raise CompassError("gather: no shard directories given")
    kinds = {m.stage for _, _, m in found}
    counts = {s.count for s, _, _ in found}
    if len(kinds) > 1 or len(counts) > 1:
        raise CompassError(f"gather: shards of different stages or splits: stages {sorted(kinds)}, N {sorted(counts)}")
    count = counts.pop()
    indexes = sorted(s.index for s, _, _ in found)
    if indexes != list(range(count)):
        missing = sorted(set(range(count)) - set(indexes))
        twice = sorted({i for i in indexes if indexes.count(i) > 1})
        raise CompassError(f"gather: need each of the {count} shards exactly once; missing {missing}, given twice {twice}")
    return [(folder, manifest) for _, folder, manifest in sorted(found, key=lambda item: item[0].index)]


def gather_request(shard_dirs: list[Path]) -> tuple[str, StageConfig, dict[str, Path]]:
    """(stage kind, unsharded config, inputs) of the run the shards add up to, from their manifests."""
    runs = shard_manifests(shard_dirs)
    first = runs[0][1]
    module = get_stage(first.stage)
    config = unsharded(module.Config.model_validate(first.config))
    return first.stage, config, {name: Path(record.path) for name, record in first.inputs.items()}


def gather_shards(kind: str, config: StageConfig, input_hashes: dict[str, dict[str, str]], shard_dirs: list[Path],
                  out_dir: Path, cache: HashCache | None = None) -> dict:
    """Check that the shards are the parts of this run (config but for `shard`, inputs, outputs unchanged since
    their manifests) and write the joined output into out_dir; returns the stage's metrics for the whole."""
    module = get_stage(kind)
    want = config_hash(unsharded(config))
    shards = []
    for folder, manifest in shard_manifests(shard_dirs):
        if manifest.stage != kind:
            raise CompassError(f"gather: {folder} is a {manifest.stage} run, not {kind}")
        theirs = config_hash(unsharded(module.Config.model_validate(manifest.config)))
        if theirs != want:
            raise CompassError(f"gather: {folder} was run with another config than this gather's "
                               f"(shard {manifest.config['shard']}); rerun that shard")
        if manifest.input_key() != input_hashes:
            raise CompassError(f"gather: {folder} read other input files than this gather's inputs; rerun that shard")
        if hash_tree(folder, exclude=[MANIFEST_NAME], cache=cache) != manifest.outputs:
            raise CompassError(f"gather: the files in {folder} changed since its run; rerun that shard")
        shards.append(ShardRun(out_dir=folder, metrics=manifest.metrics))
    return module.gather(config, shards, out_dir)
