"""Collect math problems from dataset sources (hub ids or local files) and reasoning-gym into one Problem file.

Datasets come in their hub schema, from a hub id (`datasets.load_dataset`, on a machine with the hub) or a
local .jsonl/.parquet file or hub-like directory; reasoning-gym generators run offline from a seed. Rows
without a usable reference answer are skipped and counted by reason. Exact duplicate questions (after case
and whitespace folding) are dropped, the first kept. Same config and files, same bytes.
`workers` processes load the entries (dataset splits, then generators) side by side; a shard's units are
the entries in that order, and the gather drops the questions a later shard repeats from an earlier one.
"""
from __future__ import annotations

import re
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from compass.data.shards import DataStageConfig, ShardRun, in_shard, ordered_map, sum_metrics
from compass.errors import CompassError
from compass.hub import HubRef
from compass.io import atomic_open, dumps_record, iter_jsonl_lines, sha256_file
from compass.stagekit import StageContext
from compass.stages import Port

VERSION = 1  # code version of what this stage writes: bump when the same config and inputs would give other bytes
EXAMPLE = (
    "compass sources --out work/sources --seed 42 "
    "--reasoning-gym '[{generator: basic_arithmetic, size: 50}, {generator: gsm_symbolic, size: 30}]' "
    "--datasets '[{name: gsm8k, hub_id: openai/gsm8k, split: train, limit: 1000}]'"
)

DatasetName = Literal[
    "gsm8k", "math", "svamp", "aqua_rat", "mathinstruct", "mgsm_ja", "openr1_math", "orca_math", "numinamath_cot", "openmathreasoning"
]


class DatasetEntry(BaseModel):
    """One dataset split: from a local file/directory (`path`) or a hub id (default: the source's own hub id)."""

    model_config = ConfigDict(extra="forbid")

    name: DatasetName = Field(description="source name, e.g. gsm8k, mgsm_ja")
    path: str | None = Field(None, description="local .jsonl/.parquet file or hub-like directory; relative to the `data` input if given")
    hub_id: str | None = Field(None, description="hub dataset id (default: the source's usual one, e.g. openai/gsm8k)")
    hub_config: str | None = Field(None, description="hub config name (default: the source's usual one, e.g. 'main' for gsm8k)")
    split: str | None = Field(None, description="split name (default: the source's usual one, e.g. train)")
    revision: str | None = Field(None, description="hub branch, tag or commit (default: main); the commit it resolves to "
                                 "is part of the cache key and recorded in the manifest")
    limit: int | None = Field(None, ge=0, description="at most this many problems (default: all)")
    sample: bool = Field(False, description="take a random sample of `limit` rows drawn with the stage seed, not the first rows")

    @model_validator(mode="after")
    def _one_location(self):
        if self.path is not None and self.hub_id is not None:
            raise ValueError(f"give either path or hub_id, not both (path={self.path!r}, hub_id={self.hub_id!r})")
        if self.sample and self.limit is None:
            raise ValueError("sample: true needs a limit (the sample size)")
        return self


class GymEntry(BaseModel):
    """One reasoning-gym generator: `size` problems drawn from `seed`."""

    model_config = ConfigDict(extra="forbid")

    generator: str = Field(description="reasoning-gym generator, e.g. basic_arithmetic, gsm_symbolic, chain_sum")
    size: int = Field(ge=1, description="number of problems")
    seed: int | None = Field(None, description="generator seed (default: the stage seed); use a different one for a held-out set")
    config: dict[str, Any] = Field(default_factory=dict, description="generator options, e.g. {min_terms: 2, max_terms: 3}")


class Config(DataStageConfig):
    datasets: list[DatasetEntry] = Field(default_factory=list, description="dataset splits to read")
    reasoning_gym: list[GymEntry] = Field(default_factory=list, description="reasoning-gym generators to run")
    drop_duplicate_questions: bool = Field(True, description="drop a problem whose question repeats an earlier one (case/space folded)")

    @model_validator(mode="after")
    def _something_to_load(self):
        if not self.datasets and not self.reasoning_gym:
            raise ValueError("give at least one entry in datasets or reasoning_gym")
        return self


INPUTS = {"data": Port("directory that relative dataset `path` entries are read from (hashed with the run)", required=False)}
OUTPUTS = {"problems": "problems.jsonl"}


def question_key(question: str) -> str:
    return re.sub(r"\s+", " ", question.casefold()).strip()


def _local_files(location: Path, split: str) -> list[Path]:
    from compass.data.sources.base import local_split_files

    return [location] if location.is_file() else local_split_files(location, split)


def hub_inputs(config: Config) -> list[HubRef]:
    """The hub datasets this config reads (entries without a local `path`), for the cache key."""
    from compass.data.sources import SOURCES

    return [HubRef("dataset", entry.hub_id or SOURCES[entry.name].hub_id, entry.revision)
            for entry in config.datasets if entry.path is None]


def load_entry(item: tuple[str, DatasetEntry | GymEntry], config: Config, base: Path | None) -> dict:
    """One dataset split or generator (in a worker process or this one): its problems, per-source key,
    skip counts and the files it read."""
    from compass.data.sources import SOURCES, load_source
    from compass.data.sources import reasoning_gym as gym

    kind, entry = item
    files: dict[str, str] = {}
    skipped: dict[str, int] = {}
    if kind == "gym":
        seed = config.seed if entry.seed is None else entry.seed
        loaded = gym.load(entry.generator, entry.size, seed, entry.config)
        return {"key": f"{gym.NAME}/{entry.generator}/{seed}", "problems": loaded, "skipped": skipped, "files": files}
    spec = SOURCES[entry.name]
    split = entry.split or spec.default_split
    if entry.path is not None:
        location = Path(entry.path)
        if not location.is_absolute() and base is not None:
            location = base / location
        if not location.exists():
            raise CompassError(f"sources: dataset {entry.name}: no such file or directory: {location}")
        for file in _local_files(location, split):
            files[file.as_posix()] = sha256_file(file)
        where = str(location)
    else:
        where = entry.hub_id or spec.hub_id
    counter: Counter = Counter()
    loaded = load_source(
        entry.name, where, split, entry.limit, config.seed if entry.sample else None,
        hub_config=entry.hub_config, revision=entry.revision, skipped=counter,
    )
    return {"key": f"{entry.name}/{split}", "problems": loaded, "skipped": dict(sorted(counter.items())), "files": files}


class Deduper:
    """The id check and the first-kept question rule, over problems in output order."""

    def __init__(self, drop_duplicates: bool):
        self.drop_duplicates = drop_duplicates
        self.ids: set[str] = set()
        self.questions: set[str] = set()
        self.duplicates = 0

    def keep(self, problem_id: str, question: str) -> bool:
        if problem_id in self.ids:
            raise CompassError(f"sources: problem id {problem_id!r} appears twice: the same split or generator/seed is listed twice")
        self.ids.add(problem_id)
        qkey = question_key(question)
        if self.drop_duplicates and qkey in self.questions:
            self.duplicates += 1
            return False
        self.questions.add(qkey)
        return True


def run(config: Config, ctx: StageContext) -> dict:
    inputs, out_dir = ctx.inputs, ctx.out_dir
    base = inputs.get("data")
    entries = [("dataset", e) for e in config.datasets] + [("gym", e) for e in config.reasoning_gym]
    shard = config.shard_spec()
    mine = list(in_shard(entries, len(entries), shard))
    workers = min(config.worker_count(), max(1, len(mine)))
    per_source: dict[str, int] = {}
    skipped: dict[str, dict[str, int]] = {}
    files: dict[str, str] = {}
    dedupe = Deduper(config.drop_duplicate_questions)
    langs: Counter[str] = Counter()
    kept = 0
    with atomic_open(out_dir / OUTPUTS["problems"]) as out:
        for loaded in ordered_map(partial(load_entry, config=config, base=base), mine, workers):
            key = loaded["key"]
            per_source[key] = per_source.get(key, 0) + len(loaded["problems"])
            if loaded["skipped"]:
                skipped[key] = loaded["skipped"]
            files.update(loaded["files"])
            for problem in loaded["problems"]:
                if dedupe.keep(problem.id, problem.question):
                    out.write(dumps_record(problem) + "\n")
                    langs[problem.lang] += 1
                    kept += 1
        if kept == 0 and shard is None:  # a shard may hold no entry; the whole is checked at gather
            raise CompassError("sources: no problems were loaded (every row was skipped); see the skip reasons above")
    return {
        "problems": kept,
        "per_source": per_source,
        "skipped": skipped,
        "duplicates_dropped": dedupe.duplicates,
        "langs": dict(sorted(langs.items())),
        "files": files,
    }


def gather(config: Config, shards: list[ShardRun], out_dir: Path) -> dict:
    """The shards' problems in shard order, less the questions a later shard repeats from an earlier one (each
    shard dropped its own repeats): the unsharded file."""
    import json

    dedupe = Deduper(config.drop_duplicate_questions)
    langs: Counter[str] = Counter()
    kept = 0
    with atomic_open(out_dir / OUTPUTS["problems"]) as out:
        for shard in shards:
            for _, _, line in iter_jsonl_lines(shard.out_dir / OUTPUTS["problems"]):
                row = json.loads(line)
                if dedupe.keep(row["id"], row["question"]):
                    out.write(line)
                    langs[row["lang"]] += 1
                    kept += 1
        if kept == 0:
            raise CompassError("sources: no problems were loaded (every row was skipped); see the skip reasons above")
    counts = sum_metrics([s.metrics for s in shards], ["per_source", "skipped", "duplicates_dropped"])
    files: dict[str, str] = {}
    for shard in shards:
        files.update(shard.metrics["files"])
    return {
        "problems": kept,
        "per_source": counts["per_source"],
        "skipped": counts["skipped"],
        "duplicates_dropped": counts["duplicates_dropped"] + dedupe.duplicates,
        "langs": dict(sorted(langs.items())),
        "files": files,
    }
