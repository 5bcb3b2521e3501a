"""Collect real preference data (hub ids or local files) into Pair records, mixed with weights, decontaminated.

Formats of compass.data.preference: TRL prompt/chosen/rejected (plain or conversational, e.g.
HuggingFaceH4/ultrafeedback_binarized, argilla/OpenHermesPreferences), implicit-prompt / Anthropic HH-RLHF rows
(split at the common prefix), openbmb/UltraFeedback rows (best vs worst completion by rating; ties dropped and
counted). A pair whose prompt overlaps an evaluation problem (compass.data.decontam n-grams) is dropped and listed in
dropped.jsonl. pairs.jsonl feeds `compass dpo --pairs` directly or `compass pairs --preference` (mixed with the
corruption pairs at a ratio). Metrics name every dataset's hub id and resolved revision or its files' sha256.

`shard: I/N`: every shard loads the whole mix (the same seeded draw) and decontaminates its contiguous part of the
pairs; the gather joins pairs and drop reports in shard order and checks the drop rate over the whole.
"""
from __future__ import annotations

import json
from pathlib import Path

from pydantic import Field, model_validator

from compass.data.shards import ShardedStageConfig, ShardRun, concat_files, sum_metrics
from compass.data.decontam import DEFAULT_NGRAM, DEFAULT_THRESHOLD
from compass.data.preference import DEFAULT_RATING_KEY
from compass.data.sft_formats import DataSource
from compass.stagekit import RecordSink, StageContext
from compass.stages import Port

VERSION = 1  # code version of what this stage writes: bump when the same config and inputs would give other bytes

EXAMPLE = ("compass preference-sources --out work/prefs --eval work/eval_problems/problems.jsonl "
           "--datasets '[{hub_id: HuggingFaceH4/ultrafeedback_binarized, split: train_prefs, weight: 0.1}]'")


class Config(ShardedStageConfig):
    datasets: list[DataSource] = Field(description="datasets to mix: {hub_id or path, split, revision, format, weight, limit, name}; "
                                                   "format: auto, pair, preference, implicit or ultrafeedback")
    rating_key: str = Field(DEFAULT_RATING_KEY, description="UltraFeedback rows: the completion field to rank by "
                                                            "(overall_score or fine-grained_score)")
    ngram: int = Field(DEFAULT_NGRAM, ge=1, description="decontamination n-gram length")
    threshold: float = Field(DEFAULT_THRESHOLD, gt=0, le=1, description="drop when this share of the shorter text's n-grams is in an eval item")
    max_drop_rate: float = Field(0.5, ge=0, le=1, description="fail (writing nothing) when more than this share of pairs is dropped")

    @model_validator(mode="after")
    def _some(self):
        if not self.datasets:
            raise ValueError("give at least one dataset")
        formats = {"auto", "pair", "preference", "implicit", "ultrafeedback"}
        bad = [d.format for d in self.datasets if d.format not in formats]
        if bad:
            raise ValueError(f"preference formats are {sorted(formats)}, got {bad}")
        return self


INPUTS = {
    "data": Port("directory that relative dataset `path` entries are read from (hashed with the run)", required=False),
    "eval": Port("Problem records of the evaluation sets to decontaminate against", required=False),
}
OUTPUTS = {"pairs": "pairs.jsonl", "report": "dropped.jsonl"}


def hub_inputs(config: Config) -> list:
    """The hub datasets this config reads, for the cache key (a moved branch is a cache miss)."""
    from compass.data.sft_formats import hub_refs

    return hub_refs(config.datasets)

def run(config: Config, ctx: StageContext) -> dict:
    inputs, out_dir = ctx.inputs, ctx.out_dir
    from compass.data.preference import preference_converter
    from compass.data.sft_formats import load_mix
    from compass.data.text_decontam import decontaminate_texts, labels_by_source

    pairs, reports = load_mix(config.datasets, inputs.get("data"), config.seed, None, preference_converter(config.rating_key))
    labels = labels_by_source(reports)
    shard = config.shard_spec()
    if shard is not None:  # this shard's contiguous part; the drop rate is checked over the whole at gather
        start, stop = shard.bounds(len(pairs))
        pairs, labels = pairs[start:stop], labels[start:stop]
    kept, dropped = decontaminate_texts(
        [(p.id, label, "\n".join(m.content for m in p.prompt if m.role == "user")) for p, label in zip(pairs, labels, strict=True)],
        inputs.get("eval"), ngram=config.ngram, threshold=config.threshold,
        max_drop_rate=None if shard else config.max_drop_rate, what="preference-sources")
    per_source = {label: 0 for label in reports}
    with RecordSink("preference-sources", out_dir, OUTPUTS["pairs"], OUTPUTS["report"]) as sink:  # the drop report
        for pair, label in zip(pairs, labels, strict=True):
            if pair.id in kept:
                sink.record(pair)
                per_source[label] += 1
        for row in dropped:
            sink.reject(row, reason=row["source"])
    return {"pairs": sink.kept, "per_source": per_source, "sources": reports, "decontaminated": sink.rejected,
            "decontaminated_by_source": {label: sink.count(label) for label in reports}}


def gather(config: Config, shards: list[ShardRun], out_dir: Path) -> dict:
    """The shards' pairs and drop reports in shard order (the unsharded files); the drop rate over the whole."""
    from compass.data.text_decontam import check_drop_rate
    from compass.io import iter_jsonl_lines

    dropped = [json.loads(line) for s in shards for _, _, line in iter_jsonl_lines(s.out_dir / OUTPUTS["report"])]
    counts = sum_metrics([s.metrics for s in shards], ["pairs", "per_source", "decontaminated", "decontaminated_by_source"])
    check_drop_rate("preference-sources", counts["pairs"] + counts["decontaminated"], dropped, config.max_drop_rate)
    for name in ("pairs", "report"):
        concat_files([s.out_dir / OUTPUTS[name] for s in shards], out_dir / OUTPUTS[name])
    return {"pairs": counts["pairs"], "per_source": counts["per_source"], "sources": shards[0].metrics["sources"],
            "decontaminated": counts["decontaminated"], "decontaminated_by_source": counts["decontaminated_by_source"]}
