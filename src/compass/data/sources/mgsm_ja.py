"""MGSM, Japanese (juletxara/mgsm, config 'ja'): `question`, `answer` (a worked answer for the 8 train exemplars,
empty for test), `answer_number`, `equation_solution`.

MGSM's 250 test items are human translations of the first 250 GSM8K test items, in order: the row index is
recorded as meta['gsm8k_test_index'] so decontamination drops them when GSM8K test is an evaluation set.

Also read as published by google-research/url-nlp (`mgsm/mgsm_ja.tsv`, a local `path` ending in .tsv): see
compass.data.sources.mgsm_tsv."""
from __future__ import annotations

from compass.records import Problem
from compass.data.sources.base import SourceSpec, number_text, problem_id, text_field

NAME = "mgsm_ja"
MGSM_TEST_SIZE = 250


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
