"""MATH (Hendrycks; e.g. DigitalLearningGmbH/MATH-lighteval): `problem`, `solution` with the answer in \\boxed{},
`level`, `type`. The reference answer is the last \\boxed{} of the solution."""
from __future__ import annotations

from compass.formats.boxed import extract_boxed
from compass.records import Problem
from compass.data.sources.base import SkipRow, SourceSpec, problem_id, text_field

NAME = "math"


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
        meta={"split": split, "index": index, "level": row["level"], "type": row["type"]},
    )


SPEC = SourceSpec(
    NAME, "DigitalLearningGmbH/MATH-lighteval", "default", "train", ("problem", "solution", "level", "type"), "en", convert,
    "competition math, 7.5k train / 5k test",
)
