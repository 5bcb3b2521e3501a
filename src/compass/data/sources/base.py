"""What every dataset source shares: reading rows from a local file or a hub id, checking the schema,
sampling, and the small text helpers the converters use.

A source module defines `SPEC = SourceSpec(...)` whose `convert(row, index, split)` turns one row of the
hub dataset's own schema into a Problem, or raises SkipRow(reason) for a row that has no usable reference
answer (a proof, a program-of-thought solution). Skips are counted by reason, never silent.
"""
from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compass.errors import CompassError
from compass.io import iter_json_objects
from compass.records import Lang, Problem

LOCAL_SUFFIXES = (".jsonl", ".parquet", ".tsv")  # .tsv: MGSM as google-research/url-nlp publishes it
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class SkipRow(Exception):
    """A row that has no usable reference answer; its reason is counted in the stage metrics."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class SourceSpec:
    name: str
    hub_id: str = ""
    hub_config: str | None = None
    default_split: str = "train"
    columns: tuple[str, ...] = ()  # the columns `convert` reads; a row lacking one is a schema error
    lang: Lang = "en"
    convert: Callable[[dict[str, Any], int, str], Problem] | None = None
    description: str = ""


def problem_id(source: str, split: str, index: int) -> str:
    """Ids name the row's position in its split, so they stay the same whatever limit or sample is taken."""
    return f"{source}/{split}/{index}"


# --- rows -------------------------------------------------------------------------------------------


def _read_local_file(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".jsonl":
        return list(iter_json_objects(path))
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if path.suffix == ".tsv":
        from compass.data.sources.mgsm_tsv import read_tsv

        return read_tsv(path)
    raise CompassError(f"{path}: unsupported file type {path.suffix!r}; use {' or '.join(LOCAL_SUFFIXES)}")


def local_split_files(directory: Path, split: str) -> list[Path]:
    """Files of one split in a directory laid out like a hub dataset (`data/train-00000-of-00001.parquet`,
    `test.jsonl`): names that are the split or start with '<split>-' / '<split>.', searched recursively."""
    files = sorted(
        p
        for p in directory.rglob("*")
        if p.is_file()
        and p.suffix in LOCAL_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(directory).parts)
        and (p.stem == split or p.name.startswith(f"{split}-") or p.name.startswith(f"{split}."))
    )
    if not files:
        raise CompassError(f"{directory}: no {split!r} split files (expected e.g. {split}.jsonl or data/{split}-00000-of-00001.parquet)")
    return files


def read_rows(path_or_hub_id: str, split: str, hub_config: str | None = None,
              revision: str | None = None) -> tuple[Sequence[dict[str, Any]], list[Path]]:
    """Rows of one split, and the local files they came from (empty for a hub dataset).

    A path that exists is read locally: a .jsonl/.parquet file is the split itself; a directory holds split
    files. Anything else shaped like 'owner/name' is a hub id for `datasets.load_dataset` (on a machine with
    the hub, or with the dataset in its local cache).
    """
    path = Path(path_or_hub_id)
    if path.is_file():
        return _read_local_file(path), [path]
    if path.is_dir():
        files = local_split_files(path, split)
        rows: list[dict[str, Any]] = []
        for file in files:
            rows.extend(_read_local_file(file))
        return rows, files
    if path.suffix in LOCAL_SUFFIXES or not _HUB_ID.match(path_or_hub_id):
        raise CompassError(f"no such file or directory: {path_or_hub_id} (and it is not a hub id like 'openai/gsm8k')")
    import datasets

    try:
        dataset = datasets.load_dataset(path_or_hub_id, hub_config, split=split, revision=revision)
    except Exception as err:  # datasets raises many types (offline, missing config, bad split): one clear line
        raise CompassError(
            f"could not load hub dataset {path_or_hub_id!r} (config {hub_config!r}, split {split!r}, revision {revision!r}): "
            f"{type(err).__name__}: {err}"
        ) from None
    return dataset, []


def check_columns(spec: SourceSpec, row: dict[str, Any], where: str) -> None:
    missing = [c for c in spec.columns if c not in row]
    if missing:
        raise CompassError(
            f"{where}: missing column(s) {missing} for source {spec.name!r} "
            f"(expected the {spec.hub_id or spec.name} schema with {list(spec.columns)}; found {sorted(row)})"
        )


def select_indices(total: int, limit: int | None, sample_seed: int | None) -> Iterator[int]:
    """Row order to convert: file order, or a seeded permutation when sampling."""
    if limit is not None and limit < 0:
        raise CompassError(f"limit must be >= 0, got {limit}")
    order = list(range(total))
    if sample_seed is not None:
        random.Random(sample_seed).shuffle(order)
    yield from order


def convert_rows(
    spec: SourceSpec,
    rows: Sequence[dict[str, Any]],
    split: str,
    limit: int | None,
    sample_seed: int | None,
    where: str,
    skipped: Counter | None = None,
) -> list[Problem]:
    """Convert rows until `limit` problems are made; skipped rows counted in `skipped` by reason."""
    problems: list[Problem] = []
    for index in select_indices(len(rows), limit, sample_seed):
        if limit is not None and len(problems) >= limit:
            break
        row = rows[index]
        check_columns(spec, row, f"{where}: row {index}")
        try:
            problem = spec.convert(row, index, split)
        except SkipRow as skip:
            if skipped is not None:
                skipped[skip.reason] += 1
            continue
        problems.append(problem)
    if sample_seed is not None:
        problems.sort(key=lambda p: p.meta["index"])  # a sample keeps the file's order
    return problems


# --- text helpers -----------------------------------------------------------------------------------


def text_field(row: dict[str, Any], column: str) -> str:
    """A string column, stripped; None or a non-string is a schema error, not an empty problem."""
    value = row[column]
    if not isinstance(value, str):
        raise CompassError(f"column {column!r} must be a string, got {type(value).__name__}: {value!r}")
    return value.strip()


def number_text(value: Any) -> str:
    """A numeric answer as text: 27.0 -> '27', 2.5 -> '2.5', '27.0' -> '27'. Strings that are not numbers stay."""
    if isinstance(value, bool):
        raise CompassError(f"expected a number, got a boolean {value!r}")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise CompassError(f"expected a finite number, got {value!r}")
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"-?\d+\.0+", text):
            return text.split(".")[0]
        return text
    raise CompassError(f"expected a number, got {type(value).__name__}: {value!r}")


_NUMBER_IN_TEXT = re.compile(r"-?\d(?:[\d,]*\d)?(?:\.\d+)?")


def last_number(text: str) -> str | None:
    """The last number written in a text ('... so she has 1,200 dollars.' -> '1200'), commas removed."""
    found = _NUMBER_IN_TEXT.findall(text)
    if not found:
        return None
    return found[-1].replace(",", "")


_GSM_CALC = re.compile(r"<<[^<>]*>>")


def strip_calculator(text: str) -> str:
    """GSM8K solutions carry calculator annotations '<<48/2=24>>' that are not part of the prose."""
    return _GSM_CALC.sub("", text)
