"""Synthesize questions about long documents: from 1-16 seed pages, a VLM writes a question and its answer.

For each document, `n_per_doc` seed sets are drawn (seeded): a size k in [min_seed_pages, max_seed_pages]
(capped by the document's length), then k distinct pages. The VLM behind an OpenAI-compatible server gets
those page images (data URLs, each after its "Page N:" label) and is asked for one question that needs
all of them, with a short answer and its MMLongBench answer format. The seed pages become the question's
gold pages, which `compass evidence` later raises to a score of at least 6.

Offline (demo, tests) the questions come from `compass pdf-fixtures`, whose generator planted the facts
and knows their pages; this module needs a served VLM. It has the shape of a stage (Config, INPUTS,
OUTPUTS, run), ready to be registered as a verb.
"""
from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field, model_validator

from compass.data.shards import ShardedStageConfig, ShardRun, concat_files, in_shard, sum_metrics
from compass.errors import CompassError
from compass.generate.config import OpenAISettings
from compass.io import record_rng
from compass.longdoc.pageindex import PageIndex
from compass.records import DocQuestion, Page, Reject
from compass.stagekit import RecordSink, StageContext, check_reject_rate
from compass.stages import Port
from compass.vocab import reply_body

VERSION = 2  # code version of what this stage writes: bump when the same config and inputs would give other bytes
# (2: seed pages drawn with compass.io.record_rng, the one per-record seeding)
EXAMPLE = ("compass doc-questions --pages work/pages/pages.jsonl --out work/questions --n-per-doc 8 "
           "--openai '{base_urls: [http://localhost:8000/v1], model: Qwen/Qwen2.5-VL-72B-Instruct}'")

FORMATS = ("Int", "Float", "Str", "List")

SYNTH_PROMPT = """Above are {k} page(s) of a long document, each labelled with its page number.

Write one question that can be answered from {these} and {needs}. The question must make sense to someone who
holds the whole document but does not know which pages it came from: name the subject explicitly and never
say "this page" or "the pages above". Then give the short answer (a number, a name, a short phrase, or a list).

Reply with one JSON object and nothing else:
{{"question": "...", "answer": "...", "answer_format": "Int" | "Float" | "Str" | "List"}}
For "List", write the answer as a JSON-style list of strings, e.g. ["a", "b"]."""


class MalformedQuestion(ValueError):
    """A reply that is not the required JSON object."""


TRANSIENT = frozenset({"backend_error"})  # a server failure: asked again by the next run


class Config(ShardedStageConfig):
    openai: OpenAISettings = Field(default_factory=OpenAISettings, description="the VLM that writes the questions")
    n_per_doc: int = Field(4, ge=1, description="questions per document")
    min_seed_pages: int = Field(1, ge=1, le=16, description="fewest seed pages of a question")
    max_seed_pages: int = Field(16, ge=1, le=16, description="most seed pages of a question (capped by the document)")
    max_tokens: int = Field(512, ge=1, description="completion token limit")
    temperature: float = Field(0.7, ge=0, description="sampling temperature (variety across questions)")
    parse_retries: int = Field(2, ge=0, description="times a seed set is asked again after a malformed reply")
    max_reject_rate: float = Field(0.2, ge=0, le=1, description="fail when more than this share of seed sets is rejected")

    @model_validator(mode="after")
    def _range(self):
        if self.min_seed_pages > self.max_seed_pages:
            raise ValueError(f"min_seed_pages {self.min_seed_pages} > max_seed_pages {self.max_seed_pages}")
        return self


INPUTS = {"pages": Port("Page records (pages.jsonl of `compass pages`; image paths relative to its directory)")}
OUTPUTS = {"questions": "questions.jsonl", "rejects": "rejects.jsonl"}


@dataclass
class SeedSet:
    doc_id: str
    number: int  # k-th question of the document
    pages: list[Page]  # sorted by page index

    @property
    def id(self) -> str:
        return f"{self.doc_id}/synth-{self.number}"


def draw_seed_pages(rng: random.Random, n_pages: int, min_pages: int, max_pages: int) -> list[int]:
    """k distinct 0-based page indices, sorted; k uniform in [min, min(max, n_pages)]."""
    if n_pages < 1:
        raise CompassError("a document needs at least one page")
    high = min(max_pages, n_pages)
    low = min(min_pages, high)
    return sorted(rng.sample(range(n_pages), rng.randint(low, high)))


def seed_sets(config: Config, index: PageIndex, doc_ids: list[str] | None = None) -> Iterator[SeedSet]:
    """The seed sets of `doc_ids` (default: every document, sorted), n_per_doc per document."""
    for doc_id in sorted(index.offsets) if doc_ids is None else doc_ids:
        # one RNG per document: adding a document never changes another one's questions
        rng = record_rng(config.seed, doc_id)
        pages = index.pages(doc_id)
        for number in range(config.n_per_doc):
            chosen = draw_seed_pages(rng, len(pages), config.min_seed_pages, config.max_seed_pages)
            yield SeedSet(doc_id, number, [pages[i] for i in chosen])


def synth_messages(seed: SeedSet, images_root: Path) -> list[dict]:
    from compass.longdoc.evidence import image_data_url

    parts: list[dict] = []
    for page in seed.pages:
        parts.append({"type": "text", "text": f"Page {page.page_index + 1}:"})
        parts.append({"type": "image_url", "image_url": {"url": image_data_url(images_root / page.image)}})
    k = len(seed.pages)
    parts.append({"type": "text", "text": SYNTH_PROMPT.format(
        k=k, these="this page" if k == 1 else "these pages",
        needs="needs its content" if k == 1 else "needs information from every one of them")})
    return [{"role": "user", "content": parts}]


def parse_question(seed: SeedSet, text: str) -> DocQuestion:
    body = reply_body(text)
    try:
        data = json.loads(body)
    except json.JSONDecodeError as err:
        raise MalformedQuestion(f"not valid JSON ({err.msg} at column {err.colno}): {body[:80]!r}") from None
    if not isinstance(data, dict) or set(data) != {"question", "answer", "answer_format"}:
        raise MalformedQuestion(f"expected an object with question, answer, answer_format; got {str(data)[:80]!r}")
    question, answer, answer_format = data["question"], data["answer"], data["answer_format"]
    if answer_format == "List" and isinstance(answer, list) and all(isinstance(a, str) for a in answer):
        answer = repr(answer)  # the MMLongBench form, parsed later without eval
    if not isinstance(question, str) or not question.strip():
        raise MalformedQuestion(f"question must be a non-empty string, got {question!r:.60}")
    if not isinstance(answer, str) or not answer.strip():
        raise MalformedQuestion(f"answer must be a non-empty string, got {answer!r:.60}")
    if answer_format not in FORMATS:
        raise MalformedQuestion(f"answer_format must be one of {FORMATS}, got {answer_format!r}")
    return DocQuestion(id=seed.id, doc_id=seed.doc_id, question=question.strip(), answer=answer.strip(),
                       answer_format=answer_format, gold_pages=[p.page_index for p in seed.pages])


def run(config: Config, ctx: StageContext) -> dict:
    inputs, out_dir = ctx.inputs, ctx.out_dir
    from compass.generate import GenRequest
    from compass.generate.config import TransformersSettings, make_backend
    from compass.longdoc.streaming import journal_path, stream_in_order

    index = PageIndex(inputs["pages"])
    images_root = inputs["pages"].parent
    backend = make_backend("openai", config.openai, TransformersSettings())
    documents = sorted(index.offsets)
    mine = list(in_shard(documents, len(documents), ctx.shard))  # a shard's units: whole documents, sorted by id

    def request_of(seed: SeedSet, attempt: int) -> GenRequest:
        return GenRequest(id="", messages=synth_messages(seed, images_root), max_tokens=config.max_tokens,
                          temperature=config.temperature, seed=config.seed + attempt)

    def reject(seed: SeedSet, reason: str, detail: str) -> dict:
        return Reject(id=seed.id, reason=reason, detail=detail,
                      record={"seed_pages": [p.page_index for p in seed.pages]}).model_dump(mode="json")

    shape: Counter[str] = Counter()
    with RecordSink("doc-questions", out_dir, OUTPUTS["questions"], OUTPUTS["rejects"], transient=TRANSIENT) as sink:
        for kind, value in stream_in_order(
            backend, lambda: seed_sets(config, index, mine), request_of, parse_question, malformed=MalformedQuestion,
            retries=config.parse_retries, work_dir=out_dir, tag="synth", resume_key=ctx.resume_key,
            dump=lambda q: q.model_dump(mode="json"), reject=reject, malformed_reason="malformed_json",
        ):
            if kind == "reject":
                sink.reject(Reject.model_validate(value))
                continue
            question = DocQuestion.model_validate(value)
            sink.record(question)
            shape["cross_page" if len(question.gold_pages) > 1 else "single_page"] += 1
        if ctx.shard is None:  # a shard's share is checked with the others' at gather
            sink.check(config.max_reject_rate, what="seed sets")
    journal_path(out_dir, "synth").unlink(missing_ok=True)  # outputs are final: the resume journal is done
    return {"questions": sink.kept, "single_page": shape["single_page"], "cross_page": shape["cross_page"],
            "rejected": sink.rejected, "reject_reasons": sink.sorted_reasons(), "documents": len(mine)}


def gather(config: Config, shards: list[ShardRun], out_dir: Path) -> dict:
    """The shards' questions and rejects in shard order (documents are split whole, in id order): the unsharded
    files; the reject-rate limit over the whole."""
    keys = ["questions", "single_page", "cross_page", "rejected", "reject_reasons", "documents"]
    metrics = sum_metrics([s.metrics for s in shards], keys)
    metrics["reject_reasons"] = dict(sorted(metrics["reject_reasons"].items()))
    # before anything is written; server failures in a finished shard are asked again by rerunning it with --force
    check_reject_rate("doc-questions", metrics["rejected"], metrics["questions"] + metrics["rejected"],
                      config.max_reject_rate, what="seed sets", reasons=metrics["reject_reasons"])
    for name in ("questions", "rejects"):
        concat_files([s.out_dir / OUTPUTS[name] for s in shards], out_dir / OUTPUTS[name])
    return {key: metrics[key] for key in keys}
