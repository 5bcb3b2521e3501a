"""Is a predicted final answer the reference answer? Numbers, units, percent, fractions, choices, LaTeX.

Decision order (the first step that can decide, decides):
1. normalise both sides: NFKC (full-width `１２３`, `％`, `＄` become ASCII), unicode minus to '-', a wrapping
   \\boxed{} or $...$ / \\(...\\) removed, \\text{...}-like wrappers opened, spacing macros dropped;
2. multiple choice: when the reference is a choice letter ('C', '(C)', 'C)'), the prediction must name the
   same letter ('C', '(C)', 'C) 25', 'Option C'); a bare value never matches a letter (the options are unknown);
3. plain numbers on both sides (commas as thousands separators, decimals, fractions a/b, sign, currency
   before, units after, scale words like 'million'/'万'): compared exactly as rationals. '25%' matches '25'
   and '0.25'; without a '%' on either side 0.25 and 25 differ;
4. words on both sides ('yes', 'Tuesday', '火曜日'): compared case-insensitively as text;
5. anything else goes to math-verify (parse + verify, each under its own signal-based time limit), which
   knows \\frac, \\dfrac, \\sqrt, sets, intervals and symbolic equality. Text that math-verify cannot parse
   falls back to exact normalised text. A timeout counts as no match.
When in doubt the answer is "no match": a false match would let a wrong trace into the training data.
Nothing here evaluates text as code: numbers are parsed by regex into Fractions, expressions by math-verify.

Model text never makes the check raise (`check_answer` says why it did not match): LaTeX digit grouping
(`1\\,234`, `1{,}234`, thin spaces) reads as thousands separators; an answer longer than MAX_ANSWER_CHARS, a
number with more than MAX_DIGITS digits (Python refuses int() of 4,300+ digits), brackets nested deeper than
MAX_NESTING, or anything math-verify fails on or times out on is "no match" with a reason.
"""
from __future__ import annotations

import logging
import re
import threading
import unicodedata
from fractions import Fraction

from compass.errors import CompassError

DEFAULT_TIMEOUT_S = 5
MAX_ANSWER_CHARS = 1000  # a final answer, not a derivation: longer predictions are refused before any parsing
MAX_DIGITS = 1000  # digits of one number (Python's int() refuses 4,300+; no benchmark answer comes close)
MAX_NESTING = 50  # bracket depth handed to math-verify (sympy's parser recurses per level)

_MINUS = str.maketrans({"\u2212": "-", "\u2012": "-", "\u2013": "-", "\ufe63": "-"})
_DELIMITERS = [("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")]
_TEXT_MACRO = re.compile(r"\\(?:text|textbf|textit|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}")
_SPACING = re.compile(r"\\[,!;: ]|\\(?:left|right|displaystyle|quad|qquad)(?![A-Za-z])|~")
_BOXED_WHOLE = re.compile(r"^\\boxed\s*\{(.*)\}$", re.DOTALL)
# LaTeX / typographic digit grouping between a digit and exactly three more: 1\,234, 1{,}234, 1 234 (thin space)
_DIGIT_GROUPING = re.compile(r"(?<=\d)(?:\\,|\\ |\{,\}|\u2009|\u202f)(?=\d{3}(?!\d))")

_CHOICE_PATTERNS = [
    re.compile(r"^([A-J])$"),
    re.compile(r"^\(([A-J])\)(?:\s*.*)?$", re.DOTALL),
    re.compile(r"^([A-J])[).:]\s*.*$", re.DOTALL),
    re.compile(r"^(?:option|choice|answer)\s*:?\s*\(?([A-J])\)?$", re.IGNORECASE),
    re.compile(r"^(?:選択肢|答え)\s*[:：]?\s*\(?([A-J])\)?$"),
]

_SCALE = {"thousand": 10**3, "million": 10**6, "billion": 10**9, "trillion": 10**12, "千": 10**3, "万": 10**4, "億": 10**8, "兆": 10**12}
# one Latin letter after a number is usually a variable (5x), so only these count as units
_SINGLE_LETTER_UNITS = {"m", "g", "L", "s", "h"}
_NUMBER = re.compile(
    r"""^
    (?P<cur1>US\$|[$¥€£])?\s*
    (?P<sign>[-+])?\s*
    (?P<cur2>US\$|[$¥€£])?\s*
    (?P<int>\d{1,3}(?:,\d{3})+|\d+)?(?P<frac>\.\d+)?
    (?:\s*/\s*(?P<den>\d+))?
    \s*(?P<scale>thousand|million|billion|trillion|千|万|億|兆)?
    \s*(?P<pct>%|percent|per\s?cent|パーセント)?
    \s*(?P<unit>[^\W\d_](?:[^\W\d_]|[\s./·]|\^?[23])*)?
    $""",
    re.VERBOSE,
)
_WORDS = re.compile(r"^[^\W\d_]+(?:[\s'\-][^\W\d_]+)*$")


def normalize_answer(text: str) -> str:
    """The answer with presentation removed (see the module docstring); used by every comparison."""
    text = _DIGIT_GROUPING.sub(",", text)
    text = unicodedata.normalize("NFKC", text).translate(_MINUS).strip()
    for _ in range(3):  # a few layers, e.g. $\boxed{...}$
        before = text
        boxed = _BOXED_WHOLE.match(text)
        if boxed:
            text = boxed.group(1).strip()
        for left, right in _DELIMITERS:
            if len(text) > len(left) + len(right) and text.startswith(left) and text.endswith(right):
                text = text[len(left) : -len(right)].strip()
        if text == before:
            break
    while (opened := _TEXT_MACRO.sub(r"\1", text)) != text:
        text = opened
    text = _SPACING.sub(" ", text).replace("\\%", "%").replace("\\$", "$")
    text = re.sub(r"\s+", " ", text).strip()
    return text.rstrip(".。").strip()


def choice_letter(text: str, *, lowercase_ok: bool = False) -> str | None:
    """The option letter a normalised answer names ('C', '(C)', 'C) 25', 'Option C'), or None.

    A reference must use a capital (a lone 'e' or 'x' in a math answer is not an option); a prediction
    answering a choice question may write 'c'.
    """
    for pattern in _CHOICE_PATTERNS:
        match = pattern.match(text.upper() if lowercase_ok else text)
        if match:
            return match.group(1).upper()
    return None


class _NoMatch(Exception):
    """Raised inside the comparison when text cannot be compared safely; check_answer turns it into a reason."""


def parse_number(text: str) -> tuple[Fraction, bool] | None:
    """(value, had a percent sign) of a plain number with optional currency, unit and scale word; else None.
    Raises _NoMatch for a number longer than MAX_DIGITS digits."""
    match = _NUMBER.match(text)
    if match is None or (match.group("int") is None and match.group("frac") is None):
        return None
    if match.group("cur1") and match.group("cur2"):
        return None
    unit = (match.group("unit") or "").strip()
    if len(unit) == 1 and unit.isascii() and unit not in _SINGLE_LETTER_UNITS:
        return None
    digits = (match.group("int") or "0").replace(",", "") + (match.group("frac") or "")
    if len(digits) > MAX_DIGITS:
        raise _NoMatch(f"a number with {len(digits)} digits (limit {MAX_DIGITS})")
    value = Fraction(digits)
    if match.group("den") is not None:
        if match.group("frac") is not None or int(match.group("den")) == 0:
            return None
        value /= int(match.group("den"))
    if match.group("scale"):
        value *= _SCALE[match.group("scale")]
    if match.group("sign") == "-":
        value = -value
    return value, match.group("pct") is not None


def _numbers_match(pred: tuple[Fraction, bool], ref: tuple[Fraction, bool]) -> bool:
    (p, p_pct), (r, r_pct) = pred, ref
    if p == r:
        return True  # '25%' and '25' name the same percentage
    if p_pct and not r_pct:
        return p / 100 == r
    if r_pct and not p_pct:
        return r / 100 == p
    return False


def _math_verify_match(pred: str, ref: str, timeout_s: int) -> bool:
    """math-verify's parse and verify, each under its time limit (signal.alarm: main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        raise CompassError(
            "answers_match needs math-verify's signal-based time limit, which works only in the main thread; "
            "compare answers in the main thread (an asyncio loop in the main thread is fine)"
        )
    from math_verify import parse, verify  # imported here: sympy costs ~0.5 s

    for side, text in (("prediction", pred), ("reference", ref)):
        depth = _nesting(text)
        if depth > MAX_NESTING:
            raise _NoMatch(f"{side} nests brackets {depth} deep (limit {MAX_NESTING})")
    # math-verify logs every unparsable answer; those are expected here (the text fallback handles them)
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    try:
        gold = parse(f"${ref}$", parsing_timeout=timeout_s)
        target = parse(f"${pred}$", parsing_timeout=timeout_s)
        if not gold or not target:
            return pred.casefold() == ref.casefold()
        return bool(verify(gold, target, timeout_seconds=timeout_s))
    except (ArithmeticError, ValueError, TypeError, RecursionError, MemoryError, AttributeError, IndexError,
            KeyError, TimeoutError) as err:  # sympy's failures on hostile text: no match, said why
        raise _NoMatch(f"math-verify failed: {type(err).__name__}: {str(err)[:120]}") from None


def _nesting(text: str) -> int:
    depth = deepest = 0
    for char in text:
        if char in "{([":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "})]":
            depth = max(depth - 1, 0)
    return deepest


def answers_match(predicted: str, reference: str, *, timeout_s: int = DEFAULT_TIMEOUT_S) -> bool:
    """True when `predicted` states the same final answer as `reference` (see the module docstring)."""
    return check_answer(predicted, reference, timeout_s=timeout_s)[0]


def check_answer(predicted: str, reference: str, *, timeout_s: int = DEFAULT_TIMEOUT_S) -> tuple[bool, str | None]:
    """(match, why not when it could not be compared): never raises on the text itself."""
    if not isinstance(predicted, str) or not isinstance(reference, str):
        raise CompassError(f"answers_match takes two strings, got {type(predicted).__name__} and {type(reference).__name__}")
    if not isinstance(timeout_s, int) or timeout_s < 1:
        raise CompassError(f"timeout_s must be a whole number of seconds >= 1 (signal.alarm), got {timeout_s!r}")
    if len(predicted) > MAX_ANSWER_CHARS:
        return False, f"prediction of {len(predicted)} characters (limit {MAX_ANSWER_CHARS})"
    try:
        return _compare(predicted, reference, timeout_s), None
    except _NoMatch as why:
        return False, str(why)


def _compare(predicted: str, reference: str, timeout_s: int) -> bool:
    pred, ref = normalize_answer(predicted), normalize_answer(reference)
    if not pred or not ref:
        return False

    ref_letter = choice_letter(ref)
    if ref_letter is not None:
        return choice_letter(pred, lowercase_ok=True) == ref_letter

    pred_num, ref_num = parse_number(pred), parse_number(ref)
    if pred_num is not None and ref_num is not None:
        return _numbers_match(pred_num, ref_num)

    pred_words, ref_words = _WORDS.match(pred), _WORDS.match(ref)
    if pred_words or ref_words:
        # words are not algebra: math-verify would read 'yes' as the product y*e*s (= 'sey')
        return bool(pred_words and ref_words) and " ".join(pred.casefold().split()) == " ".join(ref.casefold().split())

    return _math_verify_match(pred, ref, timeout_s)
