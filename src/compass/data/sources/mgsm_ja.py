"""MGSM, Japanese (juletxara/mgsm, config 'ja'): `question`, `answer` (a worked answer for the 8 train exemplars,
empty for test), `answer_number`, `equation_solution`.

MGSM's 250 test items are human translations of the first 250 GSM8K test items, in order: the row index is
recorded as meta['gsm8k_test_index'] so decontamination drops them when GSM8K test is an evaluation set.

Also read as published by google-research/url-nlp: `mgsm/mgsm_ja.tsv`, question<TAB>answer_number, no header,
answers with thousands commas ("2,125"); its rows get the hub schema (answer and equation_solution empty, as in
the hub's test split) so a local TSV and the hub id give the same Problems."""
from __future__ import annotations

import csv
import re
from pathlib import Path

from compass.errors import CompassError
from compass.records import Problem
from compass.data.sources.base import SourceSpec, number_text, problem_id, text_field

NAME = "mgsm_ja"
MGSM_TEST_SIZE = 250


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


def convert(row: dict, index: int, split: str) -> Problem:
    worked = row["answer"]
    meta: dict = {"split": split, "index": index, "equation_solution": row["equation_solution"]}
    if split == "test":
        meta["gsm8k_test_index"] = index
    return Problem(
        id=problem_id(NAME, split, index),
        source=NAME,
        question=text_field(row, "question"),
        reference_answer=number_text(row["answer_number"]),
        reference_solution=worked.strip() if isinstance(worked, str) and worked.strip() else None,
        lang="ja",
        meta=meta,
    )


SPEC = SourceSpec(
    NAME, "juletxara/mgsm", "ja", "test", ("question", "answer", "answer_number", "equation_solution"), "ja", convert,
    "250 GSM8K test items translated to Japanese",
)
