"""Trace -> DPO Pair records: chosen = the trace's answer, rejected = it with one corruption (docs/method.md A step 2).

Strategies, drawn per record with the configured weights: omit_thinking (the <Thinking> contents removed,
tags kept), tamper_thinking_numbers (numbers in the reasoning changed in value, kept in format),
tamper_answer (the final \\boxed answer changed: another option letter for A-E, the opposite for yes/no,
else its first number; a text answer falls back to a reasoning corruption). When the drawn strategy
cannot change a record the next one that can is used, and `strategy` names what was applied. The draw
of a record depends only on (seed, record id): same input and seed, same bytes, however the input is sharded.
Streams record by record (constant memory). Refused records go to rejects.jsonl with a reason.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from compass.config import StageConfig
from compass.errors import CompassError
from compass.io import atomic_open, dumps_record, iter_jsonl
from compass.records import Trace
from compass.stages import Port

VERSION = 1  # code version of what this stage writes: bump when the same config and inputs would give other bytes
EXAMPLE = "compass pairs --traces distill/traces.jsonl --out pairs/ --seed 42 --require-tags"


class Weights(BaseModel):
    """Relative weights of the corruptions (normalized; 0 turns a strategy off, fallbacks included)."""

    model_config = ConfigDict(extra="forbid")

    omit_thinking: float = Field(0.34, ge=0, description="remove the <Thinking> contents")
    tamper_thinking_numbers: float = Field(0.33, ge=0, description="change numbers inside <Thinking>")
    tamper_answer: float = Field(0.33, ge=0, description="change the final \\boxed answer")

    @model_validator(mode="after")
    def _positive_sum(self):
        if sum(self.model_dump().values()) <= 0:
            raise ValueError(f"at least one weight must be positive, got {self.model_dump()}")
        return self


class Config(StageConfig):
    weights: Weights = Field(default_factory=Weights, description="corruption weights, e.g. {tamper_answer: 0} drops one")
    require_tags: bool = Field(True, description="reject records whose answer is not in the <Problem>/<Thinking>/<Answer> format")
    require_verified: bool = Field(True, description="reject traces whose answer did not match the reference (chosen would be wrong)")
    max_reject_rate: float = Field(0.1, ge=0, le=1, description="fail (writing nothing) when more than this share of records is rejected")
    preference_ratio: float = Field(0.0, ge=0, lt=1, description="share of real preference pairs (from the `preference` input, a "
                                    "seeded sample) among all output pairs, beside the corruption pairs; 0 = corruption only")


INPUTS = {
    "traces": Port("Trace records: a JSONL file or a directory of *.jsonl shards"),
    "preference": Port("real preference pairs to mix in at preference_ratio: Pair records (preference-sources) or "
                       "prompt/chosen/rejected, HH or UltraFeedback rows", required=False),
}
OUTPUTS = {"pairs": "pairs.jsonl", "rejects": "rejects.jsonl"}


def run(config: Config, inputs: dict[str, Path], out_dir: Path) -> dict:
    from tqdm import tqdm

    from compass.data.pairs import make_pairs, normalized_weights
    from compass.data.preference import write_preference_share

    weights = normalized_weights(config.weights.model_dump())
    traces = tqdm(iter_jsonl(inputs["traces"], Trace), desc="pairs", unit="rec", mininterval=2.0)
    applied: Counter[str] = Counter()
    fallbacks: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    n = 0
    # Both files are written to temp names and renamed only at the end: a failed run leaves neither.
    with atomic_open(out_dir / OUTPUTS["pairs"]) as pairs_fh, atomic_open(out_dir / OUTPUTS["rejects"]) as rejects_fh:
        for outcome in make_pairs(traces, seed=config.seed, weights=weights,
                                  require_tags=config.require_tags, require_verified=config.require_verified):
            n += 1
            if outcome.pair is not None:
                pairs_fh.write(dumps_record(outcome.pair) + "\n")
                applied[outcome.pair.strategy] += 1
                if outcome.drawn != outcome.pair.strategy:
                    fallbacks[f"{outcome.drawn}->{outcome.pair.strategy}"] += 1
            else:
                rejects_fh.write(dumps_record(outcome.reject) + "\n")
                reasons[outcome.reject.reason] += 1
        n_rejects = sum(reasons.values())
        if n == 0:
            raise CompassError(f"pairs: no Trace records in {inputs['traces']}")
        if n_rejects / n > config.max_reject_rate:
            raise CompassError(
                f"pairs: {n_rejects} of {n} records rejected ({n_rejects / n:.1%} > max_reject_rate "
                f"{config.max_reject_rate:.1%}); reasons {dict(sorted(reasons.items()))}"
            )
        # real preference pairs after the corruption pairs (DPO shuffles); each names its dataset row in source_id
        preference = write_preference_share(pairs_fh, inputs.get("preference"), n - n_rejects, config.preference_ratio,
                                            config.seed)
    n_pairs = n - n_rejects
    return {
        "traces": n,
        "pairs": n_pairs,
        "rejects": n_rejects,
        "reject_reasons": dict(sorted(reasons.items())),
        "strategies": {name: applied[name] for name in weights},
        "strategy_share": {name: round(applied[name] / n_pairs, 4) if n_pairs else 0.0 for name in weights},
        "fallbacks": dict(sorted(fallbacks.items())),
        **preference,
    }
