"""Orca-Math (microsoft/orca-math-word-problems-200k): `question`, `answer` = a worked solution in prose.
No final-answer column: the reference answer is the last \\boxed{} if any, else the last number of the
solution (meta['answer_from'] says which). Solutions without a number are skipped."""
from __future__ import annotations

from compass.formats.boxed import extract_boxed
from compass.records import Problem
from compass.data.sources.base import SkipRow, SourceSpec, last_number, problem_id, text_field

NAME = "orca_math"


def convert(row: dict, index: int, split: str) -> Problem:
    solution = text_field(row, "answer")
    answer, answer_from = extract_boxed(solution), "boxed"
    if not answer:
        answer, answer_from = last_number(solution), "last_number"
    if not answer:
        raise SkipRow("no number in the solution")
    return Problem(
        id=problem_id(NAME, split, index),
        source=NAME,
        question=text_field(row, "question"),
        reference_answer=answer,
        reference_solution=solution,
        lang="en",
        meta={"split": split, "index": index, "answer_from": answer_from},
    )


SPEC = SourceSpec(NAME, "microsoft/orca-math-word-problems-200k", None, "train", ("question", "answer"), "en", convert, "200k GPT-4 word problems")
