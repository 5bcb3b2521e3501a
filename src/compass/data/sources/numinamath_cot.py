"""NuminaMath-CoT (AI-MO/NuminaMath-CoT): `source`, `problem`, `solution` (answer in \\boxed{}), `messages`.
Rows whose solution has no \\boxed{} are skipped."""
from __future__ import annotations

from compass.formats.boxed import extract_boxed
from compass.records import Problem
from compass.data.sources.base import SkipRow, SourceSpec, problem_id, text_field

NAME = "numinamath_cot"


def convert(row: dict, index: int, split: str) -> Problem:
    solution = text_field(row, "solution")
    answer = extract_boxed(solution)
    if not answer:
        raise SkipRow("no \\boxed{} answer in solution")
    return Problem(
        id=problem_id(NAME, split, index),
        source=NAME,
        question=text_field(row, "problem"),
        reference_answer=answer,
        reference_solution=solution,
        lang="en",
        meta={"split": split, "index": index, "origin": text_field(row, "source")},
    )


SPEC = SourceSpec(NAME, "AI-MO/NuminaMath-CoT", None, "train", ("source", "problem", "solution"), "en", convert, "860k competition/olympiad problems with CoT")
