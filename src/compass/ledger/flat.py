"""Flattening nested configs and metrics to dotted keys, and the one way a figure is turned into text."""
from __future__ import annotations

import json
import math
from typing import Any


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}, "c": [1, 2]} -> {"a.b": 1, "c": [1, 2]}: dicts become dotted keys, lists stay values."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        if not value and prefix:
            out[prefix] = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def as_number(value: Any) -> float | None:
    """The numeric reading of a figure (bools count as 0/1), or None; NaN and infinities are not figures."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        number = float(value)
        return number if math.isfinite(number) else None
    return None


def as_text(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        return format_number(value)
    if isinstance(value, int):
        return str(value)
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def format_number(value: float) -> str:
    """Short, exact-enough: 0.1 -> 0.1, 2e-4 -> 0.0002, 0.612345678 -> 0.6123, 12345.6 -> 12345.6."""
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    if abs(value) >= 1e-3:
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.6g}"
    return f"{value:.3g}"


def human_size(size: int) -> str:
    """1536 -> '1.5 KB'."""
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")
