"""SVAMP (ChilleD/SVAMP): `ID`, `Body`, `Question`, `Equation`, `Answer` (a number), `Type`.
The question is Body + Question; the dataset's equation becomes the reference solution."""
from __future__ import annotations

from compass.records import Problem
from compass.data.sources.base import SourceSpec, number_text, problem_id, text_field

NAME = "svamp"


def convert(row: dict, index: int, split: str) -> Problem:
    answer = number_text(row["Answer"])
    equation = text_field(row, "Equation")
    return Problem(
        id=problem_id(NAME, split, index),
        source=NAME,
        question=f"{text_field(row, 'Body')} {text_field(row, 'Question')}",
        reference_answer=answer,
        reference_solution=f"{equation} = {answer}",
        lang="en",
        meta={"split": split, "index": index, "svamp_id": row["ID"], "type": row["Type"], "equation": equation},
    )


SPEC = SourceSpec(
    NAME, "ChilleD/SVAMP", None, "train", ("ID", "Body", "Question", "Equation", "Answer", "Type"), "en", convert,
    "varied arithmetic word problems, 700 train / 300 test",
)
