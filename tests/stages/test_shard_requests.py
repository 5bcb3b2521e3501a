"""`--shard I/N` for the stages whose units are requests to a server (evidence, doc-questions, distill): the shard
runs joined by `compass gather` give the bytes and metrics of the unsharded run (sha256 of every output file),
each shard is an ordinary cached run, and gather applies the reject-rate limit to the whole."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from support.scripted_server import ScriptedServer

from compass.cli import main
from compass.errors import CompassError
from compass.io import hash_tree, read_jsonl, write_jsonl
from compass.manifest import read_manifest
from compass.records import DocQuestion, Problem
from compass.runner import execute_stage
from compass.stagekit import run_stage
from support.shards import run_sharded
from compass.stages import distill, doc_questions, evidence, pages, pdf_fixtures


def outputs(folder: Path) -> dict[str, str]:
    return hash_tree(folder, exclude=["manifest.json"])


def digest(body: dict) -> int:
    return int(hashlib.sha256(json.dumps(body["messages"], sort_keys=True).encode()).hexdigest(), 16)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Three generated reports, their pages, and their questions plus one about a document that is not there."""
    root = tmp_path_factory.mktemp("shard-requests")
    run_stage(pdf_fixtures, pdf_fixtures.Config(n_docs=3, min_extra_pages=0, max_extra_pages=1, seed=4), {}, root / "fx")
    run_stage(pages, pages.Config(max_long_side=48, workers=1), {"pdfs": root / "fx" / "pdfs"}, root / "pages")
    questions = read_jsonl(root / "fx" / "questions.jsonl", DocQuestion)
    lost = questions[0].model_copy(update={"id": "lost-question", "doc_id": "no-such-report"})
    write_jsonl(root / "questions.jsonl", [*questions[:2], lost, *questions[2:]])  # a question reject mid-file
    return root


def evidence_reply(body: dict) -> str:
    """A pure function of the prompt (both runs get the same answers); every seventh prompt is never JSON."""
    value = digest(body)
    if value % 7 == 0:
        return "no JSON here"
    return json.dumps({"evidence": f"quote {value % 1000}", "relevance_score": value % 11})


def test_evidence_shards_gather_to_the_unsharded_bytes(corpus, tmp_path):
    inputs = {"pages": corpus / "pages" / "pages.jsonl", "questions": corpus / "questions.jsonl"}
    lexical = execute_stage("evidence", evidence.Config(), inputs, tmp_path / "lexical")
    joined = run_sharded("evidence", evidence.Config(), inputs, tmp_path / "lexical-shards", 3)
    assert outputs(joined) == lexical.manifest.outputs and read_manifest(joined).metrics == lexical.manifest.metrics
    assert lexical.manifest.metrics["rejected_questions"] == 1

    with ScriptedServer(evidence_reply, slots=4) as server:
        cfg = evidence.Config(backend="openai", openai={"base_urls": [server.base_url], "model": "vlm", "concurrency": 4},
                              parse_retries=0, max_reject_rate=1.0)
        whole = execute_stage("evidence", cfg, inputs, tmp_path / "whole")
        joined = run_sharded("evidence", cfg, inputs, tmp_path / "shards", 2)
        assert execute_stage("evidence", cfg.model_copy(update={"shard": "1/2"}), inputs, tmp_path / "shards" / "shard-1").cached
    metrics = whole.manifest.metrics
    assert metrics["reject_reasons"]["malformed_json"] > 0 and metrics["rejected_questions"] == 1
    # page rejects of every shard, then the question rejects: the unsharded file, byte for byte
    assert outputs(joined) == whole.manifest.outputs
    assert read_manifest(joined).metrics == metrics
    # the gate of the whole applies at gather: the unsharded limit refuses what the shards hold together
    strict = cfg.model_copy(update={"max_reject_rate": 0.01})
    with ScriptedServer(evidence_reply, slots=4) as server:
        strict = strict.model_copy(update={"openai": strict.openai.model_copy(update={"base_urls": [server.base_url]})})
        for index in range(2):
            execute_stage("evidence", strict.model_copy(update={"shard": f"{index}/2"}), inputs, tmp_path / "strict" / f"s{index}")
    with pytest.raises(CompassError, match=r"evidence: \d+ of \d+ pages rejected .*malformed_json"):
        execute_stage("evidence", strict, inputs, tmp_path / "strict" / "joined",
                      gather_from=[tmp_path / "strict" / "s0", tmp_path / "strict" / "s1"])
    assert not (tmp_path / "strict" / "joined" / "evidence.jsonl").exists()


def question_reply(body: dict) -> str:
    parts = body["messages"][0]["content"]
    labels = [p["text"] for p in parts if p["type"] == "text" and p["text"].startswith("Page ")]
    if digest(body) % 5 == 0:
        return "I think the question is about revenue."  # malformed every time: a reject
    return json.dumps({"question": f"What do {', '.join(labels)} say?", "answer": str(len(labels)), "answer_format": "Int"})


def test_doc_questions_shards_split_whole_documents_and_gather_to_the_unsharded_bytes(corpus, tmp_path):
    inputs = {"pages": corpus / "pages" / "pages.jsonl"}
    with ScriptedServer(question_reply, slots=4) as server:
        cfg = doc_questions.Config(openai={"base_urls": [server.base_url], "model": "vlm", "concurrency": 3}, n_per_doc=4,
                                   parse_retries=0, max_reject_rate=1.0, seed=3)
        whole = execute_stage("doc-questions", cfg, inputs, tmp_path / "whole")
        joined = run_sharded("doc-questions", cfg, inputs, tmp_path / "shards", 2)
    assert whole.manifest.metrics["documents"] == 3 and whole.manifest.metrics["rejected"] > 0
    assert [read_manifest(tmp_path / "shards" / f"shard-{i}").metrics["documents"] for i in range(2)] == [1, 2]
    assert outputs(joined) == whole.manifest.outputs
    assert read_manifest(joined).metrics == whole.manifest.metrics


def test_distill_shards_gather_to_the_unsharded_bytes(tmp_path):
    problems = tmp_path / "problems.jsonl"
    write_jsonl(problems, [Problem(id=f"p{i}", source="toy", question=f"What is {i} + {i}?", reference_answer=str(2 * i),
                                   reference_solution=None if i % 4 == 3 else f"{i} + {i} = {2 * i}.") for i in range(11)])
    inputs = {"problems": problems}
    cfg = distill.Config(max_reject_rate=0.5, shard_size=3)  # the reference teacher: p3, p7 have no solution
    whole = execute_stage("distill", cfg, inputs, tmp_path / "whole")
    joined = run_sharded("distill", cfg, inputs, tmp_path / "shards", 3)
    assert sorted(whole.manifest.outputs) == ["rejects.jsonl", *(f"traces/traces-0000{i}.jsonl" for i in range(3))]
    assert outputs(joined) == whole.manifest.outputs  # the traces cut again into shard_size files
    assert read_manifest(joined).metrics == whole.manifest.metrics
    assert whole.manifest.metrics["rejects_by_reason"] == {"no_reference": 2}

    # n samples per problem over a server, sharded: the same bytes as one run, whatever order replies came in
    def reply(body: dict) -> str:
        question = body["messages"][-1]["content"]
        i = int(question.split()[2])
        answer = 2 * i if body["seed"] % 3 else 2 * i + 1  # about a third answer wrong
        return f"<Problem>\n{question}\n</Problem>\n\n<Thinking>\n{i}+{i}\n</Thinking>\n\n<Answer>\n\\boxed{{{answer}}}\n</Answer>"

    with ScriptedServer(reply, slots=4, latency_s=0.002) as server:
        served = distill.Config(backend="openai", openai={"base_urls": [server.base_url], "model": "m", "concurrency": 4},
                                n=2, temperature=0.7, max_reject_rate=1.0, shard_size=4)
        whole = execute_stage("distill", served, inputs, tmp_path / "served")
        joined = run_sharded("distill", served, inputs, tmp_path / "served-shards", 2)
    assert whole.manifest.metrics["samples"] == 22 and whole.manifest.metrics["rejects_by_reason"]["wrong_answer"] > 0
    assert outputs(joined) == whole.manifest.outputs
    assert read_manifest(joined).metrics == whole.manifest.metrics
    # the whole's limit at gather: each shard alone is not checked, and nothing is written
    strict = cfg.model_copy(update={"max_reject_rate": 0.1})
    for index in range(3):
        execute_stage("distill", strict.model_copy(update={"shard": f"{index}/3"}), inputs, tmp_path / "strict" / f"s{index}")
    with pytest.raises(CompassError, match=r"distill: 2 of 11 samples rejected .*no_reference"):
        execute_stage("distill", strict, inputs, tmp_path / "strict" / "joined",
                      gather_from=[tmp_path / "strict" / f"s{i}" for i in range(3)])
    assert not (tmp_path / "strict" / "joined" / "rejects.jsonl").exists()
