"""Reading benchmark data: a local file in the benchmark's own schema, or a hub id on a user's machine."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from compass.errors import CompassError
from compass.io import iter_json_objects


def parse_hub_spec(spec: str) -> tuple[str, str | None, str]:
    """'openai/gsm8k:main:test' -> ('openai/gsm8k', 'main', 'test'); the config may be empty ('id::test')."""
    parts = spec.split(":")
    if len(parts) != 3 or not parts[0] or not parts[2]:
        raise CompassError(f"hub data spec must be 'DATASET_ID:CONFIG:SPLIT' (config may be empty), got {spec!r}")
    return parts[0], parts[1] or None, parts[2]


def load_hub_rows(spec: str) -> list[dict[str, Any]]:
    """Rows of a hub dataset split (network or the local HF cache; fails in offline tests by design)."""
    import datasets

    dataset_id, config, split = parse_hub_spec(spec)
    try:
        ds = datasets.load_dataset(dataset_id, config, split=split)
    except Exception as err:  # noqa: BLE001 - datasets raises many types; the user needs one line with the cause
        raise CompassError(f"cannot load hub dataset {spec!r}: {type(err).__name__}: {err} "
                           "(offline? give the task's local data file instead)") from None
    return [dict(row) for row in ds]


def read_json_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a .jsonl file (one object a line), a .json file (a list, or {"data": [...]}) or a .parquet file."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if suffix == ".jsonl":
        return list(iter_json_objects(path))
    if suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise CompassError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
        if isinstance(data, dict) and "data" in data:
            data = data["data"]
        if not isinstance(data, list):
            raise CompassError(f"{path}: expected a JSON list of records (or {{\"data\": [...]}}), got {type(data).__name__}")
        return data
    raise CompassError(f"{path}: unsupported data file type {suffix!r} (expected .jsonl, .json or .parquet)")


def require(row: dict[str, Any], keys: tuple[str, ...], where: str) -> None:
    missing = [k for k in keys if k not in row]
    if missing:
        raise CompassError(f"{where}: missing field(s) {missing}; the record has {sorted(row)}")
