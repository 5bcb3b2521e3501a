"""Collect math problems from dataset sources (hub ids or local files) and reasoning-gym into one Problem file.

Datasets come in their hub schema, from a hub id (`datasets.load_dataset`, on a machine with the hub) or a
local .jsonl/.parquet file or hub-like directory; reasoning-gym generators run offline from a seed. Rows
without a usable reference answer are skipped and counted by reason. Exact duplicate questions (after case
and whitespace folding) are dropped, the first kept. Same config and files, same bytes.
"""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from compass.config import StageConfig
from compass.errors import CompassError
from compass.hub import HubRef
from compass.io import sha256_file, write_jsonl
from compass.records import Problem
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


class Config(StageConfig):
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


def run(config: Config, inputs: dict[str, Path], out_dir: Path) -> dict:
    from compass.data.sources import SOURCES, load_source
    from compass.data.sources import reasoning_gym as gym

    base = inputs.get("data")
    problems: list[Problem] = []
    per_source: dict[str, int] = {}
    skipped: dict[str, dict[str, int]] = {}
    files: dict[str, str] = {}

    for entry in config.datasets:
        spec = SOURCES[entry.name]
        split = entry.split or spec.default_split
        key = f"{entry.name}/{split}"
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
        per_source[key] = per_source.get(key, 0) + len(loaded)
        if counter:
            skipped[key] = dict(sorted(counter.items()))
        problems.extend(loaded)

    for gym_entry in config.reasoning_gym:
        seed = config.seed if gym_entry.seed is None else gym_entry.seed
        loaded = gym.load(gym_entry.generator, gym_entry.size, seed, gym_entry.config)
        key = f"{gym.NAME}/{gym_entry.generator}/{seed}"
        per_source[key] = per_source.get(key, 0) + len(loaded)
        problems.extend(loaded)

    seen_ids: set[str] = set()
    seen_questions: set[str] = set()
    kept: list[Problem] = []
    duplicates = 0
    for problem in problems:
        if problem.id in seen_ids:
            raise CompassError(f"sources: problem id {problem.id!r} appears twice: the same split or generator/seed is listed twice")
        seen_ids.add(problem.id)
        qkey = question_key(problem.question)
        if config.drop_duplicate_questions and qkey in seen_questions:
            duplicates += 1
            continue
        seen_questions.add(qkey)
        kept.append(problem)
    if not kept:
        raise CompassError("sources: no problems were loaded (every row was skipped); see the skip reasons above")

    write_jsonl(out_dir / OUTPUTS["problems"], kept)
    return {
        "problems": len(kept),
        "per_source": per_source,
        "skipped": skipped,
        "duplicates_dropped": duplicates,
        "langs": dict(sorted(Counter(p.lang for p in kept).items())),
        "files": files,
    }
