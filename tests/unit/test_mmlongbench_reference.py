"""MMLongBench-Doc reference protocol: every score equals what the benchmark's own eval/eval_score.py computed
for the same case (values in tests/fixtures/evals/mmlongbench_reference_values.json, produced by
tests/support/mmlongbench_reference_values.py from a checkout of the benchmark), the samples.json quirks load
as published, unscorable golds are found before generation, and the extraction request goes to a real
OpenAI-compatible server the way eval/extract_answer.py sends it."""
import json
import re
from pathlib import Path

import pytest

from compass.errors import CompassError
from compass.evals import mmlongbench, mmlongbench_reference as reference
from compass.evals.mmlongbench_score import score_answer
from compass.generate.base import GenResult
from compass.generate.config import OpenAISettings, TransformersSettings, make_backend
from support.scripted_server import ScriptedServer

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "evals"
SPEC = json.loads((FIXTURES / "mmlongbench_reference_cases.json").read_text(encoding="utf-8"))
VALUES = json.loads((FIXTURES / "mmlongbench_reference_values.json").read_text(encoding="utf-8"))
QUIRKS = FIXTURES / "mmlongbench_quirks.json"

# bracketed answers that are Python expressions, not literals: the reference eval()s them and gets a value;
# compass never executes model text, so these take the reference's exception path (documented in the module)
EVAL_ONLY = {("[2]", "List", "[1+1]"), ("['ab']", "List", "[len('ab')]")}
CASES = [(*case, value) for case, value in zip(SPEC["cases"], VALUES["cases"], strict=True)]


def test_values_file_matches_the_cases():
    assert len(VALUES["cases"]) == len(SPEC["cases"]) >= 80
    assert len(VALUES["rows"]) == len(SPEC["predictions"]) == len(json.loads(QUIRKS.read_text(encoding="utf-8")))


@pytest.mark.parametrize("gold, fmt, pred, value", [c for c in CASES if tuple(c[:3]) not in EVAL_ONLY],
                         ids=[f"{c[1]}-{i}" for i, c in enumerate(CASES) if tuple(c[:3]) not in EVAL_ONLY])
def test_score_equals_the_benchmark_scorer(gold, fmt, pred, value):
    if isinstance(value, str):  # the benchmark's scorer raised
        assert value.startswith("raises ")
        with pytest.raises(reference.ReferenceCrash):
            reference.score(gold, pred, fmt)
        out = reference.outcome(gold, pred, fmt)
        assert (out.pred, out.score) == (reference.FAILED_TO_EXTRACT, 0.0) and out.error
    else:
        assert reference.score(gold, pred, fmt) == value


@pytest.mark.parametrize("gold, fmt, pred", sorted(EVAL_ONLY))
def test_only_eval_could_agree_on_expressions(gold, fmt, pred):
    value = VALUES["cases"][SPEC["cases"].index([gold, fmt, pred])]
    assert isinstance(value, float)  # the benchmark computed a score by running the answer
    with pytest.raises(reference.ReferenceCrash, match="only eval"):
        reference.score(gold, pred, fmt)


def test_the_quirks_the_issue_names_are_cases():
    by_case = {tuple(c[:3]): c[3] for c in CASES}
    assert by_case[("yes", "Int", "yes")] == 0.0 and by_case[("GPT-4", "Int", "GPT-4")] == 0.0
    assert by_case[("14:04 CET", "Int", "14:04 CET")] == 0.0 and by_case[("21%", "Int", "21%")] == 0.0
    assert by_case[("N/A", "Str", "N/A")] == 1.0  # the reference scores it; compass's old scorer gave 0
    assert by_case[("8", "Int", "8.9")] == 1.0  # truncation
    assert by_case[("49.99", "Float", "4999")] == 1.0  # x100 accepts a price as its cents
    assert by_case[("['18', '29-65+']", "List", "['18-29', '65+']")] == 1.0  # '-'.join
    assert by_case[("[]", "List", "[]")] == "raises IndexError"
    assert by_case[("Chapter 10", "Str", "Chapter 11")] == 0.9  # ANLS partial credit for a wrong number


def rows_and_items():
    items = mmlongbench.load_items(QUIRKS)
    return items, [reference.outcome(i.answer, p, i.answer_format) for i, p in zip(items, SPEC["predictions"])]


def test_rows_record_what_the_benchmark_runner_records():
    _, outcomes = rows_and_items()
    assert [(o.pred, o.score) for o in outcomes] == [(r["pred"], r["score"]) for r in VALUES["rows"]]


def parse_show_results(lines: list[str]) -> dict:
    names = {"Single-page": "single_page", "Cross-page": "cross_page", "Unanswerable": "unanswerable"}
    out = {}
    for line in lines:
        if m := re.fullmatch(r"Overall (Acc|F1-score): (\S+) \| Question Number: (\d+)", line):
            out["accuracy" if m.group(1) == "Acc" else "f1"] = float(m.group(2))
            out["n"] = int(m.group(3))
        elif m := re.fullmatch(r"(?:(Evidence Sources|Document Type): )?(.+?) \| Accuracy: (\S+) \| Question Number: (\d+)", line):
            kind, name = m.group(1), m.group(2)
            key = names[name] if kind is None else ("source." if kind == "Evidence Sources" else "doc_type.") + reference.group_key(name)
            out[f"{key}.accuracy"], out[f"{key}.n"] = float(m.group(3)), int(m.group(4))
    return out


def test_aggregate_equals_show_results_over_the_scorable_rows():
    items, outcomes = rows_and_items()
    kept = [i for i in range(len(items)) if i not in SPEC["unscorable"]]
    rows = [reference.ReferenceRow(items[i].answer, outcomes[i].pred, outcomes[i].score, items[i].evidence_pages,
                                   items[i].evidence_sources, items[i].doc_type) for i in kept]
    metrics = reference.aggregate(rows)
    expected = parse_show_results(VALUES["aggregate"]["show_results"])
    assert len(expected) == 2 + 1 + 2 * 3 + 2 * 5 + 2 * 6  # acc, f1, n, 3 splits, 5 sources, 6 document types
    assert metrics["accuracy"] == VALUES["aggregate"]["accuracy"] and metrics["f1"] == VALUES["aggregate"]["f1"]
    assert {k: metrics[k] for k in expected} == pytest.approx(expected, rel=1e-12)
    # the reference's definitions: an unanswerable row with one evidence page is 'single-page', '[0]' is one page
    assert metrics["single_page.n"] == 11 and metrics["unanswerable.n"] == 2


def test_quirk_rows_load_as_published_and_unscorable_golds_are_found():
    items = mmlongbench.load_items(QUIRKS)
    assert items[0].evidence_pages == (0,) and items[1].evidence_pages == (0,)  # '[0]' kept, not refused
    assert items[15].evidence_sources == ("Table", "Chart") and items[13].evidence_sources == ()
    assert items[6].answer == "N/A" and items[12].answer == "73.2% " and items[18].answer == " 12.35"
    kept, problems = mmlongbench.check_golds(items)
    assert [items.index(next(i for i in items if i.id == p.id)) for p in problems] == SPEC["unscorable"]
    assert len(kept) + len(problems) == len(items)
    reasons = {p.answer: p.reason for p in problems}
    assert "reference scorer gives it 0" in reasons["yes"] and "not an integer" in reasons["yes"]
    assert "raises" in reasons["[]"]
    for item in kept:  # every gold kept scores 1 against itself under both protocols
        assert reference.score(item.answer, item.answer, item.answer_format) == 1.0
        assert score_answer(item.answer, item.answer, item.answer_format, item.question) == 1.0


def test_a_compass_only_run_is_not_narrowed_by_the_reference_scorer():
    items = mmlongbench.load_items(QUIRKS)
    _, problems = mmlongbench.check_golds(items, ("compass",))
    assert [p.answer for p in problems] == ["yes", "14:04 CET", "21%", "GPT-4"]  # '[]' scores 1 for compass
    _, problems = mmlongbench.check_golds(items, ("reference",))
    assert [p.answer for p in problems] == ["yes", "14:04 CET", "21%", "GPT-4", "[]"]
    separated = mmlongbench.DocItem("r#0", "r.pdf", "How many staff?", "1,250", "Int", (1,))
    assert mmlongbench.gold_problem(separated, ("compass",)) is None
    assert "reference scorer gives it 0" in mmlongbench.gold_problem(separated)  # int('1,250') fails there


def test_evidence_sources_are_read_not_executed(tmp_path):
    bad = tmp_path / "samples.json"
    bad.write_text(json.dumps([{"doc_id": "d.pdf", "doc_type": "Guidebook", "question": "q", "answer": "a",
                                "evidence_pages": "[1]", "evidence_sources": "[__import__('os').getcwd()]",
                                "answer_format": "Str"}]))
    with pytest.raises(CompassError, match="evidence_sources must be a list of names"):
        mmlongbench.load_items(bad)


@pytest.mark.parametrize("reply, expected", [
    ("Extracted answer: 10\nAnswer format: Integer", "10"),
    ("```\nExtracted answer: ['a', 'b']\nAnswer format: List\n```", "['a', 'b']"),
    ("Extracted answer: Not answerable\nAnswer format: String", "Not answerable"),
    ("Extracted answer:   Fail to answer  \nAnswer format: String", "Fail to answer"),
    ("Extracted answer: 5", "5"),  # no format line: everything after the marker
    ("Extracted answer: 5\nExtracted answer: 6\nAnswer format: Integer", "5"),  # the first one
    ("Answer format: Integer\nExtracted answer: 5", None),  # the marker after the first 'Answer format:'
    ("extracted answer: 5\nAnswer format: Integer", None),  # case-sensitive, as the reference splits
    ("The answer is 5.", None),
    ("Failed", None),
    (None, None),
])
def test_parse_extraction_as_the_reference_splits(reply, expected):
    assert reference.parse_extraction(reply) == expected


def test_extraction_prompt_is_read_from_the_checkout(tmp_path):
    with pytest.raises(CompassError, match="not a checkout of MMLongBench-Doc"):
        mmlongbench.load_extraction_prompt(tmp_path)
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "prompt_for_answer_extraction.md").write_text("PROMPT FROM THE CHECKOUT\n", encoding="utf-8")
    assert mmlongbench.load_extraction_prompt(tmp_path) == "PROMPT FROM THE CHECKOUT\n"


def test_reference_extractor_against_a_served_llm(tmp_path):
    """Real HTTP: the benchmark's prompt as the user turn, question + response in an assistant turn, the
    reference's sampling settings; replies parsed and scored the reference's way."""
    prompt = "Given the question and analysis, extract the answer.\n---\n"  # stands in for the checkout's file
    items = mmlongbench.load_items(QUIRKS)
    chosen = [items[1], items[11], items[13], items[9]]
    scripted = {
        items[1].question: "Extracted answer: 9\nAnswer format: Integer",
        items[11].question: "Extracted answer: 4999\nAnswer format: Float",
        items[13].question: "Extracted answer: [Not answerable]\nAnswer format: String",
        items[9].question: "I could not find it.",  # no marker: an extraction failure
    }

    def reply(body):
        user, assistant = body["messages"]
        question = re.search(r"\nQuestion:(.*)\nAnalysis:", assistant["content"]).group(1)
        return scripted[question]

    responses = {items[1].id: "There are 9 benchmarks.", items[11].id: "It costs 4999 cents.",
                 items[13].id: "The manual does not say.", items[9].id: None}
    requests = [mmlongbench.reference_extractor_request(i, responses[i.id], prompt) for i in chosen]
    with ScriptedServer(reply, latency_s=0.0, slots=4) as server:
        backend = make_backend("openai", OpenAISettings(base_urls=[server.base_url], model="extractor", concurrency=2),
                               TransformersSettings())
        replies = {r.id: r for r in backend.generate(iter(requests))}
        seen = list(server.requests_seen)
    assert len(seen) == 4
    for body in seen:
        assert [m["role"] for m in body["messages"]] == ["user", "assistant"]
        assert body["messages"][0]["content"] == prompt
        assert body["messages"][1]["content"].startswith("\n\nQuestion:") and body["messages"][1]["content"].endswith("\n")
        assert body["temperature"] == 0.0 and body["max_tokens"] == 256 and body["top_p"] == 1.0 and "seed" not in body
    failed = next(b for b in seen if items[9].question in b["messages"][1]["content"])
    assert failed["messages"][1]["content"].endswith("\nAnalysis:Failed\n")  # a failed generation, as the reference sends it
    results = {i.id: GenResult(i.id, responses[i.id], None if responses[i.id] else "HTTP 500", 1, 5, 0.0) for i in chosen}
    rows, metrics = mmlongbench.score_reference(chosen, results, replies, {i.id: 3 for i in chosen})
    assert [(r["extracted"], r["pred"], r["score"]) for r in rows] == [
        ("9", "9", 1.0), ("4999", "4999", 1.0), ("[Not answerable]", "[Not answerable]", 0.875),
        (None, reference.FAILED_TO_EXTRACT, 0.0)]
    assert metrics["extraction_failures"] == 1 and metrics["n"] == 4
    assert metrics["accuracy"] == pytest.approx((1 + 1 + 0.875) / 4)
    # precision counts '[Not answerable]' as answered (raw string compare): 2 correct of 4 answered, recall 2 of 3
    assert metrics["f1"] == pytest.approx(2 * (2 / 4) * (2 / 3) / (2 / 4 + 2 / 3))


def test_reference_request_layout():
    item = mmlongbench.load_items(QUIRKS)[1]
    pages = [Path("p1.png"), Path("p2.png")]
    req = mmlongbench.reference_request(item, pages, cot=False, for_http=False, max_tokens=64, seed=0)
    (turn,) = req.messages
    assert turn["role"] == "user"
    assert turn["content"] == [{"type": "text", "text": item.question}, {"type": "image"}, {"type": "image"}]
    assert req.meta["images"] == ["p1.png", "p2.png"]
    assert mmlongbench.REFERENCE_MAX_PAGES == 120
    on = mmlongbench.reference_request(item, pages, cot=True, for_http=False, max_tokens=64, seed=0)
    assert on.messages[0] == {"role": "system", "content": "<cot>"}


def test_settings_need_a_checkout_and_an_extractor_for_the_reference():
    with pytest.raises(ValueError, match="needs extractor_openai.model"):
        mmlongbench.MMLongBenchSettings(protocol="reference", repo=Path("x"))
    with pytest.raises(ValueError, match="needs repo"):
        mmlongbench.MMLongBenchSettings(protocol="both", extractor_openai={"model": "m"})
    s = mmlongbench.MMLongBenchSettings(protocol="both", repo=Path("x"), extractor_openai={"model": "m"})
    assert s.reference_max_pages == 120 and s.max_pages == 32
