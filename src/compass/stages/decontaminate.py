"""Drop training problems that overlap the evaluation sets, with a report of each drop and its matching eval item.

A problem is dropped when it shares a link key with an evaluation item (meta `gsm8k_test_index`: MGSM-ja test
items are translations of GSM8K test items, the contamination no text overlap can see) or when its normalised
word n-grams (each CJK character a token) overlap an evaluation item's by at least `threshold` (share of the
shorter text's n-grams). dropped.jsonl names the dropped id, the eval id, the method and the score.
"""
from __future__ import annotations

from pathlib import Path

from pydantic import Field

from compass.config import StageConfig
from compass.data.decontam import DEFAULT_LINK_KEYS, DEFAULT_NGRAM, DEFAULT_THRESHOLD
from compass.errors import CompassError
from compass.io import iter_jsonl, write_jsonl
from compass.records import Problem
from compass.stages import Port

VERSION = 1  # code version of what this stage writes: bump when the same config and inputs would give other bytes
EXAMPLE = "compass decontaminate --problems sources/problems.jsonl --eval eval_sources/problems.jsonl --out decontam/ --ngram 5 --threshold 0.5"


class Config(StageConfig):
    ngram: int = Field(DEFAULT_NGRAM, ge=1, description="n-gram length in tokens (words, numbers, single CJK characters)")
    threshold: float = Field(DEFAULT_THRESHOLD, gt=0, le=1, description="drop when this share of the shorter text's n-grams is in the other")
    link_keys: list[str] = Field(list(DEFAULT_LINK_KEYS), description="meta keys naming the same item across sources (e.g. MGSM <-> GSM8K test)")
    max_drop_rate: float = Field(0.5, ge=0, le=1, description="fail (writing nothing) when more than this share of problems is dropped")


INPUTS = {
    "problems": Port("training Problem records (JSONL file or directory of shards)"),
    "eval": Port("Problem records of the evaluation sets (JSONL file or directory of shards)"),
}
OUTPUTS = {"problems": "problems.jsonl", "report": "dropped.jsonl"}


def run(config: Config, inputs: dict[str, Path], out_dir: Path) -> dict:
    from compass.data.decontam import decontaminate

    problems = list(iter_jsonl(inputs["problems"], Problem))
    eval_problems = list(iter_jsonl(inputs["eval"], Problem))
    if not problems:
        raise CompassError(f"decontaminate: no Problem records in {inputs['problems']}")
    kept, dropped = decontaminate(problems, eval_problems, n=config.ngram, threshold=config.threshold, link_keys=config.link_keys)
    rate = len(dropped) / len(problems)
    if rate > config.max_drop_rate:
        examples = "; ".join(f"{p.id} ~ {m.eval_id} ({m.method}, {m.score})" for p, m, _ in dropped[:3])
        raise CompassError(
            f"decontaminate: {len(dropped)} of {len(problems)} problems ({rate:.0%}) overlap the evaluation sets, "
            f"more than max_drop_rate {config.max_drop_rate:.0%} (is the eval set drawn from the training data?): {examples}"
        )
    write_jsonl(out_dir / OUTPUTS["problems"], kept)
    write_jsonl(
        out_dir / OUTPUTS["report"],
        (
            {"id": p.id, "source": p.source, "question": p.question, "eval_id": m.eval_id, "eval_source": m.eval_source,
             "method": m.method, "score": m.score, "eval_matches": count}
            for p, m, count in dropped
        ),
    )
    by_method: dict[str, int] = {}
    by_source: dict[str, int] = {}
    for p, m, _ in dropped:
        by_method[m.method] = by_method.get(m.method, 0) + 1
        by_source[p.source] = by_source.get(p.source, 0) + 1
    return {
        "problems_in": len(problems),
        "eval_items": len(eval_problems),
        "kept": len(kept),
        "dropped": len(dropped),
        "drop_rate": round(rate, 6),
        "dropped_by_method": dict(sorted(by_method.items())),
        "dropped_by_source": dict(sorted(by_source.items())),
    }
