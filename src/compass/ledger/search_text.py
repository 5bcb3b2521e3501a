"""What search sees of a run: its figures (typed config keys and metrics, for exact matches and --where),
the full-text body, and the short description the embedding model reads."""
from __future__ import annotations

import hashlib
from typing import Any

from compass.ledger.flat import as_number, as_text, flatten, format_number
from compass.ledger.index import RunRow


def figures_of(config: dict[str, Any], metrics: dict[str, Any], history: list[tuple[str, int, float]]) -> list[tuple[str, float | None, str, str]]:
    rows = [(k, as_number(v), as_text(v), "config") for k, v in flatten(config).items()]
    metric_flat = flatten(metrics)
    rows += [(k, as_number(v), as_text(v), "metric") for k, v in metric_flat.items()]
    last: dict[str, float] = {}
    for key, step, value in sorted(history, key=lambda p: p[1]):
        last[key] = value
    rows += [(k, v, as_text(v), "metric") for k, v in last.items() if k not in metric_flat]
    return rows


def search_body(manifest: dict[str, Any], summary: dict[str, str], out_files: list[tuple[str, str, int]]) -> str:
    """The text full-text search sees for a run (name and note are separate columns)."""
    lines = [f"stage {manifest['stage']}"]
    if manifest["recipe"]:
        lines.append(f"recipe {manifest['recipe']}")
    lines += [f"{k} {v}" for k, v in summary.items() if v]
    lines.append("config " + " ".join(f"{k}={as_text(v)}" for k, v in flatten(manifest["config"]).items()))
    lines.append("metrics " + " ".join(f"{k}={as_text(v)}" for k, v in flatten(manifest["metrics"]).items()))
    lines.append("inputs " + " ".join(f"{port}={rec['path']}" for port, rec in manifest["inputs"].items()))
    lines.append("outputs " + " ".join(rel for rel, _, _ in out_files[:200]))
    if manifest["code"]["commit"]:
        lines.append(f"commit {manifest['code']['commit']}")
    return "\n".join(lines)


def meaning_text(row: RunRow) -> str:
    """A short description for the embedding model (it reads about 256 word pieces): the note and the
    data recipe first, then the config and metrics."""
    parts = [f"{row.stage} run {row.name}."]
    if row.note:
        parts.append(row.note)
    for key, value in row.summary.items():
        if value:
            parts.append(f"{key}: {value}.")
    parts.append("config: " + ", ".join(f"{k.replace('_', ' ')} {as_text(v)}" for k, v in flatten(row.config).items()) + ".")
    numbers = [f"{k.replace('_', ' ')} {format_number(as_number(v))}" for k, v in flatten(row.metrics).items() if as_number(v) is not None]
    if numbers:
        parts.append("metrics: " + ", ".join(numbers) + ".")
    return " ".join(parts)


def text_sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
