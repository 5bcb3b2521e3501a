"""GSM8K / MGSM-ja: the published MGSM TSV loads in eval and in sources; answer checking never raises on model
text and answers within a time limit."""
import time
from pathlib import Path

import pytest

from compass.formats import extract_boxed
from compass.formats.equivalence import MAX_ANSWER_CHARS, answers_match, check_answer

MGSM_ROWS = Path(__file__).resolve().parents[1] / "fixtures" / "mgsm" / "mgsm_ja_rows.tsv"  # real url-nlp rows


def test_mgsm_tsv_as_published_loads_in_eval_with_thousands_commas_read():
    from compass.evals.math import load_items

    items = load_items("mgsm_ja", MGSM_ROWS)
    assert [i.answer for i in items] == ["18", "3", "70000", "2125", "114200"]
    assert items[0].question.startswith("ジャネットのアヒルは1日に16個の卵を生みます。") and items[0].lang == "ja"
    assert [i.id for i in items] == [f"mgsm_ja/{n}" for n in range(5)]


def test_mgsm_tsv_loads_in_the_sources_stage(tmp_path):
    from compass.io import read_jsonl
    from compass.runner import execute_stage
    from compass.stages.sources import Config

    config = Config.model_validate({"datasets": [{"name": "mgsm_ja", "path": str(MGSM_ROWS), "split": "test"}]})
    result = execute_stage("sources", config, {}, tmp_path / "out")
    problems = read_jsonl(next((result.out_dir).glob("*.jsonl")))
    assert [p["reference_answer"] for p in problems] == ["18", "3", "70000", "2125", "114200"]
    assert problems[3]["meta"]["gsm8k_test_index"] == 3 and problems[0]["lang"] == "ja"


def test_mgsm_tsv_errors_name_the_line(tmp_path):
    from compass.errors import CompassError
    from compass.evals.math import load_items

    bad = tmp_path / "bad.tsv"
    bad.write_text("q1\t12\nq2\tmany\n", encoding="utf-8")
    with pytest.raises(CompassError, match=r"bad.tsv:2: answer_number 'many' is not a number"):
        load_items("mgsm_ja", bad)
    bad.write_text("q1\t12\textra\n", encoding="utf-8")
    with pytest.raises(CompassError, match=r"bad.tsv:1: expected 2 tab-separated fields"):
        load_items("mgsm_ja", bad)


@pytest.mark.parametrize("text, reference", [
    ("\\boxed{1\\,234}", "1234"), ("\\boxed{1{,}234}", "1234"), ("\\boxed{12\\,345\\,678}", "12345678"),
    ("1\u2009234", "1,234"), ("2,125", "2125"),
])
def test_latex_digit_grouping_reads_as_thousands(text, reference):
    assert answers_match(extract_boxed(text) or text, reference)


def test_digit_grouping_does_not_glue_unrelated_numbers():
    assert not answers_match("1\\,23", "123")  # two digits after the space: not a thousands group
    assert not answers_match("\\boxed{1\\,234}", "1")


@pytest.mark.parametrize("prediction, reason", [
    ("7" * 5000, "prediction of 5000 characters"),  # int() of 4,300+ digits raises in Python
    ("\\frac{" * 60 + "1" + "}" * 60, "nests brackets 60 deep"),
    ("{" * 400, "nests brackets 400 deep"),
])
def test_hostile_answers_are_no_match_with_a_reason_and_never_raise(prediction, reason):
    started = time.monotonic()
    match, why = check_answer(prediction, "7")
    assert match is False and reason in why
    assert time.monotonic() - started < 2.0


def test_a_huge_reference_number_is_no_match_not_an_exception():
    match, why = check_answer("7", "9" * (MAX_ANSWER_CHARS + 1))
    assert match is False and "digits" in why


@pytest.mark.parametrize("prediction", ["\ud800", "\u202e42\u202c", "𝟒𝟐", "٤٢", "\x00\x01", "\\sqrt{" * 20 + "4" + "}" * 20])
def test_odd_unicode_and_nesting_finish_within_the_time_limit(prediction):
    started = time.monotonic()
    match, _ = check_answer(prediction, "42", timeout_s=2)
    assert isinstance(match, bool)
    assert time.monotonic() - started < 10.0  # two math-verify calls, each under its 2 s limit


def test_math_score_records_why_an_answer_could_not_be_checked():
    from compass.evals.math import MathItem, build_requests, score
    from compass.generate.base import GenResult

    items = [MathItem("a", "q", "1234", "en"), MathItem("b", "q", "5", "en")]
    results = {"a": GenResult("a", "<Answer>\\boxed{1\\,234}</Answer>", None, 1, 9, 0.0, "stop"),
               "b": GenResult("b", "\\boxed{" + "5" * 5000 + "}", None, 1, 9, 0.0, "stop")}
    requests = {r.id: r for r in build_requests(items, cot=False, max_tokens=8, seed=0)}
    rows, metrics = score(items, results, requests)
    assert [r["score"] for r in rows] == [1.0, 0.0] and metrics["accuracy"] == 0.5
    assert rows[0]["check"] is None and "5000 characters" in rows[1]["check"]
