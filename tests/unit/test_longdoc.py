"""Long-document pieces as pure functions: score clamping, strict evidence parsing, threshold/sort/top-K,
traces, seeded <cot> placement shares, example messages, the PDF fixture generator (same seed, same bytes;
planted facts on their gold pages), the lexical extractor and question synthesis parsing."""
from __future__ import annotations

import hashlib
import json
import random
import re
from collections import Counter

import pytest

from compass.errors import CompassError
from compass.longdoc import synthetic_reports, traces
from compass.longdoc.evidence import (
    IRRELEVANT,
    LexicalExtractor,
    MalformedEvidence,
    clamp_score,
    final_score,
    parse_evidence,
    text_units,
    tokens,
)
from compass.stages.doc_questions import MalformedQuestion, SeedSet, draw_seed_pages, parse_question
from compass.records import DocQuestion, Page, PageEvidence


# --- scores ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw,expected", [(-3.0, 0.0), (0.0, 0.0), (5.5, 5.5), (10.0, 10.0), (12.0, 10.0), (1e9, 10.0)])
def test_clamp(raw, expected):
    assert clamp_score(raw) == expected


@pytest.mark.parametrize("raw,gold,expected", [
    (3.0, True, 6.0), (8.5, True, 8.5), (-1.0, True, 6.0), (14.0, True, 10.0),
    (3.0, False, 3.0), (-1.0, False, 0.0), (14.0, False, 10.0),
])
def test_gold_pages_raised_after_clamping(raw, gold, expected):
    assert final_score(raw, gold, 6.0) == expected


# --- strict JSON -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reply,expected", [
    ('{"evidence": "Revenue was 12,345.", "relevance_score": 7}', ("Revenue was 12,345.", 7.0)),
    ('  {"relevance_score": 2.5, "evidence": " x "}\n', ("x", 2.5)),
    ('```json\n{"evidence": "e", "relevance_score": 4}\n```', ("e", 4.0)),
    ('<think>let me look</think>\n{"evidence": "e", "relevance_score": 1}', ("e", 1.0)),
    ('{"evidence": "e", "relevance_score": 17}', ("e", 10.0)),
    ('{"evidence": "e", "relevance_score": -2}', ("e", 0.0)),
])
def test_parse_evidence_accepts(reply, expected):
    assert parse_evidence(reply) == expected


@pytest.mark.parametrize("reply,why", [
    ("not json", "not valid JSON"),
    ('{"evidence": "e", "relevance_score": 4', "not valid JSON"),
    ('Sure! {"evidence": "e", "relevance_score": 4}', "not valid JSON"),
    ('["e", 4]', "expected a JSON object"),
    ('{"evidence": "e"}', "exactly the keys"),
    ('{"evidence": "e", "relevance_score": 4, "page": 3}', "exactly the keys"),
    ('{"evidence": "", "relevance_score": 4}', "non-empty string"),
    ('{"evidence": 5, "relevance_score": 4}', "non-empty string"),
    ('{"evidence": "e", "relevance_score": "7"}', "finite number"),
    ('{"evidence": "e", "relevance_score": true}', "finite number"),
    ('{"evidence": "e", "relevance_score": NaN}', "finite number"),
    ('{"evidence": "e", "relevance_score": null}', "finite number"),
])
def test_parse_evidence_rejects(reply, why):
    with pytest.raises(MalformedEvidence, match=why):
        parse_evidence(reply)


# --- threshold, sort, top-K, trace ---------------------------------------------------------------------------


def ev(page: int, score: float, text: str = "") -> PageEvidence:
    return PageEvidence(question_id="q", doc_id="d", page_index=page, evidence=text or f"e{page}", relevance_score=score)


def test_select_pages_threshold_is_strict_sorted_high_to_low_ties_by_page():
    evidence = [ev(0, 0.0), ev(1, 1.0), ev(2, 7.5), ev(3, 1.1), ev(4, 9.0), ev(5, 7.5), ev(6, 0.5), ev(7, 10.0)]
    assert [(e.page_index, e.relevance_score) for e in traces.select_pages(evidence)] == [
        (7, 10.0), (4, 9.0), (2, 7.5), (5, 7.5), (3, 1.1)]
    assert [e.page_index for e in traces.select_pages(evidence, top_k=3)] == [7, 4, 2]
    assert [e.page_index for e in traces.select_pages(evidence, threshold=8.0)] == [7, 4]
    assert traces.select_pages([ev(0, 0.0), ev(1, 1.0)]) == []


def test_select_pages_top_k_24_of_40():
    evidence = [ev(i, 1.5 + (i % 10) * 0.5) for i in range(40)]
    kept = traces.select_pages(evidence)
    assert len(kept) == 24
    assert [e.page_index for e in kept[:5]] == [9, 19, 29, 39, 8]  # 6.0 x4 (page order), then 5.5
    assert min(e.relevance_score for e in kept) == 3.5  # 4.0 and 3.5: 4 + 4 + 4 + 4 + 4 + 4 = 24 pages from 6.0 down
    with pytest.raises(CompassError, match="top_k"):
        traces.select_pages(evidence, top_k=0)


def test_build_trace_exact():
    selected = traces.select_pages([ev(2, 3.0, "Revenue 12,345. "), ev(0, 9.0, "Table: net income 408"), ev(5, 0.0, "x")])
    assert traces.build_trace(selected) == "Page 1: Table: net income 408\n\nPage 3: Revenue 12,345."
    with pytest.raises(CompassError):
        traces.build_trace([])


# --- <cot> placement and branches ----------------------------------------------------------------------------


def test_placement_and_branch_shares_within_two_points_on_10k():
    weights = traces.check_weights({"system": 0.45, "user_prepend": 0.25, "user_append": 0.25, "none": 0.05})
    ids = [f"doc-{i // 11}/q{i % 11}" for i in range(10_000)]
    placements = Counter(traces.draw_placement(42, qid, weights) for qid in ids)
    for name, weight in weights.items():
        assert abs(placements[name] / 10_000 - weight) < 0.02, (name, placements)
    branches = Counter(traces.draw_branch(42, qid, 0.5) for qid in ids)
    assert abs(branches["vision"] / 10_000 - 0.5) < 0.02
    other = weights | {"system": 0.0, "none": 0.5}
    assert Counter(traces.draw_placement(42, qid, other) for qid in ids)["system"] == 0


def test_draws_are_seeded_and_independent_of_other_questions():
    weights = traces.check_weights({"system": 0.45, "user_prepend": 0.25, "user_append": 0.25, "none": 0.05})
    first = [traces.draw_placement(7, f"q{i}", weights) for i in range(200)]
    assert first == [traces.draw_placement(7, f"q{i}", weights) for i in range(200)]
    assert first != [traces.draw_placement(8, f"q{i}", weights) for i in range(200)]
    assert traces.draw_placement(7, "q5", weights) == first[5]  # alone, same draw as among others


@pytest.mark.parametrize("weights,why", [
    ({"system": 0.5, "user_prepend": 0.5}, "exactly"),
    ({"system": 0.5, "user_prepend": 0.25, "user_append": 0.25, "none": 0.05}, "sum to 1"),
    ({"system": 1.1, "user_prepend": -0.1, "user_append": 0.0, "none": 0.0}, ">= 0"),
])
def test_bad_placement_weights(weights, why):
    with pytest.raises(CompassError, match=why):
        traces.check_weights(weights)


def test_example_messages_for_every_placement():
    pages = "Page 1:\n<image>\nPage 2:\n<image>\n"
    q, trace, answer = "What was revenue?", "Page 2: Revenue 10.", "10"
    think = "<think>\nPage 2: Revenue 10.\n</think>\n\n10"
    as_pairs = lambda ms: [(m.role, m.content) for m in ms]  # noqa: E731
    assert as_pairs(traces.example_messages(q, [0, 1], "system", trace, answer)) == [
        ("system", "<cot>"), ("user", pages + q), ("assistant", think)]
    assert as_pairs(traces.example_messages(q, [0, 1], "user_prepend", trace, answer)) == [
        ("user", "<cot>\n" + pages + q), ("assistant", think)]
    assert as_pairs(traces.example_messages(q, [0, 1], "user_append", trace, answer)) == [
        ("user", pages + q + "\n<cot>"), ("assistant", think)]
    assert as_pairs(traces.example_messages(q, [0, 1], "none", None, answer)) == [("user", pages + q), ("assistant", "10")]
    with pytest.raises(CompassError, match="needs a trace"):
        traces.example_messages(q, [0, 1], "system", None, answer)


def test_shown_pages_all_or_capped_with_the_trace_pages_kept():
    selected = [ev(30, 9.0), ev(7, 8.0)]
    assert traces.shown_pages(5, selected, None) == [0, 1, 2, 3, 4]
    assert traces.shown_pages(5, selected, 8) == [0, 1, 2, 3, 4]
    assert traces.shown_pages(40, selected, 4) == [0, 1, 7, 30]
    assert traces.example_messages("Q", [0, 1, 7, 30], "none", None, "A")[0].content == (
        "Page 1:\n<image>\nPage 2:\n<image>\nPage 8:\n<image>\nPage 31:\n<image>\nQ")
    with pytest.raises(CompassError, match="do not fit"):
        traces.shown_pages(40, selected, 1)


def test_answer_prompts_of_the_two_branches():
    question = DocQuestion(id="q", doc_id="d", question="Q?", answer="A")
    selected = [ev(4, 9.0, "four"), ev(1, 7.0, "one")]
    vision = traces.vision_answer_messages(question, selected, ["data:a", "data:b"])
    assert [m["role"] for m in vision] == ["user"]  # no system prompt
    assert [p.get("text", p.get("image_url", {}).get("url")) for p in vision[0]["content"]] == [
        "Page 5:", "data:a", "Page 2:", "data:b", "Q?"]
    text = traces.text_answer_messages(question, selected, 24)
    assert text[0]["role"] == "system" and "page by page" in text[0]["content"] and "24" in text[0]["content"]
    assert text[1]["content"] == "Evidence:\n\nPage 5: four\n\nPage 2: one\n\nQuestion: Q?"


# --- PDF fixtures --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reports():
    return synthetic_reports.generate_reports(2, seed=3, min_extra_pages=0, max_extra_pages=1, ja_fraction=0.5)


def test_fixture_pdfs_same_seed_same_bytes(reports):
    again = synthetic_reports.generate_reports(2, seed=3, min_extra_pages=0, max_extra_pages=1, ja_fraction=0.5)
    digest = lambda rs: hashlib.sha256(b"".join(r.pdf for r in rs)).hexdigest()  # noqa: E731
    assert digest(again) == digest(reports)
    assert [q.model_dump() for r in again for q in r.questions] == [q.model_dump() for r in reports for q in r.questions]
    other = synthetic_reports.generate_reports(2, seed=4, min_extra_pages=0, max_extra_pages=1, ja_fraction=0.5)
    assert digest(other) != digest(reports)


def page_texts(pdf: bytes) -> list[str]:
    import pypdfium2 as pdfium

    doc = pdfium.PdfDocument(pdf)
    try:
        return [doc[i].get_textpage().get_text_range().replace("\r\n", "\n") for i in range(len(doc))]
    finally:
        doc.close()


def test_planted_facts_sit_on_their_gold_pages(reports):
    for report in reports:
        texts = page_texts(report.pdf)
        assert len(texts) == report.num_pages
        kinds = Counter()
        for q in report.questions:
            if not q.gold_pages:
                kinds["unanswerable"] += 1
                assert q.answer == "Not answerable" and q.answer_format == "None"
                continue
            kinds["single" if len(q.gold_pages) == 1 else "cross"] += 1
            gold_text = " ".join(" ".join(texts[p].split()) for p in q.gold_pages)  # wrapped lines joined
            if q.answer_format == "Int" and len(q.gold_pages) == 1:
                assert f"{int(q.answer):,}" in gold_text, (q.id, q.answer)
                others = [t for i, t in enumerate(texts) if i not in q.gold_pages]
                assert not any(f"{int(q.answer):,}" in t for t in others if q.id.endswith("/employees")), q.id
            elif q.answer_format in ("Float", "Str"):
                assert q.answer in gold_text, (q.id, q.answer)
            elif q.answer_format == "List":
                for name in json.loads(q.answer.replace("'", '"')):
                    assert name in gold_text
        assert kinds == {"single": 7, "cross": 2, "unanswerable": 2}
        assert any("株式会社" in t for t in texts)  # Japanese text is real text, not boxes
        langs = Counter("ja" if any(ord(c) > 0x3000 for c in q.question) else "en" for q in report.questions)
        assert set(langs) <= {"en", "ja"}


def test_cross_page_answers_combine_two_pages(reports):
    report = reports[0]
    texts = page_texts(report.pdf)
    growth = next(q for q in report.questions if q.id.endswith("/forecast_growth"))
    outlook, highlights = (texts[p] for p in growth.gold_pages)
    numbers = lambda t: {int(n.replace(",", "")) for n in re.findall(r"\d{1,3}(?:,\d{3})+", t)}  # noqa: E731
    assert any(a - b == int(growth.answer) for a in numbers(outlook) | numbers(highlights)
               for b in numbers(outlook) | numbers(highlights))


def test_text_outside_the_font_subset_fails_loudly(reports):
    from compass.longdoc.synthetic_reports import ReportPDF, make_company

    company = make_company(random.Random(0), "x", set())
    with pytest.raises(CompassError, match="outside the shipped font subset"):
        ReportPDF(company).check("売上高は𠀋")


# --- lexical extractor ---------------------------------------------------------------------------------------


def test_tokens_and_units():
    assert tokens("What was Revenue in FY2023, 12,345 yen?") == ["revenue", "fy", "2023", "12345", "yen"]  # FY2023 matches 2023年度
    assert tokens("従業員数") == ["従業", "業員", "員数"]
    text = ("Employees / 従業員の状況\nAs of March 31, 2024, the Group had 4,229 employees. The average age of employees was\n"
            "38.3 years.\nSegment / セグメント\nOverseas 491\nConsumer 362")
    assert text_units(text) == [
        "Employees / 従業員の状況",
        "As of March 31, 2024, the Group had 4,229 employees.",
        "The average age of employees was 38.3 years.",
        "Segment / セグメント | Overseas 491 | Consumer 362",
    ]


def test_lexical_extractor_finds_gold_pages_and_marks_irrelevant_ones(reports):
    report = reports[0]
    texts = page_texts(report.pdf)
    pages = [Page(doc_id=report.doc_id, page_index=i, image="x.png", width=1, height=1, text=t) for i, t in enumerate(texts)]
    extractor = LexicalExtractor()
    hits = 0
    single = [q for q in report.questions if len(q.gold_pages) == 1]
    for q in single:
        scored = extractor.score_document(q, pages)
        assert all(0.0 <= s <= 10.0 for _, s in scored)
        assert all(e == IRRELEVANT for e, s in scored if s == 0.0)
        best = max(range(len(scored)), key=lambda i: scored[i][1])
        hits += best in q.gold_pages
        assert scored[q.gold_pages[0]][0] != IRRELEVANT  # a gold page always quotes something
    assert hits >= len(single) - 2, hits  # a lexical scorer ranks the planted page first for most questions
    employees = next(q for q in report.questions if q.id.endswith("/employees"))
    evidence, score = extractor.score_document(employees, pages)[employees.gold_pages[0]]
    assert f"{int(employees.answer):,}" in evidence and score > 1.0


# --- question synthesis ------------------------------------------------------------------------------------------


def test_seed_page_draws_cover_one_to_sixteen_pages():
    rng = random.Random(0)
    sizes = Counter()
    for _ in range(2000):
        chosen = draw_seed_pages(rng, 40, 1, 16)
        assert chosen == sorted(set(chosen)) and all(0 <= p < 40 for p in chosen)
        sizes[len(chosen)] += 1
    assert set(sizes) == set(range(1, 17))
    assert draw_seed_pages(random.Random(1), 3, 1, 16) in ([0], [1], [2], [0, 1], [0, 2], [1, 2], [0, 1, 2])
    assert len(draw_seed_pages(random.Random(1), 3, 5, 16)) == 3  # capped by the document's length


def test_parse_question():
    page = lambda i: Page(doc_id="d", page_index=i, image="x.png", width=1, height=1)  # noqa: E731
    seed = SeedSet("d", 0, [page(2), page(7)])
    q = parse_question(seed, '```json\n{"question": "Q?", "answer": ["a", "b"], "answer_format": "List"}\n```')
    assert (q.id, q.question, q.answer, q.answer_format, q.gold_pages) == ("d/synth-0", "Q?", "['a', 'b']", "List", [2, 7])
    for bad in ['{"question": "Q?", "answer": "1"}', '{"question": "", "answer": "1", "answer_format": "Int"}',
                '{"question": "Q", "answer": "1", "answer_format": "Number"}', "nope"]:
        with pytest.raises(MalformedQuestion):
            parse_question(seed, bad)


# --- the resume journal ----------------------------------------------------------------------------------------


def test_journal_cuts_a_torn_line_and_drops_another_runs_journal(tmp_path):
    from compass.longdoc.streaming import OK, REJECT, Journal

    path = tmp_path / "j.jsonl"
    journal = Journal(path, "fp1")
    journal.add(0, 0, "ok", {"x": 1})
    journal.add(2, 0, "retry", "not JSON")
    journal.add(1, 0, "reject", {"reason": "backend_error"})
    journal.close()
    with open(path, "ab") as fh:
        fh.write(b'{"i": 2, "a": 1, "k": "ok", "v": {"x"')  # killed mid-write
    again = Journal(path, "fp1")
    assert list(again.state) == [OK, REJECT, 0] and again.resumed == 2 and again.due[0] == 1
    assert again.needs(2, 1) and not again.needs(2, 0) and not again.needs(0, 0) and again.needs(3, 0)
    with open(path, "rb") as fh:
        assert again.read(0, fh) == ("ok", {"x": 1})
    again.add(2, 1, "ok", {"x": 3})
    again.close()
    assert path.read_bytes().endswith(b'{"i": 2, "a": 1, "k": "ok", "v": {"x": 3}}\n')
    other = Journal(path, "fp2")  # another config or other inputs: starts empty
    assert list(other.state) == [] and other.resumed == 0
    other.close()
