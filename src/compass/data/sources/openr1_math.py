"""OpenR1-Math (open-r1/OpenR1-Math-220k): `problem`, `solution`, `answer`, plus `problem_type`, `question_type`,
`source`, `uuid`. Rows with an empty answer (proofs) are skipped."""
from __future__ import annotations

from compass.records import Problem
from compass.data.sources.base import SkipRow, SourceSpec, problem_id, text_field

NAME = "openr1_math"


def convert(row: dict, index: int, split: str) -> Problem:
    answer = row["answer"]
    if not isinstance(answer, str) or not answer.strip() or answer.strip().lower() in {"proof", "none"}:
        raise SkipRow("no final answer (proof or empty)")
    meta = {"split": split, "index": index}
    for column in ("problem_type", "question_type", "source", "uuid"):
        if column in row:
            meta[column] = row[column]
    return Problem(
        id=problem_id(NAME, split, index),
        source=NAME,
        question=text_field(row, "problem"),
        reference_answer=answer.strip(),
        reference_solution=text_field(row, "solution") or None,
        lang="en",
        meta=meta,
    )


SPEC = SourceSpec(
    NAME, "open-r1/OpenR1-Math-220k", "default", "train", ("problem", "solution", "answer"), "en", convert,
    "NuminaMath 1.5 problems with DeepSeek-R1 traces, 94k default split",
)
