"""What search sees of a run: its figures (typed config keys and metrics, for exact matches and --where),
the full-text body, and the short description the embedding model reads."""
from __future__ import annotations

from typing import Any

from compass.ledger.flat import as_number, as_text, flatten


def figures_of(config: dict[str, Any], metrics: dict[str, Any], history: list[tuple[str, int, float]]) -> list[tuple[str, float | None, str, str]]:
    """(key, number or None, text, kind) rows. A list of scalars is one row with its JSON text and one row
    per element, so `merge.weights = 0.25` finds [0.25, 0.75] while the whole list still compares as text."""
    rows = []
    for k, v in flatten(config).items():
        rows.append((k, as_number(v), as_text(v), "config"))
        if isinstance(v, list):
            rows += [(k, as_number(item), as_text(item), "config") for item in v if not isinstance(item, (dict, list))]
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


MEANING_CHARS = 200  # embedding costs ~10 ms per character on one loaded core: the note and the recipe only


def meaning_text(stage: str, name: str, note: str, summary: dict[str, str], config: dict[str, Any], metrics: dict[str, Any]) -> str:
    """What the embedding model reads of a run: its note (what a person remembers), its kind and name, and
    its data recipe in short. Config values and metrics are not in it: facts and superlatives find those
    exactly (compass.ledger.understand), and they would only blur the note's meaning."""
    parts = [note] if note else []
    parts.append(f"{stage} run {name}." if name != stage else f"{stage} run.")
    for key in ("sources", "training pairs"):
        if summary.get(key):
            parts.append(f"{key}: {summary[key]}.")
    return " ".join(parts)[:MEANING_CHARS]


def words_body(name: str, note: str, body: str) -> tuple[str, str, str]:
    """The (name, note, body) columns of the word index: each text's search words joined by spaces."""
    from compass.ledger.text_terms import index_words

    return " ".join(index_words(name)), " ".join(index_words(note)), " ".join(index_words(body))


def text_sha(text: str) -> str:
    import hashlib  # here: text search never hashes, and loading OpenSSL's hashes is ~5 ms of its start

    return hashlib.sha256(text.encode()).hexdigest()
