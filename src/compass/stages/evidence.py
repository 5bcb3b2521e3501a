"""Per-page evidence: for every (question, page of its document), {evidence, relevance_score} (docs/method.md B.1).

Backends: `openai` sends the page image (a data URL) and the extraction prompt to a VLM behind any
OpenAI-compatible server (vLLM, SGLang) through compass.generate's streaming pool; `lexical` is the offline
extractor of the demo and tests: BM25 over the page's text layer, quoting its best sentences and mapping the
score onto 0-10 (an irrelevant page gets one sentence and 0).

A reply must be exactly {"evidence": str, "relevance_score": number}: a malformed one is asked again
(`parse_retries` times, with `retry_temperature`), then rejected with the reason. Scores are clamped to
[0, 10] and gold pages raised to at least `min_gold_score`. Output is in question order, then page order,
whatever order the server answers in (compass.longdoc.streaming): memory holds the requests in flight and two
small integers per page. Every finished page is journalled at once, so a killed run, started again in the
same output directory, sends only the pages it had not finished.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field

from compass.data.shards import Shard, ShardedStageConfig, ShardRun, concat_files, in_shard, sum_metrics
from compass.errors import CompassError
from compass.generate.config import OpenAISettings
from compass.io import atomic_open, count_jsonl_records, iter_jsonl
from compass.longdoc.pageindex import PageIndex
from compass.records import DocQuestion, Page, PageEvidence, Reject
from compass.stagekit import RecordSink, StageContext, check_reject_rate
from compass.stages import Port

VERSION = 1  # code version of what this stage writes: bump when the same config and inputs would give other bytes
EXAMPLE = ("compass evidence --pages work/pages/pages.jsonl --questions work/pdfs/questions.jsonl --out work/evidence "
           "--backend openai --openai '{base_urls: [http://localhost:8000/v1], model: Qwen/Qwen2.5-VL-72B-Instruct}'")


class Config(ShardedStageConfig):
    backend: Literal["lexical", "openai"] = Field("lexical", description="lexical (offline BM25 over the text layer) "
                                                  "or openai (a VLM behind an OpenAI-compatible server)")
    openai: OpenAISettings = Field(default_factory=OpenAISettings, description="settings of the openai backend")
    max_tokens: int = Field(1024, ge=1, description="completion token limit per page")
    temperature: float = Field(0.0, ge=0, description="sampling temperature of the first attempt")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling mass")
    parse_retries: int = Field(2, ge=0, description="times a page is asked again after a malformed (non-JSON) reply")
    retry_temperature: float = Field(0.7, ge=0, description="temperature of those re-asks (greedy would repeat the reply)")
    min_gold_score: float = Field(6.0, ge=0, le=10, description="gold pages are raised to at least this score")
    max_reject_rate: float = Field(0.05, ge=0, le=1, description="fail when more than this share of pages is rejected")
    lexical_scale: float = Field(6.0, gt=0, description="lexical: BM25 score s maps to 10 * s / (s + scale)")
    lexical_floor: float = Field(2.5, ge=0, le=10, description="lexical: pages mapped below this are irrelevant (score 0)")
    lexical_max_quotes: int = Field(3, ge=1, description="lexical: passages quoted from a relevant page")


INPUTS = {
    "pages": Port("Page records (pages.jsonl of `compass pages`; image paths are relative to its directory)"),
    "questions": Port("DocQuestion records (questions.jsonl)"),
}
OUTPUTS = {"evidence": "evidence.jsonl", "rejects": "rejects.jsonl"}

REASONS = ("malformed_json", "backend_error", "document_missing", "gold_page_out_of_range")
PAGE_REASONS = ("malformed_json", "backend_error")  # rejects of a page's request: what the reject-rate gate counts
TRANSIENT = frozenset({"backend_error"})  # a server failure: asked again by the next run


@dataclass
class Task:
    question: DocQuestion
    page: Page

    @property
    def gold(self) -> bool:
        return self.page.page_index in self.question.gold_pages

    @property
    def reject_id(self) -> str:
        return f"{self.question.id}#page{self.page.page_index}"


def iter_tasks(questions_path: Path, index: PageIndex, rejects: dict[str, Reject], shard: Shard | None = None) -> Iterator[Task]:
    """Every (question, page) of the question's document, streamed; unusable questions become rejects. A shard's
    units are questions, in input order."""
    questions = iter_jsonl(questions_path, DocQuestion)
    if shard is not None:
        questions = in_shard(questions, count_jsonl_records(questions_path), shard)
    for question in questions:
        if question.doc_id not in index:
            rejects[question.id] = Reject(id=question.id, reason="document_missing",
                                          detail=f"no pages for document {question.doc_id!r} (rejected by `compass pages`?)")
            continue
        pages = index.pages(question.doc_id)
        bad = [g for g in question.gold_pages if not 0 <= g < len(pages)]
        if bad:
            rejects[question.id] = Reject(id=question.id, reason="gold_page_out_of_range",
                                          detail=f"gold pages {bad} outside 0..{len(pages) - 1} of {question.doc_id!r}")
            continue
        for page in pages:
            yield Task(question, page)


def evidence_record(task: Task, evidence: str, score: float, min_gold_score: float) -> PageEvidence:
    from compass.longdoc.evidence import final_score

    return PageEvidence(question_id=task.question.id, doc_id=task.question.doc_id, page_index=task.page.page_index,
                        evidence=evidence, relevance_score=final_score(score, task.gold, min_gold_score), gold=task.gold)


# --- lexical: in order, in process ----------------------------------------------------------------------


def run_lexical(config: Config, tasks: Iterator[Task], index: PageIndex, write) -> None:
    from compass.longdoc.evidence import LexicalExtractor

    extractor = LexicalExtractor(scale=config.lexical_scale, floor=config.lexical_floor, max_quotes=config.lexical_max_quotes)
    current: tuple[str, list[tuple[str, float]]] | None = None
    for task in tasks:
        if current is None or current[0] != task.question.id:  # one question's pages are scored together (BM25 idf)
            current = (task.question.id, extractor.score_document(task.question, index.pages(task.question.doc_id)))
        evidence, score = current[1][task.page.page_index]
        write(evidence_record(task, evidence, score, config.min_gold_score))


# --- openai: through compass.generate's streaming pool, in order, with re-asks and a resume journal ------


def run_openai(config: Config, tasks, images_root: Path, out_dir: Path, resume_key: str, stats: dict):
    """("ok", PageEvidence dict) or ("reject", Reject dict) per (question, page), in task order."""
    from compass.generate import GenRequest
    from compass.generate.config import TransformersSettings, make_backend
    from compass.longdoc.evidence import MalformedEvidence, evidence_messages, parse_evidence
    from compass.longdoc.streaming import stream_in_order

    backend = make_backend("openai", config.openai, TransformersSettings())

    def request_of(task: Task, attempt: int) -> GenRequest:
        # built when the pool asks for it: only the requests in flight hold a page image
        return GenRequest(
            id="", messages=evidence_messages(task.question, images_root / task.page.image, task.gold),
            max_tokens=config.max_tokens, temperature=config.temperature if attempt == 0 else config.retry_temperature,
            top_p=config.top_p, seed=config.seed + attempt,
        )

    def parse(task: Task, text: str) -> PageEvidence:
        evidence, score = parse_evidence(text)
        return evidence_record(task, evidence, score, config.min_gold_score)

    def reject(task: Task, reason: str, detail: str) -> dict:
        return Reject(id=task.reject_id, reason=reason, detail=detail).model_dump(mode="json")

    return stream_in_order(
        backend, tasks, request_of, parse, malformed=MalformedEvidence, retries=config.parse_retries,
        work_dir=out_dir, tag="evidence", resume_key=resume_key, dump=lambda r: r.model_dump(mode="json"),
        reject=reject, malformed_reason="malformed_json", stats=stats,
    )


def run(config: Config, ctx: StageContext) -> dict:
    inputs, out_dir = ctx.inputs, ctx.out_dir
    from compass.longdoc.streaming import journal_path

    index = PageIndex(inputs["pages"])
    question_rejects: dict[str, Reject] = {}  # by id: the task list is enumerated once per round

    def tasks() -> Iterator[Task]:
        return iter_tasks(inputs["questions"], index, question_rejects, ctx.shard)

    relevant = 0
    sent: dict = {}
    with RecordSink("evidence", out_dir, OUTPUTS["evidence"], OUTPUTS["rejects"], transient=TRANSIENT) as sink:
        def write_record(record: PageEvidence) -> None:
            nonlocal relevant
            relevant += record.relevance_score > 0
            sink.record(record)

        if config.backend == "lexical":
            run_lexical(config, tasks(), index, write_record)
        else:
            for kind, value in run_openai(config, tasks, inputs["pages"].parent, out_dir, ctx.resume_key, sent):
                if kind == "ok":
                    write_record(PageEvidence.model_validate(value))
                else:
                    sink.reject(Reject.model_validate(value))
        for reject in question_rejects.values():
            sink.reject(reject)
        page_rejects = sink.count(*PAGE_REASONS)
        if ctx.shard is None:  # a shard's share is checked with the others' at gather
            check_pages(sink.kept, page_rejects, sink.reasons, config, sink)
    journal_path(out_dir, "evidence").unlink(missing_ok=True)  # outputs are final: the resume journal is done
    metrics = {"pages": sink.kept, "relevant_pages": relevant, "rejected_pages": page_rejects,
               "rejected_questions": sink.count("document_missing", "gold_page_out_of_range"),
               "reject_reasons": sink.sorted_reasons()}
    if config.backend == "openai":
        metrics.update(requests_sent=sent["sent"], resumed_pages=sent["resumed"])
    return metrics


def check_pages(pages: int, page_rejects: int, reasons: dict, config: Config, sink: RecordSink | None = None) -> None:
    """The page reject-rate gate of a run (through its sink) or of a gather (over the shards' sums)."""
    total = pages + page_rejects
    if total == 0:
        raise CompassError(f"evidence: no (question, page) pairs to process; rejects: {reasons}")
    if sink is not None:
        sink.check(config.max_reject_rate, what="pages", rejected=page_rejects, total=total, reasons=dict(reasons))
    else:
        check_reject_rate("evidence", page_rejects, total, config.max_reject_rate, what="pages", reasons=dict(reasons))


def gather(config: Config, shards: list[ShardRun], out_dir: Path) -> dict:
    """The shards' evidence in shard order, and their rejects as the unsharded run orders them (every page reject,
    then every question reject): the unsharded files; the limit over the whole."""
    import json

    keys = ["pages", "relevant_pages", "rejected_pages", "rejected_questions", "reject_reasons"]
    if config.backend == "openai":
        keys += ["requests_sent", "resumed_pages"]
    metrics = sum_metrics([s.metrics for s in shards], keys)
    metrics["reject_reasons"] = dict(sorted(metrics["reject_reasons"].items()))
    check_pages(metrics["pages"], metrics["rejected_pages"], metrics["reject_reasons"], config)  # before writing
    concat_files([s.out_dir / OUTPUTS["evidence"] for s in shards], out_dir / OUTPUTS["evidence"])
    page_lines: list[str] = []
    question_lines: dict[str, str] = {}  # by question id, first seen first, as the unsharded run keeps them
    for shard in shards:
        with open(shard.out_dir / OUTPUTS["rejects"], encoding="utf-8") as fh:
            for line in fh:
                reject = json.loads(line)
                if reject["reason"] in PAGE_REASONS:
                    page_lines.append(line)
                else:
                    question_lines[reject["id"]] = line
    with atomic_open(out_dir / OUTPUTS["rejects"]) as fh:
        fh.writelines(page_lines)
        fh.writelines(question_lines.values())
    return {key: metrics[key] for key in keys}
