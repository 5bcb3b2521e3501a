"""DPO pairs by corruption (docs/method.md A step 2): each Trace gives (prompt, chosen, rejected), where rejected
is the chosen assistant text with exactly one corruption:

    omit_thinking            the contents of <Thinking> removed; the tags stay, each on its own line
    tamper_thinking_numbers  numbers inside <Thinking> changed in value, kept in format
    tamper_answer            the final \\boxed{...} answer changed; the reasoning kept

Determinism: every random choice for a record comes from an RNG seeded by sha256(seed, record id), so a
record's pair does not depend on its position, on the other records, or on how the input is sharded.

Fallbacks: when the drawn strategy cannot change the text (no thinking, no number in the thinking, an answer
with nothing to tamper), the next strategy of FALLBACKS that can is used, among strategies with a positive
weight; the pair's `strategy` names the corruption actually applied. A record no strategy can change is
rejected.

Numbers are runs of ASCII digits with optional thousands commas and a decimal part (`12`, `1,234`,
`3.50`, `0.05`). A tampered number keeps its exact shape: the same count of digits in the same places, so
integers stay integers, decimals keep their decimal places, commas stay where they were, a leading zero
stays (`0.05` -> `0.07`); since the digits differ and the shape is the same, the value always changes.
A number directly after an ASCII letter or underscore (`x1`, `a_2`) is a name, not a quantity, and is kept.
Full-width digits are not numbers here.
"""
from __future__ import annotations

import random
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from compass.formats.boxed import box_spans
from compass.formats.reasoning import FormatError, parse_reasoning
from compass.io import record_rng  # the RNG of one record: (seed, id) only, whatever the order or shard
from compass.records import Message, Pair, Reject, Trace
from compass.vocab import ANSWER_CLOSE, ANSWER_OPEN, THINKING_CLOSE as THINK_CLOSE, THINKING_OPEN as THINK_OPEN

STRATEGIES = ("omit_thinking", "tamper_thinking_numbers", "tamper_answer")

# When the drawn strategy cannot change the text, try these in order (only those with weight > 0).
# Numbers need a thinking to live in, so a failed number tamper first falls back to removing the
# thinking (still a reasoning corruption), then to the answer; a failed answer tamper corrupts the reasoning.
FALLBACKS: dict[str, tuple[str, ...]] = {
    "omit_thinking": ("tamper_thinking_numbers", "tamper_answer"),
    "tamper_thinking_numbers": ("omit_thinking", "tamper_answer"),
    "tamper_answer": ("tamper_thinking_numbers", "omit_thinking"),
}


# thousands-grouped first (so "1,234" is one number), then plain digits; either with a decimal part
NUMBER_RE = re.compile(r"(?<![A-Za-z_0-9])(?:[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.[0-9]+)?")
# AQuA-style option letter, optionally in parentheses and/or \text{...}; uppercase only ("e" may be Euler's e)
LETTER_RE = re.compile(r"^(\s*(?:\\text\{)?\s*\(?\s*)([A-E])(\s*\)?\s*\}?\s*)$")
OPPOSITES = {"yes": "no", "no": "yes", "true": "false", "false": "true", "はい": "いいえ", "いいえ": "はい"}
ANSWER_LETTERS = "ABCDE"


def normalized_weights(weights: Mapping[str, float]) -> dict[str, float]:
    unknown = sorted(set(weights) - set(STRATEGIES))
    if unknown:
        raise ValueError(f"unknown strategies {unknown}; known: {list(STRATEGIES)}")
    total = sum(weights.values())
    if total <= 0 or any(w < 0 for w in weights.values()):
        raise ValueError(f"weights must be >= 0 with a positive sum, got {dict(weights)}")
    return {name: weights.get(name, 0.0) / total for name in STRATEGIES}


def choose_strategy(rng: random.Random, weights: Mapping[str, float]) -> str:
    """One draw against the cumulative normalized weights (in STRATEGIES order)."""
    x = rng.random()
    cumulative = 0.0
    last = None
    for name in STRATEGIES:
        if weights[name] <= 0:
            continue
        cumulative += weights[name]
        last = name
        if x < cumulative:
            return name
    return last  # x within float rounding of 1.0


# --- numbers ---------------------------------------------------------------------------------------


def _other_digits(digits: str, rng: random.Random) -> str:
    """A different digit string of the same length, close in value; a leading non-zero digit stays non-zero.

    Delta is up to max(2, n // 5) either way; if n + delta leaves the allowed range, n - delta is inside
    (the range is at least 9 * 10**(k-1) wide and |delta| at most about 2 * 10**(k-1)).
    """
    k = len(digits)
    n = int(digits)
    low = 0 if (k == 1 or digits[0] == "0") else 10 ** (k - 1)
    high = 10**k - 1
    span = max(2, n // 5)
    delta = rng.randint(1, span) * rng.choice((-1, 1))
    new = n + delta
    if not low <= new <= high:
        new = n - delta
    return str(new).zfill(k)


def tamper_number(token: str, rng: random.Random) -> str:
    """`token` (a NUMBER_RE match) with different digits in the same shape: same value class, other value."""
    digits = "".join(c for c in token if c.isdigit())
    new_digits = iter(_other_digits(digits, rng))
    return "".join(next(new_digits) if c.isdigit() else c for c in token)


def tamper_numbers(text: str, rng: random.Random) -> str | None:
    """Each number changed with probability 1/2, at least one; None when `text` has no number."""
    matches = list(NUMBER_RE.finditer(text))
    if not matches:
        return None
    chosen = [rng.random() < 0.5 for _ in matches]
    if not any(chosen):
        chosen[rng.randrange(len(matches))] = True
    out, pos = [], 0
    for match, change in zip(matches, chosen):
        if change:
            out.append(text[pos:match.start()])
            out.append(tamper_number(match.group(), rng))
            pos = match.end()
    out.append(text[pos:])
    return "".join(out)


# --- answers ---------------------------------------------------------------------------------------


def tamper_answer_value(answer: str, rng: random.Random) -> str | None:
    """A different final answer, or None when there is no defined way to change it:

    - an option letter A-E (AQuA; also "(C)", "\\text{C}") -> another letter A-E, same decoration;
    - yes/no, true/false, はい/いいえ (any case) -> the opposite, same case pattern;
    - anything with a number (integers, decimals, fractions, LaTeX like \\frac{3}{4}, 2\\sqrt{3}, 12\\%)
      -> its FIRST number tampered. The first number is the numerator of a fraction and the leading
      coefficient of a product, whose change always changes the value (with one number, always);
    - text or digit-free expressions ("Tuesday", "\\pi") -> None (the caller falls back to another strategy).
    """
    letter = LETTER_RE.match(answer)
    if letter:
        others = [c for c in ANSWER_LETTERS if c != letter.group(2)]
        return letter.group(1) + rng.choice(others) + letter.group(3)
    stripped = answer.strip()
    opposite = OPPOSITES.get(stripped.lower())
    if opposite is not None:
        if stripped.isupper():
            opposite = opposite.upper()
        elif stripped[:1].isupper():
            opposite = opposite.capitalize()
        return answer.replace(stripped, opposite, 1)
    match = NUMBER_RE.search(answer)
    if match is None:
        return None
    return answer[:match.start()] + tamper_number(match.group(), rng) + answer[match.end():]


# --- spans in the assistant text ---------------------------------------------------------------------


def thinking_span(text: str) -> tuple[int, int] | None:
    """(start, end) of the text between the first <Thinking> and the </Thinking> after it."""
    start = text.find(THINK_OPEN)
    if start < 0:
        return None
    start += len(THINK_OPEN)
    end = text.find(THINK_CLOSE, start)
    return None if end < 0 else (start, end)


def final_boxed_span(text: str, begin: int = 0) -> tuple[int, int] | None:
    """(start, end) of the contents of the last \\boxed at or after `begin`, scanned left to right with the
    rules of compass.formats.boxed.extract_boxed (a box inside a box is part of the outer one; `\\{` and `\\}`
    are literal; `\\boxed 72` boxes one token). None when there is no box, or when the last \\boxed is
    malformed: then there is no final answer, and an earlier box is not one."""
    spans, malformed = box_spans(text, begin)
    return None if malformed or not spans else spans[-1]


def answer_region_start(text: str) -> int:
    """Where the final answer lives: inside <Answer> when the text has one (the boxed value there is the
    answer; a \\boxed inside the thinking is a step), else anywhere."""
    at = text.rfind(ANSWER_OPEN)
    return 0 if at < 0 else at + len(ANSWER_OPEN)


def apply_strategy(text: str, strategy: str, rng: random.Random) -> str | None:
    """`text` with the corruption applied, or None when this strategy cannot change it."""
    if strategy == "omit_thinking":
        span = thinking_span(text)
        if span is None or not text[span[0]:span[1]].strip():
            return None
        return text[:span[0]] + "\n" + text[span[1]:]
    if strategy == "tamper_thinking_numbers":
        span = thinking_span(text)
        if span is None:
            return None
        tampered = tamper_numbers(text[span[0]:span[1]], rng)
        return None if tampered is None else text[:span[0]] + tampered + text[span[1]:]
    if strategy == "tamper_answer":
        span = final_boxed_span(text, answer_region_start(text))
        if span is None:
            return None
        tampered = tamper_answer_value(text[span[0]:span[1]], rng)
        return None if tampered is None else text[:span[0]] + tampered + text[span[1]:]
    raise ValueError(f"unknown strategy {strategy!r}")


def corrupt(text: str, rng: random.Random, weights: Mapping[str, float]) -> tuple[str, str, str] | None:
    """(rejected, applied strategy, drawn strategy), or None when no strategy with weight > 0 changes `text`."""
    drawn = choose_strategy(rng, weights)
    for strategy in (drawn, *FALLBACKS[drawn]):
        if weights[strategy] <= 0:
            continue
        rejected = apply_strategy(text, strategy, rng)
        if rejected is not None:
            if rejected == text:  # every branch above changes characters; this guards the invariant
                raise AssertionError(f"strategy {strategy} left the text unchanged")
            return rejected, strategy, drawn
    return None


# --- records -----------------------------------------------------------------------------------------


@dataclass
class PairOutcome:
    pair: Pair | None
    reject: Reject | None
    drawn: str | None = None


def make_pair(
    trace: Trace,
    *,
    seed: int,
    weights: Mapping[str, float],
    require_tags: bool,
    require_verified: bool,
) -> PairOutcome:
    """One Trace -> a Pair, or a Reject with the reason. With `require_tags` the chosen text must parse in the
    <Problem>/<Thinking>/<Answer> format (compass.formats.parse_reasoning); without it, a text with broken tags
    is corrupted where its parts can be found (a thinking between <Thinking> tags, a final \\boxed)."""

    def reject(reason: str, detail: str = "") -> PairOutcome:
        return PairOutcome(None, Reject(id=trace.id, reason=reason, detail=detail, record=trace.model_dump(mode="json")))

    if require_verified and not trace.verified:
        return reject("unverified", "the trace's answer does not match the reference; chosen would be wrong")
    if trace.images:
        return reject("has_images", "Pair records are text-only; this trace carries images")
    if not trace.messages or trace.messages[-1].role != "assistant":
        return reject("no_assistant_message", "the last message must be the assistant's answer")
    prompt = [Message(role=m.role, content=m.content) for m in trace.messages[:-1]]
    if not prompt or prompt[-1].role != "user":
        return reject("no_user_message", "the message before the assistant's must be the user's")
    chosen = trace.messages[-1].content
    if require_tags:
        try:
            parse_reasoning(chosen)
        except FormatError as err:
            return reject("invalid_tags", str(err))
    result = corrupt(chosen, record_rng(seed, trace.id), weights)
    if result is None:
        return reject("no_corruption_applies", "no thinking to remove, no number to change and no answer to change")
    rejected, strategy, drawn = result
    pair = Pair(id=f"{trace.id}/pair", source_id=trace.id, prompt=prompt, chosen=chosen, rejected=rejected, strategy=strategy)
    return PairOutcome(pair, None, drawn)


def make_pairs(traces: Iterable[Trace], **kwargs) -> Iterator[PairOutcome]:
    """Streams: one outcome per trace, nothing held across records."""
    for trace in traces:
        yield make_pair(trace, **kwargs)
