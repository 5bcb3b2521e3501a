"""AQuA-RAT (deepmind/aqua_rat, config 'raw'): `question`, `options` (['A)21', 'B)22', ...]), `rationale`,
`correct` (a letter). The options are appended to the question; the reference answer is the letter."""
from __future__ import annotations

import re

from compass.errors import CompassError
from compass.records import Problem
from compass.data.sources.base import SourceSpec, problem_id, text_field

NAME = "aqua_rat"
_OPTION = re.compile(r"^\(?([A-E])\)")


def convert(row: dict, index: int, split: str) -> Problem:
    options = row["options"]
    if not isinstance(options, list) or not options or not all(isinstance(o, str) for o in options):
        raise CompassError(f"column 'options' must be a list of strings like 'A)21', got {options!r}")
    letters = []
    for option in options:
        match = _OPTION.match(option.strip())
        if match is None:
            raise CompassError(f"option {option!r} does not start with a letter like 'A)'")
        letters.append(match.group(1))
    correct = text_field(row, "correct")
    if correct not in letters:
        raise CompassError(f"correct answer {correct!r} is not one of the options {letters}")
    question = text_field(row, "question") + "\nAnswer Choices: " + " ".join(f"({o.strip()[0]}) {o.strip()[2:].strip()}" for o in options)
    return Problem(
        id=problem_id(NAME, split, index),
        source=NAME,
        question=question,
        reference_answer=correct,
        reference_solution=text_field(row, "rationale") or None,
        lang="en",
        meta={"split": split, "index": index, "options": [o.strip() for o in options]},
    )


SPEC = SourceSpec(
    NAME, "deepmind/aqua_rat", "raw", "train", ("question", "options", "rationale", "correct"), "en", convert,
    "algebra word problems with 5 options, ~97k train",
)
