"""MMLongBench-Doc's own scoring rules (mayubo2333/MMLongBench-Doc, eval/eval_score.py), reproduced rule by rule
so that `protocol: reference` gives the numbers the benchmark's scorer gives, without executing anything.

Written from reading the reference, not copied from it. Each rule, as the reference applies it to the gold
answer and the extracted short answer (both strings here, as in the reference's runs):

- cleaning (Float, Str, None, List items): lower case, strip, drop every '( ... )' with the spaces before it,
  one leading and one trailing quote character, a leading '$' and a trailing '%'. Its 'mile'/'miles'/'million'
  stripping has no effect (the result is discarded), so it is not applied here either.
- Int: Python's int() of the gold and int(float()) of the answer (so '8.9' truncates to 8 and '8,802' fails).
  When either conversion fails the score is (gold == ''), i.e. 0 for every real gold.
- Float: float() of both cleaned strings; an answer that does not convert scores 0; a gold that does not
  convert crashes the reference (here: a `ReferenceCrash`). Equal when, for the gold, gold/100 or gold*100,
  math.isclose(rel_tol=0.01) holds, or both rounded to max(min(decimals of each), 2) places agree (decimals
  counted in Python's str() of the float, 3 when it has no '.').
- Str and None: exact equality of the cleaned strings when the cleaned gold "looks exact" (contains https://,
  ends in .py or ipynb, starts with 'page', is digits with at most one '-digits' or 'whitespace digits' group,
  contains a.m. or p.m., is YYYY-MM-DD or YYYY-MM with '-' or whitespace, or is an e-mail address); ANLS with
  threshold 0.5 otherwise (a value of exactly 0.5 or less is 0; the length is taken of the upper-cased strings).
- List: a gold or answer that starts with '[' is eval()'d by the reference. Here it is read with
  ast.literal_eval, which accepts exactly the Python literals (strings, numbers, lists, tuples, dicts, sets,
  True/False/None) and evaluates nothing. Where only eval() could agree -- a bracketed answer that is an
  expression rather than a literal, e.g. "[1+1]" or "[len('ab')]" -- eval would compute a value (or raise for
  names like "[Not answerable]"); this module treats every such answer as the reference's exception path
  (see below) and records why. A value that is not a list is wrapped in one. Lengths must match; items are
  cleaned (after str()), sorted as strings, and compared joined with '-' when the first sorted gold item
  parses as a float or looks exact, else scored by the minimum ANLS of the sorted pairs. Two empty lists
  crash the reference (it indexes the first item).
- Exceptions: the reference's local-model runner (run_lvlm.py) catches any failure of extraction parsing or
  scoring, records the prediction as 'Failed to extract' and scores 0; its API runner (run_api.py) would
  abort the whole run. This module follows run_lvlm.py and reports each such case (`ReferenceOutcome.error`).

Aggregates (eval_acc_and_f1 / show_results): accuracy = mean score; recall = the score sum over rows whose
gold is not the exact string 'Not answerable' / their count; precision = the same sum / the count of rows
whose recorded prediction is not exactly 'Not answerable' (a different set: abstention variants such as
'not answerable.' count as answered); F1 = 0 when a denominator is empty. Groups: single-page = exactly one evidence page (unanswerable
rows included, '[0]' counts as one page), cross-page = not one page and gold != 'Not answerable',
unanswerable = gold == 'Not answerable', one group per evidence source (a row is in each of its sources) and
per document type; groups report accuracy and their count.
"""
from __future__ import annotations

import ast
import math
import re
from collections import defaultdict
from dataclasses import dataclass

from compass.errors import CompassError
from compass.evals.mmlongbench_score import group_key

NOT_ANSWERABLE = "Not answerable"
FAILED_TO_EXTRACT = "Failed to extract"  # what run_lvlm.py records as the prediction when anything raises
ANLS_THRESHOLD = 0.5
MAX_LITERAL_CHARS = 100_000  # literal_eval of a longer answer is refused (the reference would eval it)


class ReferenceCrash(Exception):
    """The reference scorer would raise here (its runner then records 'Failed to extract' and 0)."""


# --- the reference's string helpers --------------------------------------------------------------------


def clean(value) -> str:
    """The reference's cleaning of one answer (see the module docstring)."""
    text = str(value).lower().strip()
    text = re.sub(r"\s*\([^)]*\)", "", text).strip()
    if text[:1] in ("'", '"'):
        text = text[1:]
    if text[-1:] in ("'", '"'):
        text = text[:-1]
    return text.strip().lstrip("$").strip().rstrip("%").strip()


_NUMBERISH = re.compile(r"\d+(?:-\d+|\s\d+)?")
_YEAR_MONTH_DAY = re.compile(r"\d{4}[-\s]\d{2}[-\s]\d{2}")
_YEAR_MONTH = re.compile(r"\d{4}[-\s]\d{2}")
_EMAIL = re.compile(r"[a-zA-Z0-9._%+-]+@[a-zA-Z0-9.-]+\.[a-zA-Z]{2,}")


def looks_exact(text: str) -> bool:
    """Whether the reference compares a cleaned gold by equality instead of ANLS."""
    return (
        "https://" in text
        or text.endswith(".py")
        or text.endswith("ipynb")
        or text.startswith("page")
        or "a.m." in text
        or "p.m." in text
        or any(p.fullmatch(text) is not None for p in (_NUMBERISH, _YEAR_MONTH_DAY, _YEAR_MONTH, _EMAIL))
    )


def edit_distance(a: str, b: str) -> int:
    if len(a) > len(b):
        a, b = b, a
    row = list(range(len(a) + 1))
    for j, char_b in enumerate(b, 1):
        new = [j]
        for i, char_a in enumerate(a, 1):
            new.append(row[i - 1] if char_a == char_b else 1 + min(row[i - 1], row[i], new[-1]))
        row = new
    return row[-1]


def anls(gold: str, pred: str) -> float:
    length = max(len(gold.upper()), len(pred.upper()))
    value = 1.0 - (edit_distance(gold, pred) / length if length else 0.0)
    return 0.0 if value <= ANLS_THRESHOLD else value


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _decimals(value: float) -> int:
    shown = str(value)
    return len(shown.split(".")[-1]) if "." in shown else 3


def floats_equal(gold: float, pred: float) -> bool:
    """The reference's Float comparison with its percentage variants and rounding (module docstring)."""
    gold = float(str(gold).strip().rstrip("%").strip())
    for target in (gold / 100, gold, gold * 100):
        if math.isclose(target, pred, rel_tol=0.01):
            return True
        places = max(min(_decimals(pred), _decimals(target)), 2)
        if round(pred, places) == round(target, places):
            return True
    return False


def read_literal(text: str):
    """A bracketed answer as the Python value eval() would give for a literal; ReferenceCrash otherwise."""
    if len(text) > MAX_LITERAL_CHARS:
        raise ReferenceCrash(f"a {len(text)}-character list answer is not read (only eval() would)")
    try:
        return ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as err:
        raise ReferenceCrash(f"not a Python literal ({type(err).__name__}); only eval() could read it") from None


# --- one answer ----------------------------------------------------------------------------------------


def score(gold: str, pred: str, answer_format: str) -> float:
    """The reference score of one extracted answer; raises ReferenceCrash where the reference would raise."""
    if answer_format == "Int":
        try:
            return float(int(gold) == int(float(pred)))
        except (ValueError, OverflowError, TypeError):
            return float(gold == "")
    if answer_format == "Float":
        try:
            gold_value = float(clean(gold))
        except ValueError:
            raise ReferenceCrash(f"Float gold {gold!r} does not convert with float()") from None
        try:
            pred_value = float(clean(pred))
        except ValueError:
            return 0.0
        return float(floats_equal(gold_value, pred_value))
    if answer_format in ("Str", "None"):
        g, p = clean(gold), clean(pred)
        return float(g == p) if looks_exact(g) else anls(g, p)
    if answer_format == "List":
        golds = read_literal(gold) if gold.startswith("[") else gold
        preds = read_literal(pred) if pred.startswith("[") else pred
        golds = golds if isinstance(golds, list) else [golds]
        preds = preds if isinstance(preds, list) else [preds]
        if len(golds) != len(preds):
            return 0.0
        g_items = sorted(clean(v) for v in golds)
        p_items = sorted(clean(v) for v in preds)
        if not g_items:
            raise ReferenceCrash("two empty lists: the reference indexes the first item and raises")
        if _is_float(g_items[0]) or looks_exact(g_items[0]):
            return float("-".join(g_items) == "-".join(p_items))
        return min(anls(g, p) for g, p in zip(g_items, p_items))
    raise CompassError(f"unknown answer_format {answer_format!r}; expected Int, Float, Str, List or None")


def parse_extraction(reply: str | None) -> str | None:
    """The reference's reading of an extractor reply: the text after the first 'Extracted answer:' and before
    the first 'Answer format:', stripped; None (the reference raises, then records 'Failed to extract') when
    the reply has no 'Extracted answer:' before its first 'Answer format:'."""
    if reply is None:
        return None
    parts = reply.split("Answer format:")[0].split("Extracted answer:")
    return parts[1].strip() if len(parts) > 1 else None


@dataclass(frozen=True)
class ReferenceOutcome:
    """One row as the reference records it: the prediction it stores ('Failed to extract' after any
    exception), its score, and why it failed (None when nothing raised)."""

    pred: str
    score: float
    error: str | None


def outcome(gold: str, reply_answer: str | None, answer_format: str) -> ReferenceOutcome:
    """Score an extracted answer (None: extraction failed) the way run_lvlm.py does."""
    if reply_answer is None:
        return ReferenceOutcome(FAILED_TO_EXTRACT, 0.0, "the extractor reply has no 'Extracted answer:'")
    try:
        return ReferenceOutcome(reply_answer, score(gold, reply_answer, answer_format), None)
    except ReferenceCrash as err:
        return ReferenceOutcome(FAILED_TO_EXTRACT, 0.0, str(err))


# --- a run ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReferenceRow:
    """What the reference's aggregates read of one scored sample."""

    answer: str
    pred: str
    score: float
    evidence_pages: tuple[int, ...]
    evidence_sources: tuple[str, ...]
    doc_type: str


def accuracy_and_f1(rows: list[ReferenceRow]) -> tuple[float, float]:
    """eval_acc_and_f1: (0, 0) for no rows; F1 0 when either denominator is empty."""
    if not rows:
        return 0.0, 0.0
    accuracy = sum(r.score for r in rows) / len(rows)
    answerable = [r for r in rows if r.answer != NOT_ANSWERABLE]
    answered = [r for r in rows if r.pred != NOT_ANSWERABLE]
    if not answerable or not answered:
        return accuracy, 0.0
    correct = sum(r.score for r in answerable)
    recall, precision = correct / len(answerable), correct / len(answered)
    return accuracy, (2 * recall * precision / (recall + precision) if recall + precision > 0 else 0.0)


def aggregate(rows: list[ReferenceRow]) -> dict[str, float | int]:
    """The figures show_results writes, as metrics: accuracy, f1, the page splits, evidence sources and
    document types (accuracy and count each)."""
    accuracy, f1 = accuracy_and_f1(rows)
    metrics: dict[str, float | int] = {"accuracy": accuracy, "f1": f1, "n": len(rows)}
    groups: dict[str, list[ReferenceRow]] = {
        "single_page": [r for r in rows if len(r.evidence_pages) == 1],
        "cross_page": [r for r in rows if len(r.evidence_pages) != 1 and r.answer != NOT_ANSWERABLE],
        "unanswerable": [r for r in rows if r.answer == NOT_ANSWERABLE],
    }
    by_source: dict[str, list[ReferenceRow]] = defaultdict(list)
    by_type: dict[str, list[ReferenceRow]] = defaultdict(list)
    for row in rows:
        for source in row.evidence_sources:
            by_source[source].append(row)
        by_type[row.doc_type].append(row)
    groups.update({f"source.{group_key(k)}": v for k, v in by_source.items()})
    groups.update({f"doc_type.{group_key(k)}": v for k, v in by_type.items()})
    for name, members in groups.items():
        metrics[f"{name}.accuracy"] = accuracy_and_f1(members)[0]
        metrics[f"{name}.n"] = len(members)
    return metrics
