"""The long-document stages on generated PDFs: pdf-fixtures -> pages -> evidence -> doc-traces (-> sft).

Real PDFs (fpdf2), real rendering (pypdfium2), real HTTP against a scripted OpenAI-compatible server for
the openai paths (malformed JSON then good, always malformed, empty answers), and a real TRL step on the
tiny VLM to show the examples train."""
from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from pathlib import Path

import pytest

from compass.errors import CompassError
from support.scripted_server import ScriptedServer, prompt_key
from compass.io import read_jsonl, sha256_file, write_jsonl
from compass.longdoc.evidence import IRRELEVANT
from compass.longdoc.pageindex import PageIndex
from compass.records import DocExample, DocQuestion, Page, PageEvidence, Reject
from compass.runner import execute_stage
from compass.stagekit import run_stage
from compass.stages import doc_traces, evidence, pages, pdf_fixtures

MAX_SIDE = 160  # small renders keep the tests fast; the cap is what is tested


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Two generated reports rendered to pages: root/fx (pdfs/, questions.jsonl), root/pages."""
    root = tmp_path_factory.mktemp("longdoc")
    run_stage(pdf_fixtures, pdf_fixtures.Config(n_docs=2, min_extra_pages=0, max_extra_pages=1, seed=5), {}, root / "fx")
    run_stage(pages, pages.Config(max_long_side=MAX_SIDE), {"pdfs": root / "fx" / "pdfs"}, root / "pages")
    return root


@pytest.fixture(scope="module")
def lexical(corpus) -> Path:
    out = corpus / "evidence"
    run_stage(evidence, evidence.Config(), {"pages": corpus / "pages" / "pages.jsonl",
                                     "questions": corpus / "fx" / "questions.jsonl"}, out)
    return out / "evidence.jsonl"


def questions_of(corpus) -> list[DocQuestion]:
    return read_jsonl(corpus / "fx" / "questions.jsonl", DocQuestion)


def pages_of(corpus) -> list[Page]:
    return read_jsonl(corpus / "pages" / "pages.jsonl", Page)


# --- pdf-fixtures and pages -----------------------------------------------------------------------------------


def test_pdf_fixtures_stage_same_seed_same_bytes(tmp_path):
    cfg = pdf_fixtures.Config(n_docs=2, min_extra_pages=0, max_extra_pages=1, seed=5)
    first = execute_stage("pdf-fixtures", cfg, {}, tmp_path / "a")
    second = execute_stage("pdf-fixtures", cfg, {}, tmp_path / "b")
    assert first.manifest.outputs == second.manifest.outputs
    assert sorted(first.manifest.outputs) == ["pdfs/report-0000.pdf", "pdfs/report-0001.pdf", "questions.jsonl"]
    assert first.manifest.metrics["questions"] == 22
    assert (first.manifest.metrics["single_page"], first.manifest.metrics["cross_page"],
            first.manifest.metrics["unanswerable"]) == (14, 4, 4)


def test_pages_renders_every_page_capped_with_its_text_layer(corpus):
    records = pages_of(corpus)
    from PIL import Image

    per_doc = Counter(p.doc_id for p in records)
    assert set(per_doc) == {"report-0000", "report-0001"} and all(9 <= n <= 10 for n in per_doc.values())
    for page in records:
        assert max(page.width, page.height) == MAX_SIDE  # A4 at 144 dpi is 1684 px tall: the cap applies
        with Image.open(corpus / "pages" / page.image) as image:
            assert image.size == (page.width, page.height)
    cover = next(p for p in records if p.page_index == 0)
    assert "有価証券報告書" in cover.text and "Annual Securities Report" in cover.text
    assert read_jsonl(corpus / "pages" / "rejects.jsonl") == []


def broken_pdfs(folder: Path, good: Path) -> None:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.add_page()
    pdf.set_font("helvetica", size=12)
    pdf.cell(text="confidential")
    pdf.set_encryption(owner_password="owner", user_password="user")
    (folder / "locked.pdf").write_bytes(bytes(pdf.output()))
    (folder / "empty.pdf").write_bytes(b"")
    (folder / "garbage.pdf").write_bytes(b"%PDF-1.7\nthis is not a PDF body\n%%EOF\n")
    (folder / "cut.pdf").write_bytes(good.read_bytes()[:300])
    owner_only = FPDF()
    owner_only.add_page()
    owner_only.set_font("helvetica", size=12)
    owner_only.cell(text="readable without a password")
    owner_only.set_encryption(owner_password="owner")  # permissions only: opens without a password
    (folder / "owner-only.pdf").write_bytes(bytes(owner_only.output()))


def test_pages_rejects_encrypted_empty_corrupt_pdfs_and_goes_on(corpus, tmp_path):
    folder = tmp_path / "pdfs"
    shutil.copytree(corpus / "fx" / "pdfs", folder)
    broken_pdfs(folder, folder / "report-0000.pdf")
    metrics = run_stage(pages, pages.Config(max_long_side=MAX_SIDE, max_reject_rate=1.0), {"pdfs": folder}, tmp_path / "out")
    rejects = {r.id: r for r in read_jsonl(tmp_path / "out" / "rejects.jsonl", Reject)}
    assert {k: r.reason for k, r in rejects.items()} == {
        "locked": "encrypted", "empty": "empty", "garbage": "corrupt", "cut": "corrupt"}
    assert "password" in rejects["locked"].detail and "0 bytes" in rejects["empty"].detail
    assert metrics["documents"] == 3 and metrics["rejected"] == 4
    kept = read_jsonl(tmp_path / "out" / "pages.jsonl", Page)
    assert {p.doc_id for p in kept} == {"report-0000", "report-0001", "owner-only"}
    assert "readable without a password" in next(p.text for p in kept if p.doc_id == "owner-only")
    assert sorted(d.name for d in (tmp_path / "out" / "images").iterdir()) == ["owner-only", "report-0000", "report-0001"]


def test_pages_fails_past_the_reject_rate_without_a_manifest(corpus, tmp_path):
    folder = tmp_path / "pdfs"
    shutil.copytree(corpus / "fx" / "pdfs", folder)
    broken_pdfs(folder, folder / "report-0000.pdf")
    with pytest.raises(CompassError, match=r"pages: 4 of 7 PDFs rejected .*max_reject_rate 25.0%"):
        execute_stage("pages", pages.Config(max_long_side=MAX_SIDE), {"pdfs": folder}, tmp_path / "out")
    assert not (tmp_path / "out" / "manifest.json").exists()
    assert len(read_jsonl(tmp_path / "out" / "rejects.jsonl")) == 4  # the reasons are there to read


def test_pages_same_bytes_twice(corpus, tmp_path):
    run_stage(pages, pages.Config(max_long_side=MAX_SIDE), {"pdfs": corpus / "fx" / "pdfs"}, tmp_path / "again")
    for name in ("pages.jsonl", "images/report-0001/page-0003.png"):
        assert sha256_file(tmp_path / "again" / name) == sha256_file(corpus / "pages" / name)


# --- evidence: lexical ---------------------------------------------------------------------------------------


def test_lexical_evidence_covers_every_question_page_in_order(corpus, lexical):
    records = read_jsonl(lexical, PageEvidence)
    per_doc = Counter(p.doc_id for p in pages_of(corpus))
    expected = [(q.id, i) for q in questions_of(corpus) for i in range(per_doc[q.doc_id])]
    assert [(r.question_id, r.page_index) for r in records] == expected
    gold = {(q.id, g) for q in questions_of(corpus) for g in q.gold_pages}
    for r in records:
        assert 0.0 <= r.relevance_score <= 10.0
        assert r.gold == ((r.question_id, r.page_index) in gold)
        if r.gold:
            assert r.relevance_score >= 6.0
        if r.relevance_score == 0.0:
            assert r.evidence == IRRELEVANT
    assert sum(r.relevance_score == 0.0 for r in records) > len(records) / 3  # most pages are irrelevant to a question


def test_lexical_evidence_same_bytes_and_missing_document_rejected(corpus, lexical, tmp_path):
    questions = questions_of(corpus) + [DocQuestion(id="ghost/q", doc_id="ghost", question="Q?", answer="A")]
    write_jsonl(tmp_path / "q.jsonl", questions)
    metrics = run_stage(evidence, evidence.Config(), {"pages": corpus / "pages" / "pages.jsonl", "questions": tmp_path / "q.jsonl"},
                           tmp_path / "out")
    assert sha256_file(tmp_path / "out" / "evidence.jsonl") == sha256_file(lexical)
    assert [(r.id, r.reason) for r in read_jsonl(tmp_path / "out" / "rejects.jsonl", Reject)] == [("ghost/q", "document_missing")]
    assert metrics["rejected_questions"] == 1


# --- evidence: openai over real HTTP -----------------------------------------------------------------------------


def prompt_text(body: dict) -> str:
    return body["messages"][0]["content"][1]["text"]


def test_openai_evidence_malformed_json_is_asked_again_then_parsed(corpus, lexical, tmp_path):
    state: dict = {}

    def reply(body):
        if state["server"].arrivals[prompt_key(body)] == 1:
            return 'Here is the JSON you asked for: {"evidence": "quoted'  # malformed: the first answer to every prompt
        gold = "between 6 and 10" in prompt_text(body)
        return json.dumps({"evidence": "A table of revenue by segment.", "relevance_score": 2 if gold else 12.5})

    with ScriptedServer(reply, latency_s=0.002, slots=8) as server:
        state["server"] = server
        cfg = evidence.Config(backend="openai", openai={"base_urls": [server.base_url], "model": "vlm", "concurrency": 4})
        metrics = run_stage(evidence, cfg, {"pages": corpus / "pages" / "pages.jsonl",
                                     "questions": corpus / "fx" / "questions.jsonl"}, tmp_path / "out")
    records = read_jsonl(tmp_path / "out" / "evidence.jsonl", PageEvidence)
    lexical_order = [(r.question_id, r.page_index) for r in read_jsonl(lexical, PageEvidence)]
    assert [(r.question_id, r.page_index) for r in records] == lexical_order  # question then page order, whatever the server did
    assert read_jsonl(tmp_path / "out" / "rejects.jsonl") == [] and metrics["rejected_pages"] == 0
    assert set(server.arrivals.values()) == {2}  # each page: one malformed reply, one re-ask
    assert {r.relevance_score for r in records if r.gold} == {6.0}  # 2 raised to the gold minimum
    assert {r.relevance_score for r in records if not r.gold} == {10.0}  # 12.5 clamped
    first, second = server.requests_seen[0], server.requests_seen[-1]
    assert first["temperature"] == 0.0 and second["temperature"] == 0.7  # a greedy re-ask would repeat itself
    image = first["messages"][0]["content"][0]["image_url"]["url"]
    assert image.startswith("data:image/png;base64,")
    assert not list((tmp_path / "out").glob(".evidence-run*"))  # the sorted runs are merged and removed


def test_openai_evidence_always_malformed_is_rejected_with_the_reason(corpus, tmp_path):
    victim = questions_of(corpus)[3]

    def reply(body):
        if victim.question in prompt_text(body):
            return '{"evidence": "e", "relevance_score": "high"}'
        return json.dumps({"evidence": "e", "relevance_score": 3})

    with ScriptedServer(reply, latency_s=0.0, slots=8) as server:
        base = {"base_urls": [server.base_url], "model": "vlm", "concurrency": 4}
        cfg = evidence.Config(backend="openai", openai=base, parse_retries=1, max_reject_rate=0.5)
        inputs = {"pages": corpus / "pages" / "pages.jsonl", "questions": corpus / "fx" / "questions.jsonl"}
        metrics = run_stage(evidence, cfg, inputs, tmp_path / "out")
        n_pages = sum(p.doc_id == victim.doc_id for p in pages_of(corpus))
        rejects = read_jsonl(tmp_path / "out" / "rejects.jsonl", Reject)
        assert [r.id for r in rejects] == [f"{victim.id}#page{i}" for i in range(n_pages)]
        assert {r.reason for r in rejects} == {"malformed_json"}
        assert "after 2 replies: relevance_score must be a finite number, got 'high'" in rejects[0].detail
        assert metrics["rejected_pages"] == n_pages
        assert victim.id not in {r.question_id for r in read_jsonl(tmp_path / "out" / "evidence.jsonl", PageEvidence)}
        with pytest.raises(CompassError, match="pages rejected"):
            run_stage(evidence, evidence.Config(backend="openai", openai=base, parse_retries=0, max_reject_rate=0.01),
                         inputs, tmp_path / "strict")


# --- doc-traces ----------------------------------------------------------------------------------------------


def traces_inputs(corpus, evidence_path) -> dict:
    return {"evidence": evidence_path, "questions": corpus / "fx" / "questions.jsonl",
            "pages": corpus / "pages" / "pages.jsonl"}


def trace_pages(example: DocExample) -> list[int]:
    think = example.messages[-1].content.split("<think>\n", 1)[1].split("\n</think>", 1)[0]
    return [int(block.split(":", 1)[0].removeprefix("Page ")) - 1 for block in think.split("\n\n")]


def test_doc_traces_threshold_sort_top_k_and_placements(corpus, lexical, tmp_path):
    cfg = doc_traces.Config(top_k=3, seed=11)
    metrics = run_stage(doc_traces, cfg, traces_inputs(corpus, lexical), tmp_path / "a")
    examples = read_jsonl(tmp_path / "a" / "examples.jsonl", DocExample)
    scores = {(r.question_id, r.page_index): r.relevance_score for r in read_jsonl(lexical, PageEvidence)}
    n_pages = Counter(p.doc_id for p in pages_of(corpus))
    questions = {q.id: q for q in questions_of(corpus)}
    assert len(examples) == metrics["examples"] > 0
    for ex in examples:
        q = questions[ex.question_id]
        rel = Path(os.path.relpath(corpus / "pages", tmp_path / "a")).as_posix()
        assert ex.images == [f"{rel}/images/{q.doc_id}/page-{i:04d}.png" for i in range(n_pages[q.doc_id])]
        assert all((tmp_path / "a" / image).is_file() for image in ex.images)  # relative to the examples file
        user = next(m.content for m in ex.messages if m.role == "user")
        assert user.count("<image>") == n_pages[q.doc_id] and q.question in user
        assert ("<cot>" in json.dumps([m.model_dump() for m in ex.messages])) == (ex.cot_placement != "none")
        answer = ex.messages[-1].content
        assert answer.endswith(q.answer)
        if not ex.has_trace:
            assert answer == q.answer
            continue
        shown = trace_pages(ex)
        expected = sorted((p for p in range(n_pages[q.doc_id]) if scores[(q.id, p)] > 1.0),
                          key=lambda p: (-scores[(q.id, p)], p))[:3]
        assert shown == expected  # above threshold, high to low, top 3; irrelevant pages never appear
    assert metrics["gold_page_recall"] > 0.8
    run_stage(doc_traces, cfg, traces_inputs(corpus, lexical), tmp_path / "b")
    assert sha256_file(tmp_path / "a" / "examples.jsonl") == sha256_file(tmp_path / "b" / "examples.jsonl")
    run_stage(doc_traces, doc_traces.Config(top_k=3, seed=12), traces_inputs(corpus, lexical), tmp_path / "c")
    assert sha256_file(tmp_path / "a" / "examples.jsonl") != sha256_file(tmp_path / "c" / "examples.jsonl")


def test_doc_traces_drops_questions_without_relevant_pages_and_adds_no_cot_copies(corpus, lexical, tmp_path):
    records = read_jsonl(lexical, PageEvidence)
    victim = records[0].question_id
    flat = [r.model_copy(update={"relevance_score": min(r.relevance_score, 1.0)}) if r.question_id == victim else r
            for r in records]
    write_jsonl(tmp_path / "ev.jsonl", flat)
    cfg = doc_traces.Config(no_cot_extra_fraction=1.0, cot_placement={"system": 1.0, "user_prepend": 0.0,
                                                                      "user_append": 0.0, "none": 0.0})
    metrics = run_stage(doc_traces, cfg, traces_inputs(corpus, tmp_path / "ev.jsonl"), tmp_path / "out")
    assert [(r.id, r.reason) for r in read_jsonl(tmp_path / "out" / "rejects.jsonl", Reject)] == [(victim, "no_relevant_page")]
    examples = read_jsonl(tmp_path / "out" / "examples.jsonl", DocExample)
    assert victim not in {e.question_id for e in examples}
    assert metrics["questions"] == len(questions_of(corpus)) - 1 and metrics["examples"] == 2 * metrics["questions"]
    assert Counter((e.cot_placement, e.has_trace) for e in examples) == {("system", True): metrics["questions"],
                                                                        ("none", False): metrics["questions"]}
    nocot = next(e for e in examples if e.id.endswith("#nocot"))
    assert [m.role for m in nocot.messages] == ["user", "assistant"] and "<think>" not in nocot.messages[-1].content


def test_doc_traces_openai_answerers_vision_and_text_branches(corpus, lexical, tmp_path):
    def reply(body):
        first = body["messages"][0]
        if first["role"] == "system":
            return "<think>scratch</think>text branch answer"
        if server.arrivals[prompt_key(body)] == 1:
            return "<think>only thoughts</think>  "  # no answer after the thinking: asked again
        return "vision branch answer"

    with ScriptedServer(reply, latency_s=0.002, slots=4) as server:
        endpoint = {"base_urls": [server.base_url], "model": "m", "concurrency": 2}
        cfg = doc_traces.Config(answerer="openai", vision_openai=endpoint, text_openai=endpoint, top_k=4)
        metrics = run_stage(doc_traces, cfg, traces_inputs(corpus, lexical), tmp_path / "out")
    examples = read_jsonl(tmp_path / "out" / "examples.jsonl", DocExample)
    assert Counter(e.branch for e in examples) == metrics["branches"] and min(metrics["branches"].values()) > 0
    for e in examples:
        assert e.messages[-1].content.endswith(f"{e.branch} branch answer")
    vision = [b for b in server.requests_seen if b["messages"][0]["role"] == "user"]
    text = [b for b in server.requests_seen if b["messages"][0]["role"] == "system"]
    assert len(text) == metrics["branches"]["text"]
    assert {n for key, n in server.arrivals.items() if '"role": "system"' not in key} == {2}
    assert metrics["answer_rejects"] == 0
    for body in vision:
        parts = body["messages"][0]["content"]
        images = [p for p in parts if p["type"] == "image_url"]
        assert 1 <= len(images) <= 4 and len(parts) == 2 * len(images) + 1
        assert parts[0]["text"].startswith("Page ")
    for body in text:
        assert "page by page" in body["messages"][0]["content"]
        assert body["messages"][1]["content"].startswith("Evidence:\n\nPage ")
    assert read_jsonl(tmp_path / "out" / "rejects.jsonl") == []


# --- question synthesis (a served VLM writes questions from seed pages) ---------------------------------------


def test_synthesized_questions_record_their_seed_pages_as_gold(corpus, tmp_path):
    from compass.stages import doc_questions as synth

    def reply(body):
        parts = body["messages"][0]["content"]
        labels = [p["text"] for p in parts if p["type"] == "text" and p["text"].startswith("Page ")]
        if server.arrivals[prompt_key(body)] == 1 and len(labels) % 2:
            return "I think the question is about revenue."  # malformed: asked again
        return json.dumps({"question": f"What do {', '.join(labels)} say?", "answer": str(len(labels)),
                           "answer_format": "Int"})

    with ScriptedServer(reply, latency_s=0.002, slots=4) as server:
        cfg = synth.Config(openai={"base_urls": [server.base_url], "model": "vlm", "concurrency": 3}, n_per_doc=5,
                           max_seed_pages=16, seed=1)
        metrics = run_stage(synth, cfg, {"pages": corpus / "pages" / "pages.jsonl"}, tmp_path / "q")
    questions = read_jsonl(tmp_path / "q" / "questions.jsonl", DocQuestion)
    assert [q.id for q in questions] == [f"report-000{d}/synth-{k}" for d in range(2) for k in range(5)]
    for q in questions:
        assert q.question == f"What do {', '.join(f'Page {p + 1}:' for p in q.gold_pages)} say?"
        assert q.answer == str(len(q.gold_pages)) and 1 <= len(q.gold_pages) <= 10
    assert metrics["questions"] == 10 and metrics["rejected"] == 0
    assert metrics["cross_page"] == sum(len(q.gold_pages) > 1 for q in questions)
    again = synth.seed_sets(cfg, PageIndex(corpus / "pages" / "pages.jsonl"))
    assert [[p.page_index for p in s.pages] for s in again] == [q.gold_pages for q in questions]  # seeded draws


# --- the examples train ------------------------------------------------------------------------------------------


def test_compass_sft_trains_the_tiny_vlm_on_doc_examples(corpus, lexical, tmp_path, tiny_models):
    from compass.stages import sft

    run_stage(doc_traces, doc_traces.Config(), traces_inputs(corpus, lexical), corpus / "doc-traces")
    cfg = sft.Config(max_steps=2, global_batch_size=2, micro_batch_size=1, lora_r=4, lora_alpha=8,
                     learning_rate=1e-3, logging_steps=1, max_length=4096)
    metrics = run_stage(sft, cfg, {"model": tiny_models.vlm, "data": corpus / "doc-traces" / "examples.jsonl"}, tmp_path / "sft")
    assert metrics["model_kind"] == "vlm" and metrics["examples"] == len(questions_of(corpus))
    assert metrics["steps"] == 2 and metrics["first_loss"] > 0
    assert (tmp_path / "sft" / "adapter" / "adapter_model.safetensors").is_file()
