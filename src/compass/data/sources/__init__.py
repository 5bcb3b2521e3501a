"""Dataset sources: one module per dataset, each turning rows of the hub dataset's own schema into Problem records.

    load_source("gsm8k", "openai/gsm8k", split="train", limit=100)          # hub id (on a machine with the hub)
    load_source("gsm8k", "data/gsm8k/test.jsonl", split="test")            # a local file in the hub schema
    load_source("reasoning_gym", "basic_arithmetic", limit=50, seed=42)    # built in, offline, seeded

For reasoning_gym the second argument is the generator name and `limit` the number of problems (required).
For the datasets, `seed` (when given) draws a seeded random sample of `limit` rows instead of the first ones.
"""
from __future__ import annotations

from collections import Counter

from compass.errors import CompassError
from compass.records import Problem
from compass.data.sources import (
    aqua_rat,
    gsm8k,
    hendrycks_math,
    mathinstruct,
    mgsm_ja,
    numinamath_cot,
    openmathreasoning,
    openr1_math,
    orca_math,
    reasoning_gym,
    svamp,
)
from compass.data.sources.base import SkipRow, SourceSpec, convert_rows, read_rows

SOURCES: dict[str, SourceSpec] = {
    spec.name: spec
    for spec in (
        gsm8k.SPEC,
        hendrycks_math.SPEC,
        svamp.SPEC,
        aqua_rat.SPEC,
        mathinstruct.SPEC,
        mgsm_ja.SPEC,
        openr1_math.SPEC,
        orca_math.SPEC,
        numinamath_cot.SPEC,
        openmathreasoning.SPEC,
    )
}
SOURCE_NAMES: tuple[str, ...] = (*SOURCES, reasoning_gym.NAME)


def load_source(
    name: str,
    path_or_hub_id: str | None = None,
    split: str | None = None,
    limit: int | None = None,
    seed: int | None = None,
    *,
    hub_config: str | None = None,
    revision: str | None = None,
    skipped: Counter | None = None,
) -> list[Problem]:
    """Problems from one source. `path_or_hub_id` defaults to the source's hub id; `split` to its usual split.

    Rows without a usable reference answer are skipped and counted by reason in `skipped` (when given).
    """
    if name == reasoning_gym.NAME:
        if not path_or_hub_id or limit is None:
            raise CompassError("reasoning_gym needs a generator name (e.g. 'basic_arithmetic') and a limit (the number of problems)")
        return reasoning_gym.load(path_or_hub_id, limit, 0 if seed is None else seed)
    if name not in SOURCES:
        raise CompassError(f"unknown source {name!r}; known sources: {', '.join(SOURCE_NAMES)}")
    spec = SOURCES[name]
    split = split or spec.default_split
    location = path_or_hub_id or spec.hub_id
    config = hub_config if hub_config is not None else (spec.hub_config if location == spec.hub_id else None)
    rows, _files = read_rows(location, split, config, revision)
    return convert_rows(spec, rows, split, limit, seed, f"{name} {location}", skipped)


__all__ = ["SOURCES", "SOURCE_NAMES", "SkipRow", "SourceSpec", "load_source"]
