"""Trace -> DPO Pair records: chosen = the trace's answer, rejected = it with one corruption (docs/method.md A step 2).

Strategies, drawn per record with the configured weights: omit_thinking (the <Thinking> contents removed,
tags kept), tamper_thinking_numbers (numbers in the reasoning changed in value, kept in format),
tamper_answer (the final \\boxed answer changed: another option letter for A-E, the opposite for yes/no,
else its first number; a text answer falls back to a reasoning corruption). When the drawn strategy
cannot change a record the next one that can is used, and `strategy` names what was applied. The draw
of a record depends only on (seed, record id): same input and seed, same bytes, however the input is sharded.
Streams record by record (constant memory). Refused records go to rejects.jsonl with a reason.
`workers` processes make the pairs of batches of records (output in input order, the same bytes for any
count); a shard's units are the trace records in file order.
"""
from __future__ import annotations

from collections import Counter
from functools import partial
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from compass.data.shards import DataStageConfig, ShardRun, concat_files, in_shard, ordered_map, sum_metrics
from compass.errors import CompassError
from compass.io import count_jsonl_records, iter_jsonl_lines, parse_jsonl_line
from compass.records import Trace
from compass.stagekit import RecordSink, StageContext, check_reject_rate
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


class Config(DataStageConfig):
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


BATCH = 256  # records per worker task: large enough to amortise the pickling, small enough to stream


def pair_of_line(item: tuple, weights: dict[str, float], config: Config):
    """One input line -> its PairOutcome (in a worker process or this one)."""
    from compass.data.pairs import make_pair

    file, lineno, line = item
    trace = parse_jsonl_line(line, Trace, file, lineno)
    return make_pair(trace, seed=config.seed, weights=weights, require_tags=config.require_tags,
                     require_verified=config.require_verified)


def run(config: Config, ctx: StageContext) -> dict:
    inputs, out_dir = ctx.inputs, ctx.out_dir
    from tqdm import tqdm

    from compass.data.pairs import normalized_weights
    from compass.data.preference import write_preference_share

    weights = normalized_weights(config.weights.model_dump())
    shard = config.shard_spec()
    lines = iter_jsonl_lines(inputs["traces"])
    if shard is not None:
        lines = in_shard(lines, count_jsonl_records(inputs["traces"]), shard)
    outcomes = ordered_map(partial(pair_of_line, weights=weights, config=config), lines, config.worker_count(), batch=BATCH)
    applied: Counter[str] = Counter()
    fallbacks: Counter[str] = Counter()
    n = 0
    with RecordSink("pairs", out_dir, OUTPUTS["pairs"], OUTPUTS["rejects"]) as sink:
        for outcome in tqdm(outcomes, desc="pairs", unit="rec", mininterval=2.0):
            n += 1
            if outcome.pair is not None:
                sink.record(outcome.pair)
                applied[outcome.pair.strategy] += 1
                if outcome.drawn != outcome.pair.strategy:
                    fallbacks[f"{outcome.drawn}->{outcome.pair.strategy}"] += 1
            else:
                sink.reject(outcome.reject)
        metrics = {"traces": n, "pairs": sink.kept, "rejects": sink.rejected, "reject_reasons": sink.sorted_reasons(),
                   "strategies": {name: applied[name] for name in weights}, "fallbacks": dict(sorted(fallbacks.items()))}
        if shard is None:  # a shard's share is checked with the others' at gather
            check_rates(config, metrics, inputs["traces"], sink)
        if "preference" in inputs and shard is not None:
            raise CompassError("pairs: the `preference` input mixes into an unsharded run only (its share is of all pairs)")
        # real preference pairs after the corruption pairs (DPO shuffles); each names its dataset row in source_id
        preference = write_preference_share(sink.records_file, inputs.get("preference"), metrics["pairs"], config.preference_ratio,
                                            config.seed)
    return {**with_shares(metrics), **preference}


def check_rates(config: Config, metrics: dict, source, sink: RecordSink | None = None) -> None:
    """The reject-rate gate over a run (its sink's counts) or a gather (the shards' summed metrics)."""
    n, n_rejects = metrics["traces"], metrics["rejects"]
    if n == 0:
        raise CompassError(f"pairs: no Trace records in {source}")
    if sink is not None:
        sink.check(config.max_reject_rate, what="records", total=n)
    else:
        check_reject_rate("pairs", n_rejects, n, config.max_reject_rate, what="records", reasons=metrics["reject_reasons"])


def with_shares(metrics: dict) -> dict:
    """The metrics in their published order, with each strategy's share of the pairs."""
    n_pairs = metrics["pairs"]
    strategies = metrics["strategies"]
    return {
        "traces": metrics["traces"],
        "pairs": n_pairs,
        "rejects": metrics["rejects"],
        "reject_reasons": metrics["reject_reasons"],
        "strategies": strategies,
        "strategy_share": {name: round(count / n_pairs, 4) if n_pairs else 0.0 for name, count in strategies.items()},
        "fallbacks": metrics["fallbacks"],
    }


def gather(config: Config, shards: list[ShardRun], out_dir: Path) -> dict:
    """The shards' pairs and rejects in shard order: the unsharded files; rates checked over the whole."""
    metrics = sum_metrics([s.metrics for s in shards], ["traces", "pairs", "rejects", "reject_reasons", "strategies", "fallbacks"])
    metrics["reject_reasons"] = dict(sorted(metrics["reject_reasons"].items()))
    metrics["fallbacks"] = dict(sorted(metrics["fallbacks"].items()))
    check_rates(config, metrics, [str(s.out_dir) for s in shards])  # before anything is written
    for name in ("pairs", "rejects"):
        concat_files([s.out_dir / OUTPUTS[name] for s in shards], out_dir / OUTPUTS[name])
    return with_shares(metrics)
