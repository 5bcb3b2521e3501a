"""The <Problem>/<Thinking>/<Answer> format and \\boxed extraction: exact messages, round trips, properties."""
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compass.errors import CompassError
from compass.formats import (
    SYSTEM_PROMPTS,
    FormatError,
    ReasoningParts,
    extract_all_boxed,
    extract_boxed,
    parse_reasoning,
    render_reasoning,
    validate_reasoning,
)

GOOD = "<Problem>\nWhat is 2+3?\n</Problem>\n\n<Thinking>\n2+3=5\n</Thinking>\n\n<Answer>\n\\boxed{5}\n</Answer>"


def test_system_prompts_are_the_recipe_strings():
    assert SYSTEM_PROMPTS == {
        "en": "You are an advanced mathematical AI assistant. Your task is to solve the given math problem "
        "step-by-step and provide a final answer.",
        "ja": "あなたは高度な数学AIアシスタントです。与えられた数学問題をステップバイステップで解き、最終回答を提示してください。",
    }


def test_render_is_the_canonical_layout():
    assert render_reasoning("What is 2+3?", "2+3=5", "5") == GOOD
    assert render_reasoning("  What is 2+3?\n", "\n2+3=5 ", " 5 ") == GOOD


def test_parse_good():
    parts = parse_reasoning(GOOD)
    assert parts == ReasoningParts(problem="What is 2+3?", thinking="2+3=5", answer="\\boxed{5}")
    assert parts.boxed == "5"
    assert validate_reasoning(GOOD) == []
    assert issubclass(FormatError, CompassError)


def test_parse_tolerates_whitespace_and_compact_layout():
    compact = "<Problem>p</Problem><Thinking>t</Thinking><Answer>The answer is \\boxed{\\frac{1}{2}}.</Answer>\n"
    assert parse_reasoning(compact) == ReasoningParts("p", "t", "The answer is \\boxed{\\frac{1}{2}}.")
    assert parse_reasoning(compact).boxed == "\\frac{1}{2}"


def test_japanese_round_trip():
    text = render_reasoning("りんごが3個あります。", "3 + 2 = 5 なので答えは5個です。", "5")
    parts = parse_reasoning(text)
    assert parts.problem == "りんごが3個あります。" and parts.boxed == "5"


P, T, A = "<Problem>p</Problem>", "<Thinking>t</Thinking>", "<Answer>\\boxed{1}</Answer>"


@pytest.mark.parametrize(
    ("text", "messages"),
    [
        ("", ["missing <Problem> section", "missing <Thinking> section", "missing <Answer> section"]),
        (P + A, ["missing <Thinking> section"]),
        (P + P + T + A, ["<Problem> appears 2 times (expected once)", "</Problem> appears 2 times (expected once)"]),
        ("<Problem>p" + T + A, ["<Problem> is not closed (no </Problem>)"]),
        ("p</Problem>" + T + A, ["</Problem> has no opening <Problem>"]),
        (T + P + A, ["tags out of order: expected <Problem> </Problem> <Thinking> </Thinking> <Answer> </Answer>, "
                     "found <Thinking> </Thinking> <Problem> </Problem> <Answer> </Answer>"]),
        ("<Problem>p<Thinking>t</Problem></Thinking>" + A,
         ["tags out of order: expected <Problem> </Problem> <Thinking> </Thinking> <Answer> </Answer>, "
          "found <Problem> <Thinking> </Problem> </Thinking> <Answer> </Answer>"]),
        ("Sure! " + P + T + A, ["text outside the tags before <Problem>: 'Sure!'"]),
        (P + "so" + T + A, ["text outside the tags between </Problem> and <Thinking>: 'so'"]),
        (P + T + "x" + A, ["text outside the tags between </Thinking> and <Answer>: 'x'"]),
        (P + T + A + " Hope this helps", ["text outside the tags after </Answer>: 'Hope this helps'"]),
        ("<Problem> </Problem>" + T + A, ["<Problem> is empty"]),
        (P + "<Thinking>\n</Thinking>" + A, ["<Thinking> is empty"]),
        (P + T + "<Answer>  </Answer>", ["<Answer> is empty"]),
        (P + T + "<Answer>5</Answer>", ["<Answer> has no \\boxed{...}: '5'"]),
        (P + T + "<Answer>\\boxed{5</Answer>", ["<Answer> has a \\boxed with unbalanced braces: '\\\\boxed{5'"]),
        (P + T + "<Answer>\\boxed{ }</Answer>", ["<Answer> has an empty \\boxed{}"]),
        ("<problem>p</problem>" + T + A, ["missing <Problem> section (found </problem>, <problem>: tags are case-sensitive)"]),
    ],
)
def test_validation_messages(text, messages):
    assert validate_reasoning(text) == messages
    with pytest.raises(FormatError) as err:
        parse_reasoning(text)
    assert str(err.value) == "not in the <Problem>/<Thinking>/<Answer> format: " + "; ".join(messages)


def test_several_problems_reported_together():
    text = "hi " + P + "<Thinking></Thinking>" + "<Answer>5</Answer>"
    assert validate_reasoning(text) == [
        "text outside the tags before <Problem>: 'hi'",
        "<Thinking> is empty",
        "<Answer> has no \\boxed{...}: '5'",
    ]


@pytest.mark.parametrize(
    ("problem", "thinking", "answer", "message"),
    [
        ("p <Answer> q", "t", "1", "cannot render: <Answer> appears 2 times"),
        ("p", "", "1", "cannot render: <Thinking> is empty"),
        ("p", "t", "", "cannot render: <Answer> has an empty \\boxed{}"),
        ("p", "t", "1}", "does not read back"),
        ("p", "t", "{1", "unbalanced braces"),
    ],
)
def test_render_refuses_what_would_not_round_trip(problem, thinking, answer, message):
    with pytest.raises(FormatError, match=message.replace("\\", "\\\\").replace("{", "\\{").replace("}", "\\}")):
        render_reasoning(problem, thinking, answer)


@pytest.mark.parametrize(
    ("text", "last", "all_boxes"),
    [
        ("\\boxed{72}", "72", ["72"]),
        ("The answer is \\boxed{ 72 }.", "72", ["72"]),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}", ["\\frac{1}{2}"]),
        ("\\boxed{\\frac{\\sqrt{2}}{2}} nested", "\\frac{\\sqrt{2}}{2}", ["\\frac{\\sqrt{2}}{2}"]),
        ("first \\boxed{1}, then \\boxed{2}", "2", ["1", "2"]),
        ("よって答えは \\boxed{１２個} です。", "１２個", ["１２個"]),
        ("\\boxed 5", "5", ["5"]),
        ("so \\boxed 5.", "5", ["5"]),
        ("$\\boxed5$", "5", ["5"]),
        ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}", ["\\{1, 2\\}"]),
        ("\\boxed{\\boxed{3}}", "\\boxed{3}", ["\\boxed{3}"]),
        ("\\boxed {7}", "7", ["7"]),
        ("\\boxed{}", "", [""]),
        ("\\boxed{5", None, []),
        ("\\boxed{1} and \\boxed{2", None, ["1"]),
        ("\\boxed", None, []),
        ("no box here", None, []),
        ("\\boxedx{3}", None, []),
        ("", None, []),
    ],
)
def test_extract_boxed(text, last, all_boxes):
    assert extract_boxed(text) == last
    assert extract_all_boxed(text) == all_boxes


# --- properties ------------------------------------------------------------------------------------

_TAG_PIECES = ["<Problem>", "</Problem>", "<Thinking>", "</Thinking>", "<Answer>", "</Answer>", "\\boxed{", "}", "{", "\\"]
_texty = st.lists(st.one_of(st.text(max_size=12), st.sampled_from(_TAG_PIECES)), max_size=14).map("".join)
_TAGS = _TAG_PIECES[:6]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_texty)
def test_parse_only_ever_raises_format_error(text):
    try:
        parts = parse_reasoning(text)
    except FormatError:
        assert validate_reasoning(text) != []
    else:
        assert validate_reasoning(text) == []
        assert parts.problem and parts.thinking and parts.boxed is not None


_plain = st.text(min_size=1, max_size=60).filter(lambda s: s.strip() and not any(tag in s for tag in _TAGS))
_answer = st.text(alphabet=st.characters(blacklist_characters="{}\\", blacklist_categories=("Cs",)), min_size=1, max_size=20).filter(
    lambda s: s.strip() and not any(tag in s for tag in _TAGS)
)


@settings(max_examples=200, deadline=None)
@given(_plain, _plain, _answer)
def test_render_parse_round_trip(problem, thinking, answer):
    parts = parse_reasoning(render_reasoning(problem, thinking, answer))
    assert parts == ReasoningParts(problem.strip(), thinking.strip(), "\\boxed{" + answer.strip() + "}")
    assert parts.boxed == answer.strip()
