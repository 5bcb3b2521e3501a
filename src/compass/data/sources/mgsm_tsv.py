"""MGSM as google-research/url-nlp publishes it: `mgsm/mgsm_<lang>.tsv`, question<TAB>answer_number, no header,
answers with thousands commas ("2,125"). Rows get the hub schema of juletxara/mgsm (answer and
equation_solution empty, as in its test split) so a local TSV and the hub id give the same Problems; used by
the sources stage (a .tsv `path`) and by eval (`--mgsm-ja FILE.tsv`)."""
from __future__ import annotations

import csv
import re
from pathlib import Path

from compass.errors import CompassError

_THOUSANDS = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_PLAIN = re.compile(r"-?\d+(?:\.\d+)?")


def tsv_answer(text: str, where: str) -> str:
    """An answer_number cell of the TSV as the answer text: '2,125' -> '2125', '12' -> '12'."""
    text = text.strip()
    if _THOUSANDS.fullmatch(text):
        return text.replace(",", "")
    if _PLAIN.fullmatch(text):
        return text
    raise CompassError(f"{where}: answer_number {text!r} is not a number")


def read_tsv(path: Path) -> list[dict]:
    """The url-nlp MGSM TSV as rows of the hub schema (question, answer None, answer_number, equation_solution None)."""
    rows = []
    with open(path, encoding="utf-8", newline="") as fh:
        for lineno, fields in enumerate(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE), 1):
            if not fields:
                continue
            if len(fields) != 2:
                raise CompassError(f"{path}:{lineno}: expected 2 tab-separated fields (question, answer_number), "
                                   f"got {len(fields)}")
            rows.append({"question": fields[0], "answer": None, "answer_number": tsv_answer(fields[1], f"{path}:{lineno}"),
                         "equation_solution": None})
    if not rows:
        raise CompassError(f"{path}: no rows (expected question<TAB>answer_number lines)")
    return rows
