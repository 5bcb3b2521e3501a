"""Mix SFT datasets (hub ids or local files, any supported format) into one decontaminated messages file.

Each dataset of any format of compass.data.sft_formats is converted into one messages file, mixed with weights,
with the rows that overlap the evaluation sets dropped.

Each dataset entry is read, converted (format detected or given), weighted (1 = every row once, 0.5 = a seeded
half, 2 = twice) and decontaminated: an example whose user turns overlap an evaluation problem's question by
word n-grams (compass.data.decontam, the `decontaminate` stage's test) is dropped and listed in dropped.jsonl.
examples.jsonl holds TRL conversational rows {id, messages, images} that `compass sft --data` reads; images are
copied under images/ by content hash. The metrics name every dataset's hub id and resolved revision, or its local
files' sha256, beside the row counts; the ledger keeps the output's hashes.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from pydantic import Field, model_validator

from compass.config import StageConfig
from compass.data.decontam import DEFAULT_NGRAM, DEFAULT_THRESHOLD
from compass.data.sft_formats import DataSource
from compass.errors import CompassError
from compass.stagekit import RecordSink, StageContext
from compass.stages import Port

VERSION = 1  # code version of what this stage writes: bump when the same config and inputs would give other bytes

EXAMPLE = ("compass sft-sources --out work/sft_data --eval work/eval_problems/problems.jsonl "
           "--datasets '[{hub_id: teknium/OpenHermes-2.5, weight: 0.05}, {path: mine.jsonl, format: alpaca}]' --data .")


class Config(StageConfig):
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
    kept, dropped = decontaminate_texts(
        [(e.id, label, user_text(e.messages)) for e, label in zip(examples, labels, strict=True)], inputs.get("eval"),
        ngram=config.ngram, threshold=config.threshold, max_drop_rate=config.max_drop_rate, what="sft-sources")
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
