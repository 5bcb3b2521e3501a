"""DPO pairs by corruption: exact corruptions, fallbacks, determinism by hash, strategy shares, rejects."""
from __future__ import annotations

import json
import random
import re
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compass.errors import CompassError
from compass.formats.boxed import extract_boxed
from compass.formats.reasoning import parse_reasoning
from compass.io import read_jsonl, sha256_file, write_jsonl
from compass.data.pairs import (
    NUMBER_RE,
    apply_strategy,
    corrupt,
    final_boxed_span,
    make_pair,
    normalized_weights,
    record_rng,
    tamper_answer_value,
    tamper_number,
    tamper_numbers,
)
from compass.records import Message, Pair, Reject, Trace
from support.traces import synthetic_trace
from compass.runner import execute_stage
from compass.stages import pairs as pairs_stage

DEFAULT = normalized_weights({"omit_thinking": 0.34, "tamper_thinking_numbers": 0.33, "tamper_answer": 0.33})
TEXT = (
    "<Problem>\nJohn has 12 apples.\n</Problem>\n\n"
    "<Thinking>\nHe buys 1,250 more at 3.50 each; x1 = 4.\n</Thinking>\n\n"
    "<Answer>\n\\boxed{1,262}\n</Answer>"
)
# Golden sha256 of pairs.jsonl for synthetic_trace(0..999), seed 42, default config. A change here means
# the output bytes changed: previously published pairs would no longer be reproduced.
GOLDEN_PAIRS_SHA256 = "55f30749327ba792ff110f6e18f131e612015b1ac06f969c4f7158f9b3178383"


def trace_with(text: str, tid: str = "t#0", **overrides) -> Trace:
    fields = dict(
        id=tid, problem_id="t", source="test", lang="en",
        messages=[Message(role="system", content="sys"), Message(role="user", content="q"), Message(role="assistant", content=text)],
        raw_output=text, reference_answer="1262", verified=True, teacher="test",
    )
    fields.update(overrides)
    return Trace(**fields)


def value(token: str) -> float:
    return float(token.replace(",", ""))


def shape(token: str) -> str:
    return re.sub(r"[0-9]", "9", token)


# --- numbers ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("token", "expected"),
    [("12", "14"), ("1,234", "1,451"), ("3.50", "4.00"), ("0.05", "0.07"), ("9", "7"), ("007", "009"), ("1,234,567.89", "1,363,834.77")],
)
def test_tamper_number_exact(token, expected):
    assert tamper_number(token, random.Random(0)) == expected


@settings(max_examples=300, deadline=None)
@given(token=st.from_regex(NUMBER_RE, fullmatch=True), seed=st.integers(0, 2**32))
def test_tamper_number_changes_value_keeps_shape(token, seed):
    new = tamper_number(token, random.Random(seed))
    assert shape(new) == shape(token)  # integers stay integers, decimals keep places, commas stay put
    assert value(new) != value(token)
    if len(token) > 1 and token[0] != "0":
        assert new[0] != "0"  # no leading zero appears


def test_tamper_numbers_skips_names_and_finds_japanese_counts():
    rng = random.Random(1)
    assert tamper_numbers("x1 and a_2 are names", rng) is None
    out = tamper_numbers("りんごが43個", random.Random(3))
    assert re.fullmatch(r"りんごが[0-9]{2}個", out) and out != "りんごが43個"
    # at least one number always changes, and only numbers change
    for seed in range(50):
        out = tamper_numbers("a 1 b 22 c 333", random.Random(seed))
        assert out != "a 1 b 22 c 333" and re.fullmatch(r"a [0-9] b [0-9]{2} c [0-9]{3}", out)


# --- answers ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("letter", ["A", "C", "E", "(B)", "\\text{(D)}", " C "])
def test_letter_answer_becomes_another_letter(letter):
    for seed in range(20):
        new = tamper_answer_value(letter, random.Random(seed))
        original = re.search(r"[A-E]", letter).group()
        other = re.search(r"[A-E]", new).group()
        assert other != original and new.replace(other, original) == letter


@pytest.mark.parametrize(("answer", "expected"), [("Yes", "No"), ("NO", "YES"), ("true", "false"), ("はい", "いいえ")])
def test_yes_no_answers_flip(answer, expected):
    assert tamper_answer_value(answer, random.Random(0)) == expected


def test_expression_answers_change_their_first_number():
    assert tamper_answer_value("\\frac{3}{4}", random.Random(0)) == "\\frac{5}{4}"
    assert tamper_answer_value("-12.5\\%", random.Random(0)) == "-13.8\\%"
    assert tamper_answer_value("2\\sqrt{3}", random.Random(0)) == "4\\sqrt{3}"
    for seed in range(30):
        new = tamper_answer_value("\\frac{1}{2}", random.Random(seed))
        assert new != "\\frac{1}{2}" and new.endswith("}{2}")  # the numerator changes: the value changes


@pytest.mark.parametrize("answer", ["Tuesday", "\\text{Tuesday}", "\\pi", "e", "x + y"])
def test_text_answers_have_no_tamper(answer):
    assert tamper_answer_value(answer, random.Random(0)) is None


@pytest.mark.parametrize(
    "text",
    ["\\boxed{\\{1, 2\\}}", "so \\boxed 72.", "\\boxed{1} then \\boxed{\\frac{1}{2}}", "\\boxed{1} \\boxed{2", "none", "\\boxed{a{b}c}"],
)
def test_final_boxed_span_agrees_with_extract_boxed(text):
    span = final_boxed_span(text)
    found = None if span is None else text[span[0]:span[1]].strip()
    assert found == extract_boxed(text)


# --- strategies on a whole text ----------------------------------------------------------------------


def test_omit_thinking_keeps_tags_and_empties_them():
    out = apply_strategy(TEXT, "omit_thinking", random.Random(0))
    assert out == "<Problem>\nJohn has 12 apples.\n</Problem>\n\n<Thinking>\n</Thinking>\n\n<Answer>\n\\boxed{1,262}\n</Answer>"


def test_tamper_thinking_numbers_touches_only_the_thinking():
    out = apply_strategy(TEXT, "tamper_thinking_numbers", random.Random(0))
    before, after = parse_reasoning(TEXT), parse_reasoning(out)
    assert after.problem == before.problem and after.answer == before.answer
    assert after.thinking != before.thinking and "x1 = " in after.thinking
    assert [shape(m) for m in NUMBER_RE.findall(after.thinking)] == [shape(m) for m in NUMBER_RE.findall(before.thinking)]


def test_tamper_answer_keeps_reasoning_and_changes_only_the_final_box():
    text = TEXT.replace("more at", "more, \\boxed{9} at")  # a box inside the thinking is a step, not the answer
    out = apply_strategy(text, "tamper_answer", random.Random(0))
    before, after = parse_reasoning(text), parse_reasoning(out)
    assert after.thinking == before.thinking and after.problem == before.problem
    assert after.boxed != before.boxed and shape(after.boxed) == shape(before.boxed)


def test_fallbacks_are_recorded_and_respect_zero_weights():
    no_numbers = TEXT.replace("He buys 1,250 more at 3.50 each; x1 = 4.", "Add them up.")
    # drawn tamper_thinking_numbers on a thinking without numbers -> omit_thinking, honestly recorded
    only_numbers = normalized_weights({"tamper_thinking_numbers": 1.0, "omit_thinking": 0.5, "tamper_answer": 0})
    for seed in range(40):
        rejected, applied, drawn = corrupt(no_numbers, random.Random(seed), only_numbers)
        assert applied == "omit_thinking" and rejected != no_numbers
    # with omit_thinking off, the fallback skips it and changes the answer
    no_omit = normalized_weights({"tamper_thinking_numbers": 1.0, "tamper_answer": 1.0})
    for seed in range(40):
        rejected, applied, drawn = corrupt(no_numbers, random.Random(seed), no_omit)
        assert applied == "tamper_answer" and parse_reasoning(rejected).boxed != "1,262"
    # nothing applies: a text answer, no numbers in the thinking, and only those two strategies
    text_answer = no_numbers.replace("\\boxed{1,262}", "\\boxed{\\text{Tuesday}}")
    assert corrupt(text_answer, random.Random(0), no_omit) is None


def test_record_rng_depends_on_seed_and_id_only():
    assert record_rng(42, "a").random() == record_rng(42, "a").random()
    assert record_rng(42, "a").random() != record_rng(43, "a").random()
    assert record_rng(42, "a").random() != record_rng(42, "b").random()


def test_weights_validation():
    with pytest.raises(ValueError, match="unknown strategies"):
        normalized_weights({"flip": 1.0})
    with pytest.raises(ValueError, match="positive sum"):
        normalized_weights({"omit_thinking": 0.0})


# --- records and rejects -------------------------------------------------------------------------------


def test_make_pair_fields():
    outcome = make_pair(trace_with(TEXT), seed=42, weights=DEFAULT, require_tags=True, require_verified=True)
    pair = outcome.pair
    assert pair.source_id == "t#0" and pair.id == "t#0/pair"
    assert [m.role for m in pair.prompt] == ["system", "user"] and pair.chosen == TEXT and pair.rejected != TEXT


@pytest.mark.parametrize(
    ("trace", "reason"),
    [
        (trace_with(TEXT.replace("</Thinking>", "")), "invalid_tags"),
        (trace_with(TEXT, verified=False), "unverified"),
        (trace_with(TEXT, images=["a.png"]), "has_images"),
        (trace_with(TEXT, messages=[Message(role="user", content="q")]), "no_assistant_message"),
        (trace_with("<Problem>\nq\n</Problem>\n\n<Thinking>\nthink\n</Thinking>\n\n<Answer>\n\\boxed{\\text{Tuesday}}\n</Answer>"), None),
    ],
)
def test_rejects_carry_a_reason(trace, reason):
    outcome = make_pair(trace, seed=42, weights=DEFAULT, require_tags=True, require_verified=True)
    if reason is None:  # a text answer and a thinking without numbers still has omit_thinking
        assert outcome.pair.strategy == "omit_thinking"
        return
    assert outcome.pair is None and outcome.reject.reason == reason and outcome.reject.record["id"] == "t#0"


def test_without_require_tags_broken_tags_are_corrupted_where_parts_are_found():
    broken = "Let me think.\n<Thinking>\n2 + 2 = 4\n</Thinking>\nSo \\boxed{4}"  # no <Problem>, no <Answer>
    strict = make_pair(trace_with(broken), seed=1, weights=DEFAULT, require_tags=True, require_verified=True)
    assert strict.reject.reason == "invalid_tags" and "missing <Problem>" in strict.reject.detail
    for seed in range(20):
        lenient = make_pair(trace_with(broken), seed=seed, weights=DEFAULT, require_tags=False, require_verified=True)
        assert lenient.pair.rejected != broken
    no_parts = make_pair(trace_with("just 4"), seed=0, weights=DEFAULT, require_tags=False, require_verified=True)
    assert no_parts.reject.reason == "no_corruption_applies"


# --- the stage -----------------------------------------------------------------------------------------


def run_stage(tmp_path, traces_path, name="out", **cfg):
    out = tmp_path / name
    execute_stage("pairs", pairs_stage.Config(**cfg), {"traces": traces_path}, out)
    return out


@pytest.fixture(scope="module")
def thousand(tmp_path_factory):
    path = tmp_path_factory.mktemp("traces") / "traces.jsonl"
    write_jsonl(path, (synthetic_trace(i) for i in range(1000)))
    return path


@pytest.mark.slow  # a whole stage run (seconds): not in make test-fast
def test_stage_output_is_byte_identical_and_matches_golden_hash(tmp_path, thousand):
    first = run_stage(tmp_path, thousand, "a")
    second = run_stage(tmp_path, thousand, "b")
    digest = sha256_file(first / "pairs.jsonl")
    assert digest == sha256_file(second / "pairs.jsonl")
    assert digest == GOLDEN_PAIRS_SHA256
    pairs = read_jsonl(first / "pairs.jsonl", Pair)
    assert len(pairs) == 1000 and (first / "rejects.jsonl").read_text() == ""
    other_seed = run_stage(tmp_path, thousand, "c", seed=7)
    assert sha256_file(other_seed / "pairs.jsonl") != digest


@pytest.mark.slow  # a whole stage run (seconds): not in make test-fast
def test_stage_output_is_independent_of_order_and_sharding(tmp_path, thousand):
    whole = run_stage(tmp_path, thousand, "whole")
    shards = tmp_path / "shards"
    records = read_jsonl(thousand, Trace)
    random.Random(5).shuffle(records)
    for index in range(3):
        write_jsonl(shards / f"part-{index}.jsonl", records[index::3])
    sharded = run_stage(tmp_path, shards, "sharded")
    lines = lambda out: sorted((out / "pairs.jsonl").read_text().splitlines())  # noqa: E731
    assert lines(whole) == lines(sharded)


@pytest.mark.slow  # a whole stage run (seconds): not in make test-fast
def test_stage_strategy_shares_within_two_points_on_10k(tmp_path):
    # every record here admits every strategy (synthetic kind 6 has neither numbers nor a tamperable answer)
    path = tmp_path / "traces.jsonl"
    write_jsonl(path, (synthetic_trace(i) for i in range(11500) if i % 8 != 6))
    out = run_stage(tmp_path, path, "shares")
    counts = Counter(json.loads(line)["strategy"] for line in (out / "pairs.jsonl").read_text().splitlines())
    total = sum(counts.values())
    assert total >= 10_000
    for name, weight in DEFAULT.items():
        assert abs(counts[name] / total - weight) < 0.02, (name, counts[name] / total)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["metrics"]["fallbacks"] == {} and manifest["metrics"]["pairs"] == total


def test_stage_zero_weight_drops_a_strategy(tmp_path, thousand):
    out = run_stage(tmp_path, thousand, "drop", weights={"tamper_answer": 0})
    strategies = {json.loads(line)["strategy"] for line in (out / "pairs.jsonl").read_text().splitlines()}
    assert strategies == {"omit_thinking", "tamper_thinking_numbers"}


def test_stage_fails_over_reject_rate_and_writes_only_its_rejects(tmp_path):
    path = tmp_path / "traces.jsonl"
    good = [synthetic_trace(i) for i in range(6)]
    bad = [trace_with("no tags at all", tid=f"bad#{i}") for i in range(4)]
    write_jsonl(path, good + bad)
    with pytest.raises(CompassError, match=r"4 of 10 records rejected .*invalid_tags.*; see .*fail/rejects.jsonl"):
        run_stage(tmp_path, path, "fail")
    # the rejects the message names are there to read; no pairs file that could pass for a result
    assert not (tmp_path / "fail" / "pairs.jsonl").exists()
    assert [r.id for r in read_jsonl(tmp_path / "fail" / "rejects.jsonl", Reject)] == [f"bad#{i}" for i in range(4)]
    out = run_stage(tmp_path, path, "ok", max_reject_rate=0.5)
    rejects = read_jsonl(out / "rejects.jsonl", Reject)
    assert [r.id for r in rejects] == [f"bad#{i}" for i in range(4)] and {r.reason for r in rejects} == {"invalid_tags"}
    assert len(read_jsonl(out / "pairs.jsonl", Pair)) == 6
