"""GSM8K (openai/gsm8k, config 'main'): `question`, `answer` = solution with calculator annotations, then '#### 72'.

The test split's row index is recorded as meta['gsm8k_test_index']: MGSM's 250 items are the first 250 GSM8K
test items, so decontamination can pair them exactly."""
from __future__ import annotations

from compass.records import Problem
from compass.data.sources.base import SkipRow, SourceSpec, problem_id, strip_calculator, text_field

NAME = "gsm8k"


def convert(row: dict, index: int, split: str) -> Problem:
    answer_text = text_field(row, "answer")
    solution, sep, final = answer_text.rpartition("####")
    if not sep or not final.strip():
        raise SkipRow("no '#### <answer>' line")
    meta: dict = {"split": split, "index": index}
    if split == "test":
        meta["gsm8k_test_index"] = index
    return Problem(
        id=problem_id(NAME, split, index),
        source=NAME,
        question=text_field(row, "question"),
        reference_answer=final.strip().replace(",", ""),
        reference_solution=strip_calculator(solution).strip() or None,
        lang="en",
        meta=meta,
    )


SPEC = SourceSpec(NAME, "openai/gsm8k", "main", "train", ("question", "answer"), "en", convert, "grade-school math, 7.5k train / 1.3k test")
