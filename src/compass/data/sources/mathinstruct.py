"""MathInstruct (TIGER-Lab/MathInstruct): `source`, `instruction`, `output`. No answer column: chain-of-thought
outputs end in 'The answer is X' (or a \\boxed{}), which is the reference answer. Program-of-thought rows
(source contains 'PoT') hold Python code and no stated answer: they are skipped, and counted."""
from __future__ import annotations

import re

from compass.formats.boxed import extract_boxed
from compass.records import Problem
from compass.data.sources.base import SkipRow, SourceSpec, problem_id, text_field

NAME = "mathinstruct"
_THE_ANSWER_IS = re.compile(r"[Tt]he answer is[:\s]*(.+?)\s*\.?\s*$", re.MULTILINE)


def final_answer(output: str) -> str | None:
    matches = _THE_ANSWER_IS.findall(output)
    if matches:
        return matches[-1].strip().rstrip(".").strip() or None
    return extract_boxed(output)


def convert(row: dict, index: int, split: str) -> Problem:
    source = text_field(row, "source")
    if "PoT" in source:
        raise SkipRow("program-of-thought solution (code, no stated answer)")
    output = text_field(row, "output")
    answer = final_answer(output)
    if not answer:
        raise SkipRow("no 'The answer is' or \\boxed{} in output")
    return Problem(
        id=problem_id(NAME, split, index),
        source=NAME,
        question=text_field(row, "instruction"),
        reference_answer=answer,
        reference_solution=output,
        lang="en",
        meta={"split": split, "index": index, "origin": source},
    )


SPEC = SourceSpec(
    NAME, "TIGER-Lab/MathInstruct", None, "train", ("source", "instruction", "output"), "en", convert,
    "262k instruction-tuning math rows (CoT and PoT) from 13 datasets",
)
