"""Mix SFT datasets (hub ids or local files, any supported format) into one decontaminated messages file.

Each dataset of any format of compass.data.sft_formats is converted into one messages file, mixed with weights,
with the rows that overlap the evaluation sets dropped.

Each dataset entry is read, converted (format detected or given), weighted (1 = every row once, 0.5 = a seeded
half, 2 = twice) and decontaminated: an example whose user turns overlap an evaluation problem's question by
word n-grams (compass.data.decontam, the `decontaminate` stage's test) is dropped and listed in dropped.jsonl.
examples.jsonl holds TRL conversational rows {id, messages, images} that `compass sft --data` reads; images are
copied under images/ by content hash. The metrics name every dataset's hub id and resolved revision, or its local
files' sha256, beside the row counts; the ledger keeps the output's hashes.

`shard: I/N`: every shard loads the whole mix (the same seeded draw) and decontaminates its contiguous part of the
examples; the gather joins examples and drop reports in shard order and checks the drop rate over the whole.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from pydantic import Field, model_validator

from compass.data.shards import ShardedStageConfig, ShardRun, concat_files, merge_trees, sum_metrics
from compass.data.decontam import DEFAULT_NGRAM, DEFAULT_THRESHOLD
from compass.data.sft_formats import DataSource
from compass.errors import CompassError
from compass.stagekit import RecordSink, StageContext
from compass.stages import Port

VERSION = 1  # code version of what this stage writes: bump when the same config and inputs would give other bytes

EXAMPLE = ("compass sft-sources --out work/sft_data --eval work/eval_problems/problems.jsonl "
           "--datasets '[{hub_id: teknium/OpenHermes-2.5, weight: 0.05}, {path: mine.jsonl, format: alpaca}]' --data .")


class Config(ShardedStageConfig):
    datasets: list[DataSource] = Field(description="datasets to mix: {hub_id or path, split, revision, format, weight, limit, name}")
    ngram: int = Field(DEFAULT_NGRAM, ge=1, description="decontamination n-gram length (words, numbers, single CJK characters)")
    threshold: float = Field(DEFAULT_THRESHOLD, gt=0, le=1, description="drop when this share of the shorter text's n-grams is in an eval item")
    max_drop_rate: float = Field(0.5, ge=0, le=1, description="fail (writing nothing) when more than this share of examples is dropped")

    @model_validator(mode="after")
    def _some(self):
        if not self.datasets:
            raise ValueError("give at least one dataset")
        return self


INPUTS = {
    "data": Port("directory that relative dataset `path` entries are read from (hashed with the run)", required=False),
    "eval": Port("Problem records of the evaluation sets to decontaminate against", required=False),
}
OUTPUTS = {"examples": "examples.jsonl", "images": "images", "report": "dropped.jsonl"}


def user_text(messages: list[dict]) -> str:
    return "\n".join(m["content"] for m in messages if m["role"] == "user")


def hub_inputs(config: Config) -> list:
    """The hub datasets this config reads, for the cache key (a moved branch is a cache miss)."""
    from compass.data.sft_formats import hub_refs

    return hub_refs(config.datasets)

def run(config: Config, ctx: StageContext) -> dict:
    inputs, out_dir = ctx.inputs, ctx.out_dir
    from compass.data.sft_formats import load_mix
    from compass.data.text_decontam import decontaminate_texts, labels_by_source
    from compass.io import sha256_file

    image_dir = out_dir / OUTPUTS["images"]
    examples, reports = load_mix(config.datasets, inputs.get("data"), config.seed, image_dir)
    labels = labels_by_source(reports)
    shard = config.shard_spec()
    if shard is not None:  # this shard's contiguous part; the drop rate is checked over the whole at gather
        start, stop = shard.bounds(len(examples))
        examples, labels = examples[start:stop], labels[start:stop]
    kept, dropped = decontaminate_texts(
        [(e.id, label, user_text(e.messages)) for e, label in zip(examples, labels, strict=True)], inputs.get("eval"),
        ngram=config.ngram, threshold=config.threshold, max_drop_rate=None if shard else config.max_drop_rate,
        what="sft-sources")
    rows = []
    per_source = {label: 0 for label in reports}
    for example, label in zip(examples, labels, strict=True):
        if example.id not in kept:
            continue
        images = []
        for image in example.images:
            if image.parent != image_dir:  # a local file: copied in by content hash, so the output stands alone
                target = image_dir / f"{sha256_file(image)}{image.suffix}"
                if not target.is_file():
                    image_dir.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(image, target)
                image = target
            images.append(image.relative_to(out_dir).as_posix())
        rows.append({"id": example.id, "messages": example.messages, **({"images": images} if images else {})})
        per_source[label] += 1
    with RecordSink("sft-sources", out_dir, OUTPUTS["examples"], OUTPUTS["report"]) as sink:  # the drop report
        for row in rows:
            sink.record(row)
        for row in dropped:
            sink.reject(row, reason=row["source"])
    return {"examples": sink.kept, "per_source": per_source, "sources": reports, "decontaminated": sink.rejected,
            "decontaminated_by_source": {label: sink.count(label) for label in reports}}


def gather(config: Config, shards: list[ShardRun], out_dir: Path) -> dict:
    """The shards' examples and drop reports in shard order (the unsharded files), their images side by side
    (named by content: a page two shards copied is one file); the drop rate over the whole."""
    from compass.data.text_decontam import check_drop_rate
    from compass.io import iter_jsonl_lines

    dropped = [json.loads(line) for s in shards for _, _, line in iter_jsonl_lines(s.out_dir / OUTPUTS["report"])]
    counts = sum_metrics([s.metrics for s in shards], ["examples", "per_source", "decontaminated", "decontaminated_by_source"])
    check_drop_rate("sft-sources", counts["examples"] + counts["decontaminated"], dropped, config.max_drop_rate)
    for name in ("examples", "report"):
        concat_files([s.out_dir / OUTPUTS[name] for s in shards], out_dir / OUTPUTS[name])
    merge_trees([s.out_dir / OUTPUTS["images"] for s in shards], out_dir / OUTPUTS["images"], same_bytes_ok=True)
    return {"examples": counts["examples"], "per_source": counts["per_source"], "sources": shards[0].metrics["sources"],
            "decontaminated": counts["decontaminated"], "decontaminated_by_source": counts["decontaminated_by_source"]}
