"""Top-K evidence traces and <cot> SFT examples for long documents (docs/method.md B.2-B.4).

For each question: pages scoring above `threshold` are sorted high to low and cut to `top_k`; the trace is
their "Page i:" + evidence blocks (a question with no relevant page is dropped, into rejects.jsonl). The
answer comes from one of two exclusive branches, drawn per question with `vision_share`: vision (a VLM gets
the top-K page images and the question, no system prompt) or text (an LLM gets the sorted evidence, the
question and a system prompt saying the evidence was gathered page by page, top K only). Answerers:
`openai` (two OpenAI-compatible endpoints, e.g. vLLM serving a VLM and an LLM) or `reference`, the offline
answerer: it returns the question's recorded answer (the planted fact of a generated PDF, or a dataset's
reference answer) and calls no model, so both branches then give that same answer.

Each DocExample: user turn = every page image of the document (or `max_images` of them, the trace's pages
always among them) with its "Page N:" label, then the
question; assistant = <think> trace </think> answer. The <cot> token goes in the system message, before
or after the user text, or nowhere (then no trace either), with the configured shares, seeded per
question. Image paths are relative to the output directory, as `compass sft` resolves them.
"""
from __future__ import annotations

import heapq
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from compass.data.shards import DataStageConfig, ShardRun, concat_files, ordered_map, sum_metrics
from compass.errors import CompassError
from compass.generate.config import OpenAISettings
from compass.io import count_jsonl_records, dumps_record, iter_jsonl
from compass.longdoc.pageindex import PageIndex
from compass.records import DocExample, DocQuestion, PageEvidence, Reject
from compass.stagekit import RecordSink, StageContext, check_reject_rate
from compass.stages import Port
from compass.vocab import strip_leading_think

VERSION = 1  # code version of what this stage writes: bump when the same config and inputs would give other bytes
EXAMPLE = ("compass doc-traces --evidence work/evidence/evidence.jsonl --questions work/pdfs/questions.jsonl "
           "--pages work/pages/pages.jsonl --out work/doc-traces --top-k 24 --seed 42")

DEFAULT_PLACEMENT = {"system": 0.45, "user_prepend": 0.25, "user_append": 0.25, "none": 0.05}


TRANSIENT = frozenset({"backend_error"})  # an answer the server failed to give: asked again by the next run


class Config(DataStageConfig):
    threshold: float = Field(1.0, ge=0, le=10, description="keep pages whose relevance_score is above this")
    top_k: int = Field(24, ge=1, description="most pages in a trace (and images sent to the vision branch)")
    vision_share: float = Field(0.5, ge=0, le=1, description="share of questions answered by the vision branch; "
                                "the rest by the text branch")
    cot_placement: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_PLACEMENT),
                                            description="shares of <cot> placements: system, user_prepend, user_append, "
                                            "none (none: no token and no trace)")
    max_images: int | None = Field(None, ge=1, description="most page images in one example (None: every page, as "
                                   "the recipe); when capped, the trace's pages plus the first pages up to the cap")
    no_cot_extra_fraction: float = Field(0.0, ge=0, le=1, description="share of questions that also get a second "
                                         "example without <cot> and without a trace (beyond the recipe)")
    answerer: Literal["reference", "openai"] = Field("reference", description="reference (the question's recorded "
                                                     "answer, no model) or openai (vision_openai / text_openai endpoints)")
    vision_openai: OpenAISettings = Field(default_factory=OpenAISettings, description="openai answerer: the VLM endpoint")
    text_openai: OpenAISettings = Field(default_factory=OpenAISettings, description="openai answerer: the LLM endpoint")
    max_tokens: int = Field(1024, ge=1, description="answer token limit")
    temperature: float = Field(0.0, ge=0, description="answer sampling temperature")
    answer_retries: int = Field(1, ge=0, description="times a question is asked again after an empty answer")
    retry_temperature: float = Field(0.7, ge=0, description="temperature of those re-asks")
    max_reject_rate: float = Field(0.1, ge=0, le=1, description="fail when more than this share of kept questions "
                                   "gets no answer (server errors, empty answers)")

    @model_validator(mode="after")
    def _images_fit_trace(self):
        if self.max_images is not None and self.max_images < self.top_k:
            raise ValueError(f"max_images {self.max_images} < top_k {self.top_k}: every trace page must be shown")
        return self

    @field_validator("cot_placement")
    @classmethod
    def _placement(cls, value: dict[str, float]) -> dict[str, float]:
        from compass.longdoc.traces import check_weights

        try:
            return check_weights(value)
        except CompassError as err:
            raise ValueError(str(err)) from None


INPUTS = {
    "evidence": Port("PageEvidence records in question order (evidence.jsonl of `compass evidence`)"),
    "questions": Port("DocQuestion records (questions.jsonl), in the order the evidence was made"),
    "pages": Port("Page records (pages.jsonl of `compass pages`; its images are referenced, not copied)"),
}
OUTPUTS = {"examples": "examples.jsonl", "rejects": "rejects.jsonl"}


@dataclass
class Item:
    position: int  # among kept questions
    question: DocQuestion
    selected: list[PageEvidence]
    branch: Literal["vision", "text"]
    placement: str


def grouped_evidence(path: Path) -> Iterator[tuple[str, list[PageEvidence]]]:
    """(question id, its evidence) in file order; a question's records must be contiguous."""
    seen: set[str] = set()  # ids only, for the contiguity check
    current: str | None = None
    group: list[PageEvidence] = []
    for record in iter_jsonl(path, PageEvidence):
        if record.question_id != current:
            if current is not None:
                yield current, group
            if record.question_id in seen:
                raise CompassError(f"{path}: evidence of question {record.question_id!r} is not contiguous "
                                   "(records must be grouped by question, as `compass evidence` writes them)")
            seen.add(record.question_id)
            current, group = record.question_id, []
        group.append(record)
    if current is not None:
        yield current, group


def kept_items(config: Config, questions: Path, evidence: Path, drops: list[Reject] | None) -> Iterator[Item]:
    """Questions joined with their evidence (both streamed in the same order); those with no relevant page
    are dropped (and recorded in `drops` when given)."""
    from compass.longdoc.traces import draw_branch, draw_placement, select_pages

    groups = grouped_evidence(evidence)
    pending = next(groups, None)
    position = 0
    shard = config.shard_spec()
    n_questions = count_jsonl_records(questions) if shard is not None else 0
    for index, question in enumerate(iter_jsonl(questions, DocQuestion)):
        group = None
        if pending is not None and pending[0] == question.id:
            group = pending[1]
            pending = next(groups, None)
        if shard is not None and not shard.contains(index, n_questions):
            continue  # another shard's question (its evidence is passed over in step)
        if group is None:
            if drops is not None:
                drops.append(Reject(id=question.id, reason="no_evidence", detail="no evidence records (rejected upstream)"))
            continue
        selected = select_pages(group, config.threshold, config.top_k)
        if not selected:
            if drops is not None:
                best = max((e.relevance_score for e in group), default=0.0)
                drops.append(Reject(id=question.id, reason="no_relevant_page",
                                    detail=f"no page scores above {config.threshold} (best {best})"))
            continue
        yield Item(position, question, selected, draw_branch(config.seed, question.id, config.vision_share),
                   draw_placement(config.seed, question.id, config.cot_placement))
        position += 1
    if pending is not None:
        raise CompassError(f"{evidence}: evidence for question {pending[0]!r}, which is not in {questions} "
                           "(or the two files are in different orders)")


# --- answers ---------------------------------------------------------------------------------------------


class EmptyAnswer(ValueError):
    """The answerer returned nothing usable (asked again, then rejected)."""


def reference_answers(items: Iterator[Item]) -> Iterator[tuple[str, dict]]:
    for item in items:
        yield "ok", {"p": item.position, "a": item.question.answer}


def openai_answers(config: Config, items_factory, images: DocImages, images_root: Path, out_dir: Path,
                   resume_key: str) -> Iterator[tuple[str, dict]]:
    """One streaming pass per branch through its endpoint (in position order, journalled for resume), the
    two merged: ("ok", {p, a}) or ("reject", {p, reason, detail}) for every kept question."""
    from compass.generate import GenRequest
    from compass.generate.config import TransformersSettings, make_backend
    from compass.longdoc.evidence import image_data_url
    from compass.longdoc.streaming import stream_in_order
    from compass.longdoc.traces import text_answer_messages, vision_answer_messages

    def request_of(item: Item, attempt: int) -> GenRequest:
        if item.branch == "vision":  # the selected pages' images, read when the pool asks for the request
            paths = images(item.question.doc_id)
            urls = [image_data_url(images_root / paths[e.page_index]) for e in item.selected]
            messages = vision_answer_messages(item.question, item.selected, urls)
        else:
            messages = text_answer_messages(item.question, item.selected, config.top_k)
        return GenRequest(id="", messages=messages, max_tokens=config.max_tokens,
                          temperature=config.temperature if attempt == 0 else config.retry_temperature,
                          seed=config.seed + attempt)

    def parse(item: Item, text: str) -> dict:
        answer = strip_think(text)
        if not answer:
            raise EmptyAnswer(f"empty answer: {text[:80]!r}")
        return {"p": item.position, "a": answer}

    def reject(item: Item, reason: str, detail: str) -> dict:
        return {"p": item.position, "reason": reason, "detail": detail}

    streams = [
        stream_in_order(
            make_backend("openai", settings, TransformersSettings()),
            lambda branch=branch: of_branch(items_factory(), branch), request_of, parse,
            malformed=EmptyAnswer, retries=config.answer_retries, work_dir=out_dir, tag=f"answers-{branch}",
            resume_key=resume_key, dump=lambda row: row, reject=reject, malformed_reason="empty_answer",
        )
        for branch, settings in (("vision", config.vision_openai), ("text", config.text_openai))
    ]
    yield from heapq.merge(*streams, key=lambda kv: kv[1]["p"])


def of_branch(items: Iterator[Item], branch: str) -> Iterator[Item]:
    return (item for item in items if item.branch == branch)


class DocImages:
    """Image paths (relative to the pages.jsonl directory) of one document's pages; one document cached."""

    def __init__(self, index: PageIndex, source: Path):
        self.index, self.source = index, source
        self.cached: tuple[str, list[str]] | None = None

    def __call__(self, doc_id: str) -> list[str]:
        if self.cached is None or self.cached[0] != doc_id:
            if doc_id not in self.index:
                raise CompassError(f"{self.source}: no pages for document {doc_id!r} named in the evidence")
            self.cached = (doc_id, [p.image for p in self.index.pages(doc_id)])
        return self.cached[1]


def strip_think(text: str) -> str:
    """Drop a reasoning model's leading <think>...</think>: the answer is what follows."""
    return strip_leading_think(text)


# --- the stage -------------------------------------------------------------------------------------------


BATCH = 32  # questions per worker task


def build_examples(task: tuple, config: Config) -> tuple:
    """A reject passes through; a (question, answer, its document's images) job becomes its example lines
    (the <cot> variant and, when drawn, the no-<cot> copy), with their placements. In any process."""
    from compass.longdoc.traces import build_trace, example_messages, shown_pages, unit_draw

    kind, value = task
    if kind == "reject":
        return task
    item, answer, all_images, rel_root = value
    question = item.question
    shown = shown_pages(len(all_images), item.selected, config.max_images)
    images = [(Path(rel_root) / all_images[p]).as_posix() for p in shown]
    trace = build_trace(item.selected)
    variants = [(question.id, item.placement)]
    if item.placement != "none" and unit_draw(config.seed, "no_cot_extra", question.id) < config.no_cot_extra_fraction:
        variants.append((f"{question.id}#nocot", "none"))
    lines = []
    for example_id, placement in variants:
        example = DocExample(
            id=example_id, question_id=question.id, doc_id=question.doc_id, images=images,
            messages=example_messages(question.question, shown, placement, None if placement == "none" else trace, answer),
            cot_placement=placement, branch=item.branch, has_trace=placement != "none",
        )
        lines.append((dumps_record(example) + "\n", placement))
    return "examples", lines


def run(config: Config, ctx: StageContext) -> dict:
    inputs, out_dir = ctx.inputs, ctx.out_dir
    from compass.longdoc.streaming import journal_path

    index = PageIndex(inputs["pages"])
    images_root = inputs["pages"].parent
    rel_root = Path(os.path.relpath(images_root, out_dir))  # examples point at the pages stage's images

    def items() -> Iterator[Item]:
        return kept_items(config, inputs["questions"], inputs["evidence"], None)

    if config.answerer == "reference":
        answers = reference_answers(items())
    else:
        answers = openai_answers(config, items, DocImages(index, inputs["pages"]), images_root, out_dir, ctx.resume_key)
    doc_images = DocImages(index, inputs["pages"])

    drops: list[Reject] = []
    counts: Counter[str] = Counter()
    totals = {"trace_pages": 0, "gold_total": 0, "gold_found": 0}

    def tasks() -> Iterator[tuple]:
        """In output order: ("reject", Reject) to write as is, or ("example", job) for the workers to build."""
        for item in kept_items(config, inputs["questions"], inputs["evidence"], drops):
            for drop in drops:
                yield "reject", drop
            drops.clear()
            question = item.question
            kind, value = next(answers, ("missing", {"p": None}))
            if value["p"] != item.position:
                raise CompassError(f"doc-traces: no answer for question {question.id!r} (position {item.position})")
            if kind == "reject":
                yield "reject", Reject(id=question.id, reason=value["reason"], detail=value["detail"])
                continue
            answer = value["a"].strip()
            if not answer:
                yield "reject", Reject(id=question.id, reason="empty_answer", detail="the answer is empty")
                continue
            counts[f"branch_{item.branch}"] += 1
            counts["questions"] += 1
            totals["trace_pages"] += len(item.selected)
            gold = set(question.gold_pages)
            totals["gold_total"] += len(gold)
            totals["gold_found"] += len(gold & {e.page_index for e in item.selected})
            yield "example", (item, answer, doc_images(question.doc_id), rel_root.as_posix())
        for drop in drops:
            yield "reject", drop
        drops.clear()

    built = ordered_map(partial(build_examples, config=config), tasks(), config.worker_count(), batch=BATCH)
    with RecordSink("doc-traces", out_dir, OUTPUTS["examples"], OUTPUTS["rejects"], transient=TRANSIENT) as sink:
        for kind, value in built:
            if kind == "reject":
                sink.reject(value)
                counts[value.reason] += 1
                continue
            for line, placement in value:
                sink.record(line)
                counts[f"placement_{placement}"] += 1
        leftover = next(answers, None)
        if leftover is not None:
            raise CompassError(f"doc-traces: an answer for position {leftover[1]['p']} has no question")
        if config.shard is None:  # a shard's share is checked with the others' at gather
            check_answers(config, counts, out_dir, sink)
    trace_pages, gold_total, gold_found = totals["trace_pages"], totals["gold_total"], totals["gold_found"]
    answered_fail = counts["backend_error"] + counts["empty_answer"]
    for branch in ("vision", "text"):  # outputs are final: the resume journals are done
        journal_path(out_dir, f"answers-{branch}").unlink(missing_ok=True)
    examples = sum(v for k, v in counts.items() if k.startswith("placement_"))
    metrics = {
        "examples": examples, "questions": counts["questions"],
        "dropped_no_relevant_page": counts["no_relevant_page"], "dropped_no_evidence": counts["no_evidence"],
        "answer_rejects": answered_fail,
        "branches": {b: counts[f"branch_{b}"] for b in ("vision", "text")},
        "placements": {p: counts[f"placement_{p}"] for p in DEFAULT_PLACEMENT},
        "mean_trace_pages": round(trace_pages / counts["questions"], 3) if counts["questions"] else 0.0,
        "gold_page_recall": round(gold_found / gold_total, 4) if gold_total else None,
    }
    if config.shard is not None:  # what the gather needs to compute the two means over the whole
        metrics["shard_counts"] = {"trace_pages": trace_pages, "gold_total": gold_total, "gold_found": gold_found,
                                   "backend_error": counts["backend_error"], "empty_answer": counts["empty_answer"]}
    return metrics


def check_answers(config: Config, counts: Counter, out_dir: Path, sink: RecordSink | None = None) -> None:
    """The answer reject-rate gate (drops for want of evidence do not count) of a run, through its sink, or of
    a gather, over the shards' summed counts."""
    answered_fail = counts["backend_error"] + counts["empty_answer"]
    attempted = counts["questions"] + answered_fail
    if attempted == 0:
        raise CompassError(f"doc-traces: no question has a page above threshold {config.threshold}; "
                           f"dropped: {counts['no_relevant_page']} no relevant page, {counts['no_evidence']} no evidence")
    reasons = {"backend_error": counts["backend_error"], "empty_answer": counts["empty_answer"]}
    if sink is not None:
        sink.check(config.max_reject_rate, what="questions", rejected=answered_fail, total=attempted, reasons=reasons)
        return
    check_reject_rate("doc-traces", answered_fail, attempted, config.max_reject_rate, what="questions",
                      reasons=reasons, rejects_path=out_dir / OUTPUTS["rejects"], transient=counts["backend_error"])


def gather(config: Config, shards: list[ShardRun], out_dir: Path) -> dict:
    """The shards' examples and rejects in shard order: the unsharded files; checks and means over the whole.
    Image paths are relative to the output directory, so the shards must have been written beside it."""
    away = [str(s.out_dir) for s in shards if s.out_dir.parent != out_dir.parent]
    if away:
        raise CompassError(f"doc-traces: gather: shard runs {away} are not beside the output {out_dir}: their image "
                           "paths are relative to their own directory; run the shards into siblings of --out")
    total = sum_metrics([s.metrics for s in shards], ["examples", "questions", "dropped_no_relevant_page",
                                                       "dropped_no_evidence", "answer_rejects", "branches", "placements",
                                                       "shard_counts"])
    raw = total["shard_counts"]
    counts = Counter({"questions": total["questions"], "no_relevant_page": total["dropped_no_relevant_page"],
                      "no_evidence": total["dropped_no_evidence"], "backend_error": raw["backend_error"],
                      "empty_answer": raw["empty_answer"]})
    check_answers(config, counts, out_dir)  # before anything is written
    for name in ("examples", "rejects"):
        concat_files([s.out_dir / OUTPUTS[name] for s in shards], out_dir / OUTPUTS[name])
    return {
        "examples": total["examples"], "questions": total["questions"],
        "dropped_no_relevant_page": total["dropped_no_relevant_page"], "dropped_no_evidence": total["dropped_no_evidence"],
        "answer_rejects": total["answer_rejects"],
        "branches": {b: total["branches"][b] for b in ("vision", "text")},
        "placements": {p: total["placements"][p] for p in DEFAULT_PLACEMENT},
        "mean_trace_pages": round(raw["trace_pages"] / total["questions"], 3) if total["questions"] else 0.0,
        "gold_page_recall": round(raw["gold_found"] / raw["gold_total"], 4) if raw["gold_total"] else None,
    }
