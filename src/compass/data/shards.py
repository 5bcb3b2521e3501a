"""What the data stages share to scale out: a `workers` process pool whose output order is the input order, and
`shard: I/N`, a deterministic split of a stage's input into N contiguous parts, joined back by a gather step.

Workers: `ordered_map` runs a function over the items in a pool of processes (spawned, not forked: the caller
may hold threads, e.g. MLflow's or tqdm's, and pdfium is not fork- or thread-safe) and yields the results in
input order, with at most a few batches per worker in flight, so memory stays flat in the input size.
Results are the same objects the function would return in-process; with one worker, or input that fits
in one task, nothing is spawned.
The number of workers never changes a stage's output bytes, so it is left out of the cache key.

Shards: the units of a stage (PDF files, records, questions, source entries; each stage says which) are
numbered in input order and shard I of N takes units [I*n//N, (I+1)*n//N). Each shard is an ordinary stage
run with its own manifest, so a rerun skips the shards that completed (resumable). The gather of a stage
concatenates its shards' record files in shard order, which is the unsharded order, so the joined output
is byte-identical to an unsharded run; checks over the whole input (reject and drop rates) run at gather.
"""
from __future__ import annotations

import errno
import itertools
import multiprocessing
import os
import shutil
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from compass.config import StageConfig
from compass.errors import CompassError
from compass.io import atomic_open

IN_FLIGHT_PER_WORKER = 4  # batches queued per worker: enough to keep each busy, few enough to bound memory


class Shard(BaseModel):
    """Part `index` (0-based) of `count` contiguous parts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    index: int = Field(ge=0)
    count: int = Field(ge=1)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def bounds(self, n_units: int) -> tuple[int, int]:
        """[start, stop) of this shard's units among `n_units`."""
        return self.index * n_units // self.count, (self.index + 1) * n_units // self.count

    def contains(self, position: int, n_units: int) -> bool:
        start, stop = self.bounds(n_units)
        return start <= position < stop


def parse_shard(text: str) -> Shard:
    parts = str(text).split("/")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"a shard is written I/N (e.g. 0/4), got {text!r}")
    index, count = int(parts[0]), int(parts[1])
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard {text!r}: need N >= 1 and 0 <= I < N")
    return Shard(index=index, count=count)


class ShardedStageConfig(StageConfig):
    """Config of a stage that takes `shard: I/N` (every data stage, and evidence, distill, doc-questions, whose
    units are requests to a server): a stage module with such a config also has `gather(config, shards, out_dir)`."""

    shard: str | None = Field(None, description="I/N: process only part I (0-based) of N contiguous parts of the "
                              "input; `compass gather` joins the N shard runs into the unsharded output")

    @field_validator("shard")
    @classmethod
    def _shard(cls, value: str | None) -> str | None:
        return None if value is None else str(parse_shard(value))

    def shard_spec(self) -> Shard | None:
        return None if self.shard is None else parse_shard(self.shard)


class DataStageConfig(ShardedStageConfig):
    """Config of a data stage: its own fields plus `workers` and `shard`."""

    NOT_IN_CACHE_KEY: ClassVar[frozenset[str]] = frozenset({"workers"})

    workers: int | None = Field(None, ge=1, description="worker processes (default: the cores this process may "
                                "use); the output does not depend on it")

    def worker_count(self) -> int:
        return available_cores() if self.workers is None else self.workers


def available_cores() -> int:
    """The CPUs this process may run on (its affinity mask: what Slurm, taskset or a container grant)."""
    return len(os.sched_getaffinity(0))


def in_shard(items: Iterable, n_units: int, shard: Shard | None) -> Iterator:
    """The items of `shard` (all of them when None), from an iterable of `n_units` items."""
    if shard is None:
        yield from items
        return
    start, stop = shard.bounds(n_units)
    yield from itertools.islice(items, start, stop)


# --- workers ---------------------------------------------------------------------------------------------


def _apply_batch(fn: Callable, batch: list) -> list:
    return [fn(item) for item in batch]


def ordered_map(fn: Callable, items: Iterable, workers: int, *, batch: int = 1,
                initializer: Callable | None = None, initargs: tuple = ()) -> Iterator[Any]:
    """fn(item) for each item, in input order, over `workers` spawned processes (in this process when 1).
    `fn` and `initializer` must be module-level functions; items and results must pickle."""
    if workers < 1:
        raise CompassError(f"workers must be >= 1, got {workers}")
    iterator = iter(items)
    head = list(itertools.islice(iterator, batch + 1))
    if workers == 1 or len(head) <= batch:  # one worker, or all of it one task: no pool to start
        if initializer is not None:
            initializer(*initargs)
        for item in itertools.chain(head, iterator):
            yield fn(item)
        return
    iterator = itertools.chain(head, iterator)
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=initializer, initargs=initargs)
    pending: deque = deque()
    try:
        while chunk := list(itertools.islice(iterator, batch)):
            pending.append(pool.submit(_apply_batch, fn, chunk))
            if len(pending) >= workers * IN_FLIGHT_PER_WORKER:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# --- gather ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShardRun:
    """One completed shard run, as a stage's `gather(config, shards, out_dir)` receives it (in shard order)."""

    out_dir: Path
    metrics: dict


def concat_files(parts: list[Path], target: Path) -> None:
    """`target` = the bytes of `parts` one after another (written atomically)."""
    with atomic_open(target, "wb") as out:
        for part in parts:
            with open(part, "rb") as fh:
                shutil.copyfileobj(fh, out, 1 << 20)


def merge_trees(parts: list[Path], target: Path, *, same_bytes_ok: bool = False) -> None:
    """Every file under each of `parts` at the same relative path under `target` (hard links where the file
    system allows, else copies); two shards writing the same path is an error, unless `same_bytes_ok` (files named
    by their content, e.g. images/<sha256>.png) and the two hold the same bytes."""
    import filecmp

    for part in parts:
        if not part.is_dir():
            continue
        for file in sorted(p for p in part.rglob("*") if p.is_file()):
            dest = target / file.relative_to(part)
            if dest.exists():
                if same_bytes_ok and filecmp.cmp(file, dest, shallow=False):
                    continue
                raise CompassError(f"gather: {file.relative_to(part)} is written by two shards ({part} and an earlier one)")
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(file, dest)
            except OSError as err:
                if err.errno not in (errno.EXDEV, errno.EPERM):  # another file system; links not allowed there
                    raise
                shutil.copy2(file, dest)


def add_counts(total: dict, part: dict) -> dict:
    """Sum two metric dicts key by key: numbers add, nested dicts add recursively."""
    out = dict(total)
    for key, value in part.items():
        if isinstance(value, dict):
            out[key] = add_counts(out[key] if key in out else {}, value)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = (out[key] if key in out else 0) + value
        else:
            raise CompassError(f"gather: metric {key!r} is not a count ({value!r}); the stage must merge it itself")
    return out


def sum_metrics(metrics: list[dict], keys: list[str]) -> dict:
    """The sum over shards of the count metrics `keys`."""
    total: dict = {}
    for item in metrics:
        total = add_counts(total, {key: item[key] for key in keys})
    return total
