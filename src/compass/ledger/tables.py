"""Rendering rows as a terminal table, Markdown, CSV or JSON."""
from __future__ import annotations

import csv
import io
import json
import unicodedata
from typing import Any

from compass.errors import CompassError
from compass.ledger.flat import as_text

FORMATS = ("table", "md", "csv", "json")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return as_text(value)


def _width(text: str) -> int:
    """Display width: East Asian wide characters take two columns."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def _clip(text: str, width: int) -> str:
    if _width(text) <= width:
        return text
    out, used = "", 0
    for char in text:
        w = _width(char)
        if used + w > width - 1:
            break
        out += char
        used += w
    return out + "…"


def _pad(text: str, width: int) -> str:
    return text + " " * (width - _width(text))


def render(rows: list[dict], columns: list[str], fmt: str, *, max_width: int = 48) -> str:
    if fmt not in FORMATS:
        raise CompassError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt == "json":
        return json.dumps([{c: row[c] for c in columns} for row in rows], ensure_ascii=False, indent=2)
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_cell(row[c]) for c in columns])
        return buf.getvalue().rstrip("\n")
    if fmt == "md":
        def esc(text: str) -> str:
            return text.replace("|", "\\|").replace("\n", " ")
        lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
        lines += ["| " + " | ".join(esc(_cell(row[c])) for c in columns) + " |" for row in rows]
        return "\n".join(lines)
    cells = [[_clip(_cell(row[c]).replace("\n", " "), max_width) for c in columns] for row in rows]
    widths = [max([_width(c)] + [_width(r[i]) for r in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(_pad(c, w) for c, w in zip(columns, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(_pad(v, w) for v, w in zip(r, widths)).rstrip() for r in cells]
    return "\n".join(lines)
