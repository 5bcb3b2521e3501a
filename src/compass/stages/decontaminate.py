"""Drop training problems that overlap the evaluation sets, with a report of each drop and its matching eval item.

A problem is dropped when it shares a link key with an evaluation item (meta `gsm8k_test_index`: MGSM-ja test
items are translations of GSM8K test items, the contamination no text overlap can see) or when its normalised
word n-grams (each CJK character a token) overlap an evaluation item's by at least `threshold` (share of the
shorter text's n-grams). dropped.jsonl names the dropped id, the eval id, the method and the score.
`workers` processes each build the evaluation index once and match batches of problems (output in input
order, the same bytes for any count); a shard's units are the training problems in file order.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path

from pydantic import Field

from compass.data.decontam import DEFAULT_LINK_KEYS, DEFAULT_NGRAM, DEFAULT_THRESHOLD
from compass.data.shards import DataStageConfig, ShardRun, concat_files, in_shard, ordered_map, sum_metrics
from compass.errors import CompassError
from compass.io import count_jsonl_records, iter_jsonl, iter_jsonl_lines, parse_jsonl_line
from compass.records import Problem
from compass.stagekit import RecordSink, StageContext
from compass.stages import Port

VERSION = 1  # code version of what this stage writes: bump when the same config and inputs would give other bytes
EXAMPLE = "compass decontaminate --problems sources/problems.jsonl --eval eval_sources/problems.jsonl --out decontam/ --ngram 5 --threshold 0.5"


class Config(DataStageConfig):
    ngram: int = Field(DEFAULT_NGRAM, ge=1, description="n-gram length in tokens (words, numbers, single CJK characters)")
    threshold: float = Field(DEFAULT_THRESHOLD, gt=0, le=1, description="drop when this share of the shorter text's n-grams is in the other")
    link_keys: list[str] = Field(list(DEFAULT_LINK_KEYS), description="meta keys naming the same item across sources (e.g. MGSM <-> GSM8K test)")
    max_drop_rate: float = Field(0.5, ge=0, le=1, description="fail (writing nothing) when more than this share of problems is dropped")


INPUTS = {
    "problems": Port("training Problem records (JSONL file or directory of shards)"),
    "eval": Port("Problem records of the evaluation sets (JSONL file or directory of shards)"),
}
OUTPUTS = {"problems": "problems.jsonl", "report": "dropped.jsonl"}


BATCH = 128  # problems per worker task

_INDEX = None  # the evaluation index of this (worker) process, built once by load_index


def load_index(eval_path: str, config: Config) -> None:
    global _INDEX
    from compass.data.decontam import EvalIndex

    eval_problems = list(iter_jsonl(eval_path, Problem))
    _INDEX = EvalIndex(eval_problems, n=config.ngram, link_keys=config.link_keys)


def match_line(item: tuple, threshold: float):
    """One training line -> (problem, best match or None, match count), against this process's index."""
    file, lineno, line = item
    problem = parse_jsonl_line(line, Problem, file, lineno)
    match, count = _INDEX.best_match(problem, threshold)
    return problem, match, count


def run(config: Config, ctx: StageContext) -> dict:
    inputs, out_dir = ctx.inputs, ctx.out_dir
    shard = config.shard_spec()
    n_eval = count_jsonl_records(inputs["eval"])
    lines = iter_jsonl_lines(inputs["problems"])
    if shard is not None:
        lines = in_shard(lines, count_jsonl_records(inputs["problems"]), shard)
    results = ordered_map(partial(match_line, threshold=config.threshold), lines, config.worker_count(), batch=BATCH,
                          initializer=load_index, initargs=(str(inputs["eval"]), config))
    by_source: dict[str, int] = {}
    examples: list[str] = []
    # the kept problems and the drop report (one row per dropped problem, counted by match method)
    with RecordSink("decontaminate", out_dir, OUTPUTS["problems"], OUTPUTS["report"]) as sink:
        for problem, m, count in results:
            if m is None:
                sink.record(problem)
                continue
            sink.reject({"id": problem.id, "source": problem.source, "question": problem.question, "eval_id": m.eval_id,
                         "eval_source": m.eval_source, "method": m.method, "score": m.score, "eval_matches": count},
                        reason=m.method)
            by_source[problem.source] = by_source.get(problem.source, 0) + 1
            if len(examples) < 3:
                examples.append(f"{problem.id} ~ {m.eval_id} ({m.method}, {m.score})")
        metrics = {"problems_in": sink.kept + sink.rejected, "eval_items": n_eval, "kept": sink.kept,
                   "dropped": sink.rejected, "dropped_by_method": sink.sorted_reasons(),
                   "dropped_by_source": dict(sorted(by_source.items()))}
        if shard is None:  # a shard's share is checked with the others' at gather
            check_drop_rate(config, metrics, inputs["problems"], "; ".join(examples))
    return with_rate(metrics)


def check_drop_rate(config: Config, metrics: dict, source, examples: str) -> None:
    if metrics["problems_in"] == 0:
        raise CompassError(f"decontaminate: no Problem records in {source}")
    rate = metrics["dropped"] / metrics["problems_in"]
    if rate > config.max_drop_rate:
        raise CompassError(
            f"decontaminate: {metrics['dropped']} of {metrics['problems_in']} problems ({rate:.0%}) overlap the evaluation "
            f"sets, more than max_drop_rate {config.max_drop_rate:.0%} (is the eval set drawn from the training data?): {examples}"
        )


def with_rate(metrics: dict) -> dict:
    """The metrics in their published order, with the drop rate."""
    rate = metrics["dropped"] / metrics["problems_in"] if metrics["problems_in"] else 0.0
    return {
        "problems_in": metrics["problems_in"],
        "eval_items": metrics["eval_items"],
        "kept": metrics["kept"],
        "dropped": metrics["dropped"],
        "drop_rate": round(rate, 6),
        "dropped_by_method": metrics["dropped_by_method"],
        "dropped_by_source": metrics["dropped_by_source"],
    }


def gather(config: Config, shards: list[ShardRun], out_dir: Path) -> dict:
    """The shards' kept problems and drop reports in shard order: the unsharded files; the rate over the whole."""
    metrics = sum_metrics([s.metrics for s in shards], ["problems_in", "kept", "dropped", "dropped_by_method", "dropped_by_source"])
    metrics["eval_items"] = shards[0].metrics["eval_items"]  # every shard matched against the whole evaluation set
    for key in ("dropped_by_method", "dropped_by_source"):
        metrics[key] = dict(sorted(metrics[key].items()))
    examples = "; ".join(f"{row['id']} ~ {row['eval_id']} ({row['method']}, {row['score']})"
                         for s in shards for row in iter_jsonl(s.out_dir / OUTPUTS["report"]))
    check_drop_rate(config, metrics, [str(s.out_dir) for s in shards], examples[:500])  # before anything is written
    for name in ("problems", "report"):
        concat_files([s.out_dir / OUTPUTS[name] for s in shards], out_dir / OUTPUTS[name])
    return with_rate(metrics)
