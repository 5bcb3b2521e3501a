"""The eval stage runs MMLongBench-Doc under both protocols side by side, over real HTTP (scripted server for
the model and the extractor), on rows in samples.json's schema with every published quirk: the unscorable
golds are found before any generation and left out of both, the reference figures equal what the
benchmark's own scorer computed for the same extracted answers, each metric is named with its protocol."""
import json
import re
from pathlib import Path

import pytest

from compass.evals import mmlongbench
from compass.evals.mmlongbench_score import score_answer
from compass.io import read_jsonl
from compass.runner import execute_stage
from compass.stages.evaluate import Config
from support.scripted_server import ScriptedServer

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "evals"
SPEC = json.loads((FIXTURES / "mmlongbench_reference_cases.json").read_text(encoding="utf-8"))
VALUES = json.loads((FIXTURES / "mmlongbench_reference_values.json").read_text(encoding="utf-8"))
QUIRKS = FIXTURES / "mmlongbench_quirks.json"
PROMPT = "STAND-IN EXTRACTION PROMPT (the real one is read from the user's checkout)\n"


def _pdf(path: Path, pages: int) -> None:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("helvetica", size=14)
    for n in range(pages):
        pdf.add_page()
        pdf.cell(text=f"page {n + 1}")
    pdf.output(str(path))


@pytest.fixture(scope="module")
def both_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mmlongbench-both")
    rows = json.loads(QUIRKS.read_text(encoding="utf-8"))
    docs, checkout = tmp / "docs", tmp / "MMLongBench-Doc"
    docs.mkdir()
    for doc_id in {r["doc_id"] for r in rows}:
        _pdf(docs / doc_id, 3)
    (checkout / "eval").mkdir(parents=True)
    (checkout / "eval" / "prompt_for_answer_extraction.md").write_text(PROMPT, encoding="utf-8")
    answer_of = {r["question"]: p for r, p in zip(rows, SPEC["predictions"])}

    def reply(body):
        messages = body["messages"]
        if messages[0]["role"] == "user" and messages[0]["content"] == PROMPT:  # the reference's extractor
            question = re.search(r"\nQuestion:(.*)\nAnalysis:", messages[1]["content"]).group(1)
            return f"Extracted answer: {answer_of[question]}\nAnswer format: String"
        parts = messages[-1]["content"]
        question = parts[0]["text"] if parts[0]["type"] == "text" and not parts[0]["text"].startswith("Page ") \
            else parts[-1]["text"]
        return answer_of[question]  # the model answers with the short answer itself

    with ScriptedServer(reply) as server:
        settings = {"base_urls": [server.base_url], "model": "scripted", "max_retries": 0}
        config = Config(tasks=["mmlongbench"], backend="openai", openai=settings,
                        mmlongbench={"protocol": "both", "repo": str(checkout), "extractor_openai": settings,
                                     "dpi": 20, "max_pages": 2, "reference_max_pages": 120})
        result = execute_stage("eval", config, {"mmlongbench": QUIRKS, "mmlongbench_docs": docs}, tmp / "out")
        seen = list(server.requests_seen)
    return result, seen, rows


def test_unscorable_golds_are_left_out_before_generation(both_run):
    result, seen, rows = both_run
    m = result.manifest.metrics
    scorable = len(rows) - len(SPEC["unscorable"])
    assert m["mmlongbench.unscorable_golds.n"] == len(SPEC["unscorable"]) == 5
    assert m["mmlongbench.reference.n"] == m["mmlongbench.compass.n"] == scorable
    excluded = {rows[i]["question"] for i in SPEC["unscorable"]}
    assert not [b for b in seen if any(q in json.dumps(b["messages"], ensure_ascii=False) for q in excluded)]
    listed = read_jsonl(result.out_dir / "predictions" / "mmlongbench.unscorable_golds.jsonl")
    assert [r["answer"] for r in listed] == [rows[i]["answer"] for i in SPEC["unscorable"]]


def test_reference_figures_equal_the_benchmark_scorer(both_run):
    result, _, rows = both_run
    m = result.manifest.metrics
    assert m["mmlongbench.reference.accuracy"] == VALUES["aggregate"]["accuracy"]
    assert m["mmlongbench.reference.f1"] == VALUES["aggregate"]["f1"]
    kept = [i for i in range(len(rows)) if i not in SPEC["unscorable"]]
    predicted = read_jsonl(result.out_dir / "predictions" / "mmlongbench.reference.jsonl")
    assert [(r["pred"], r["score"]) for r in predicted] == [(VALUES["rows"][i]["pred"], VALUES["rows"][i]["score"]) for i in kept]
    assert m["mmlongbench.reference.source.table.n"] == 5 and m["mmlongbench.reference.doc_type.academic_paper.n"] == 5
    assert m["mmlongbench.reference.single_page.n"] == 11


def test_compass_figures_use_the_corrected_scorer(both_run):
    result, _, rows = both_run
    m = result.manifest.metrics
    kept = [i for i in range(len(rows)) if i not in SPEC["unscorable"]]
    expected = [score_answer(rows[i]["answer"], mmlongbench.rule_extract(SPEC["predictions"][i]), rows[i]["answer_format"],
                             rows[i]["question"]) for i in kept]
    assert m["mmlongbench.compass.accuracy"] == pytest.approx(sum(expected) / len(expected))
    by_question = {r["input"]["question"]: r["score"] for r in read_jsonl(result.out_dir / "predictions" / "mmlongbench.compass.jsonl")}
    assert by_question[rows[9]["question"]] == 1.0  # '[1,500, 8,000]' (reference: 0)
    assert by_question[rows[8]["question"]] == 1.0  # apostrophes in list items (reference: a SyntaxError, 0)
    assert by_question[rows[10]["question"]] == 0.0  # 'Chapter 4' for 'Chapter 3' (reference: ANLS 0.89)
    assert by_question[rows[11]["question"]] == 0.0  # 4999 for $49.99 (reference: x100 accepted)
    assert by_question[rows[13]["question"]] == 1.0  # '[Not answerable]' (reference: ANLS 0.875)
    assert m["mmlongbench.compass.accuracy"] > m["mmlongbench.reference.accuracy"] - 1  # both present, named


def test_each_protocol_sends_its_own_prompt(both_run):
    _, seen, rows = both_run
    model = [b for b in seen if b["messages"][0]["content"] != PROMPT]
    extractor = [b for b in seen if b["messages"][0]["content"] == PROMPT]
    scorable = len(rows) - len(SPEC["unscorable"])
    assert len(model) == 2 * scorable and len(extractor) == scorable  # compass extracts by rule (default)
    reference_parts = [b["messages"][-1]["content"] for b in model if b["messages"][-1]["content"][0]["type"] == "text"
                       and not b["messages"][-1]["content"][0]["text"].startswith("Page ")]
    compass_parts = [b["messages"][-1]["content"] for b in model if b["messages"][-1]["content"][0].get("text", "").startswith("Page ")]
    assert len(reference_parts) == len(compass_parts) == scorable
    assert [p["type"] for p in reference_parts[0]] == ["text", "image_url", "image_url", "image_url"]  # all 3 pages
    assert [p["type"] for p in compass_parts[0]] == ["text", "image_url", "text", "image_url", "text"]  # max_pages 2
    assert [m["role"] for m in extractor[0]["messages"]] == ["user", "assistant"]
    assert all("seed" not in b for b in extractor + [b for b in model if b["messages"][-1]["content"] in reference_parts])
