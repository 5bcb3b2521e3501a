"""OpenMathReasoning (nvidia/OpenMathReasoning; splits cot, tir, genselect): `problem`, `generated_solution`,
`expected_answer`, `problem_type` ('has_answer_extracted', 'no_answer_extracted', 'converted_proof'),
`problem_source`, `generation_model`, `inference_mode`. Rows without an expected answer are skipped."""
from __future__ import annotations

from compass.records import Problem
from compass.data.sources.base import SkipRow, SourceSpec, problem_id, text_field

NAME = "openmathreasoning"


def convert(row: dict, index: int, split: str) -> Problem:
    answer = row["expected_answer"]
    if not isinstance(answer, str) or not answer.strip():
        raise SkipRow(f"no expected_answer (problem_type={row['problem_type']})")
    meta = {"split": split, "index": index, "problem_type": row["problem_type"]}
    for column in ("problem_source", "generation_model", "inference_mode", "pass_rate_72b_tir"):
        if column in row:
            meta[column] = row[column]
    return Problem(
        id=problem_id(NAME, split, index),
        source=NAME,
        question=text_field(row, "problem"),
        reference_answer=answer.strip(),
        reference_solution=text_field(row, "generated_solution") or None,
        lang="en",
        meta=meta,
    )


SPEC = SourceSpec(
    NAME, "nvidia/OpenMathReasoning", None, "cot", ("problem", "generated_solution", "expected_answer", "problem_type"), "en", convert,
    "AoPS problems with long CoT / TIR solutions (3.2M cot rows)",
)
