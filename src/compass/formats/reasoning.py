"""The <Problem>/<Thinking>/<Answer> reasoning format of docs/method.md A, step 0: render, parse, validate.

The canonical layout (what `render_reasoning` writes, and what the teacher is asked for):

    <Problem>
    (restatement of the problem)
    </Problem>

    <Thinking>
    (step-by-step reasoning)
    </Thinking>

    <Answer>
    \\boxed{final_answer}
    </Answer>

Rules that `parse_reasoning` enforces (each broken rule is one message of `validate_reasoning`):
- each of the three sections appears exactly once, opened and closed, in the order Problem, Thinking, Answer;
  tags are exact and case-sensitive (`<problem>` is not a tag; it is reported as a hint when <Problem> is missing);
- only whitespace may stand outside the sections. A trace is an SFT target: stray text before, between or
  after the sections (a chatty preface, a stray `<think>` block) would be trained on, so it is an error;
- no section is empty (an empty <Thinking> is exactly the `omit_thinking` corruption, so it must not validate);
- <Answer> holds a well-formed, non-empty `\\boxed{...}`.
Section contents are returned stripped of surrounding whitespace.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from compass.errors import CompassError
from compass.formats.boxed import extract_boxed, find_boxes

SECTIONS = ("Problem", "Thinking", "Answer")

SYSTEM_PROMPTS: dict[str, str] = {
    "en": (
        "You are an advanced mathematical AI assistant. Your task is to solve the given math problem "
        "step-by-step and provide a final answer."
    ),
    "ja": "あなたは高度な数学AIアシスタントです。与えられた数学問題をステップバイステップで解き、最終回答を提示してください。",
}

_TAG = re.compile(r"<(/?)(Problem|Thinking|Answer)>")
_TAG_ANY_CASE = re.compile(r"<(/?)(problem|thinking|answer)>", re.IGNORECASE)
_EXPECTED_ORDER = [(False, "Problem"), (True, "Problem"), (False, "Thinking"), (True, "Thinking"), (False, "Answer"), (True, "Answer")]
_SNIPPET = 40


class FormatError(CompassError):
    """A text that is not in the reasoning format; the message lists every rule it breaks."""


@dataclass(frozen=True)
class ReasoningParts:
    """The stripped contents of the three sections. `answer` is the whole <Answer> content (e.g. '\\boxed{72}')."""

    problem: str
    thinking: str
    answer: str

    @property
    def boxed(self) -> str | None:
        """The final answer value: the content of the last \\boxed{} in <Answer>."""
        return extract_boxed(self.answer)


def _tag_text(closing: bool, name: str) -> str:
    return f"</{name}>" if closing else f"<{name}>"


def _snippet(text: str) -> str:
    text = text.strip()
    return repr(text if len(text) <= _SNIPPET else text[:_SNIPPET] + "...")


def _check(text: str) -> tuple[list[str], ReasoningParts | None]:
    """Every problem with `text`, and its parts when there is none."""
    if not isinstance(text, str):
        return [f"expected a string, got {type(text).__name__}"], None
    tags = [(m.group(1) == "/", m.group(2), m.start(), m.end()) for m in _TAG.finditer(text)]
    problems: list[str] = []
    for name in SECTIONS:
        opens = sum(1 for closing, n, _, _ in tags if n == name and not closing)
        closes = sum(1 for closing, n, _, _ in tags if n == name and closing)
        if opens == 0 and closes == 0:
            hint = ""
            variants = sorted({m.group(0) for m in _TAG_ANY_CASE.finditer(text) if m.group(2).lower() == name.lower()})
            if variants:
                hint = f" (found {', '.join(variants)}: tags are case-sensitive)"
            problems.append(f"missing <{name}> section{hint}")
            continue
        if opens > 1:
            problems.append(f"<{name}> appears {opens} times (expected once)")
        if closes > 1:
            problems.append(f"</{name}> appears {closes} times (expected once)")
        if opens >= 1 and closes == 0:
            problems.append(f"<{name}> is not closed (no </{name}>)")
        if opens == 0 and closes >= 1:
            problems.append(f"</{name}> has no opening <{name}>")
    if problems:
        return problems, None

    found = [(closing, name) for closing, name, _, _ in tags]
    if found != _EXPECTED_ORDER:
        expected = " ".join(_tag_text(c, n) for c, n in _EXPECTED_ORDER)
        seen = " ".join(_tag_text(c, n) for c, n in found)
        return [f"tags out of order: expected {expected}, found {seen}"], None

    # Six tags in the right order: contents sit between consecutive tags.
    bounds = [(start, end) for _, _, start, end in tags]
    outside = {
        "before <Problem>": text[: bounds[0][0]],
        "between </Problem> and <Thinking>": text[bounds[1][1] : bounds[2][0]],
        "between </Thinking> and <Answer>": text[bounds[3][1] : bounds[4][0]],
        "after </Answer>": text[bounds[5][1] :],
    }
    for where, stray in outside.items():
        if stray.strip():
            problems.append(f"text outside the tags {where}: {_snippet(stray)}")
    contents = {name: text[bounds[2 * i][1] : bounds[2 * i + 1][0]].strip() for i, name in enumerate(SECTIONS)}
    for name, content in contents.items():
        if not content:
            problems.append(f"<{name}> is empty")
    answer = contents["Answer"]
    if answer:
        boxes, malformed = find_boxes(answer)
        if malformed:
            problems.append(f"<Answer> has a \\boxed with unbalanced braces: {_snippet(answer)}")
        elif not boxes:
            problems.append(f"<Answer> has no \\boxed{{...}}: {_snippet(answer)}")
        elif not boxes[-1].strip():
            problems.append("<Answer> has an empty \\boxed{}")
    if problems:
        return problems, None
    return [], ReasoningParts(contents["Problem"], contents["Thinking"], contents["Answer"])


def validate_reasoning(text: str) -> list[str]:
    """Every rule `text` breaks, one message each; an empty list means it parses."""
    return _check(text)[0]


def parse_reasoning(text: str) -> ReasoningParts:
    """Split a reasoning text into its sections; raises FormatError naming every rule it breaks."""
    problems, parts = _check(text)
    if parts is None:
        raise FormatError("not in the <Problem>/<Thinking>/<Answer> format: " + "; ".join(problems))
    return parts


def render_reasoning(problem: str, thinking: str, answer: str) -> str:
    """The canonical layout, with `answer` (the final answer value) written as \\boxed{answer}.

    Raises FormatError when the result would not parse back to the same parts (a section text containing a
    tag, an empty section, an answer whose braces don't balance), so every rendered trace round-trips.
    """
    problem, thinking, answer = problem.strip(), thinking.strip(), answer.strip()
    text = (
        f"<Problem>\n{problem}\n</Problem>\n\n"
        f"<Thinking>\n{thinking}\n</Thinking>\n\n"
        f"<Answer>\n\\boxed{{{answer}}}\n</Answer>"
    )
    problems, parts = _check(text)
    if parts is None:
        raise FormatError("cannot render: " + "; ".join(problems))
    if parts.boxed != answer:
        raise FormatError(f"cannot render answer {answer!r}: it does not read back from \\boxed{{}} unchanged")
    return text
