"""Decontamination: find training problems that overlap evaluation problems.

Two ways a training problem matches an evaluation problem:
1. link keys: both carry the same value of a meta key that names one underlying item across sources.
   `gsm8k_test_index` is the one that matters: MGSM's 250 test items are translations of the first 250 GSM8K
   test items in order, so MGSM-ja item k and GSM8K test item k are the same problem in two languages, and no
   text overlap can see that. The gsm8k and mgsm_ja sources record the index on their test splits.
2. n-gram overlap of normalised text (NFKC, case-folded, numbers without thousands commas, sentence
   punctuation dropped; Latin words and numbers are tokens, each CJK character is a token so Japanese works):
   score = |shared n-grams| / min(|n-grams of either|), i.e. the share of the shorter text found in the other.
   A text shorter than n tokens is one n-gram (it matches only the same short text). A problem's texts are
   its question and, when present, meta['question_en'] (the English source of a translation).
The report names, for each dropped problem, its best-matching evaluation item, how it matched and the score.
"""
from __future__ import annotations

import re
import unicodedata
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from compass.errors import CompassError
from compass.records import Problem

DEFAULT_NGRAM = 5
DEFAULT_THRESHOLD = 0.5
DEFAULT_LINK_KEYS = ("gsm8k_test_index",)
TEXT_META_KEYS = ("question_en",)

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9f"
_TOKEN = re.compile(rf"[{_CJK}]|\d+(?:[.,]\d+)*|[^\W\d_{_CJK}]+|[^\w\s]")
_SENTENCE_PUNCT = set(".,!?;:'\"`「」『』。、・…")


def tokens(text: str) -> list[str]:
    """Normalised tokens of a text (see the module docstring)."""
    text = unicodedata.normalize("NFKC", text).casefold()
    out = []
    for token in _TOKEN.findall(text):
        if token in _SENTENCE_PUNCT:
            continue
        if token[0].isdigit():
            token = token.replace(",", "")
        out.append(token)
    return out


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    toks = tokens(text)
    if not toks:
        return set()
    if len(toks) < n:
        return {tuple(toks)}
    return {tuple(toks[i : i + n]) for i in range(len(toks) - n + 1)}


def problem_texts(problem: Problem) -> list[str]:
    texts = [problem.question]
    for key in TEXT_META_KEYS:
        value = problem.meta.get(key)  # optional by design: only translated sources carry it
        if isinstance(value, str) and value.strip():
            texts.append(value)
    return texts


@dataclass(frozen=True)
class Match:
    train_id: str
    eval_id: str
    eval_source: str
    method: str  # "link:<key>" or "ngram"
    score: float


class EvalIndex:
    """The evaluation problems, indexed by n-gram and by link-key value."""

    def __init__(self, eval_problems: Sequence[Problem], n: int = DEFAULT_NGRAM, link_keys: Iterable[str] = DEFAULT_LINK_KEYS):
        if n < 1:
            raise CompassError(f"n-gram size must be >= 1, got {n}")
        if not eval_problems:
            raise CompassError("the evaluation set is empty: nothing to decontaminate against")
        self.n = n
        self.problems = list(eval_problems)
        self.link_keys = tuple(link_keys)
        self.grams: list[list[set[tuple[str, ...]]]] = []  # per eval item, per text
        self.by_gram: dict[tuple[str, ...], set[int]] = defaultdict(set)
        self.by_link: dict[tuple[str, str], list[int]] = defaultdict(list)
        for index, problem in enumerate(self.problems):
            sets = [ngrams(text, n) for text in problem_texts(problem)]
            self.grams.append(sets)
            for grams in sets:
                for gram in grams:
                    self.by_gram[gram].add(index)
            for key in self.link_keys:
                if key in problem.meta:
                    self.by_link[(key, _link_value(problem.meta[key]))].append(index)

    def best_match(self, problem: Problem, threshold: float) -> tuple[Match | None, int]:
        """The best evaluation match at or above `threshold` (links first, score 1.0), and how many matched."""
        for key in self.link_keys:
            if key in problem.meta:
                hits = self.by_link.get((key, _link_value(problem.meta[key])), [])
                if hits:
                    first = self.problems[hits[0]]
                    return Match(problem.id, first.id, first.source, f"link:{key}", 1.0), len(hits)
        scores: dict[int, float] = {}
        for grams in (ngrams(text, self.n) for text in problem_texts(problem)):
            if not grams:
                continue
            shared: dict[int, int] = defaultdict(int)
            for gram in grams:
                for index in self.by_gram.get(gram, ()):
                    shared[index] += 1
            for index, count in shared.items():
                for eval_grams in self.grams[index]:
                    if not eval_grams:
                        continue
                    common = count if len(self.grams[index]) == 1 else len(grams & eval_grams)
                    score = common / min(len(grams), len(eval_grams))
                    scores[index] = max(scores.get(index, 0.0), score)
        above = [(score, index) for index, score in scores.items() if score >= threshold]
        if not above:
            return None, 0
        score, index = max(above, key=lambda pair: (pair[0], -pair[1]))  # best score, then first eval item
        best = self.problems[index]
        return Match(problem.id, best.id, best.source, "ngram", round(score, 6)), len(above)


def _link_value(value) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise CompassError(f"a link key value must be an int or a string, got {type(value).__name__}: {value!r}")
    return str(value)


def decontaminate(
    problems: Iterable[Problem],
    eval_problems: Sequence[Problem],
    *,
    n: int = DEFAULT_NGRAM,
    threshold: float = DEFAULT_THRESHOLD,
    link_keys: Iterable[str] = DEFAULT_LINK_KEYS,
) -> tuple[list[Problem], list[tuple[Problem, Match, int]]]:
    """Split `problems` into (kept, dropped-with-its-best-match-and-match-count)."""
    if not 0 < threshold <= 1:
        raise CompassError(f"threshold must be in (0, 1], got {threshold}")
    index = EvalIndex(eval_problems, n, link_keys)
    kept: list[Problem] = []
    dropped: list[tuple[Problem, Match, int]] = []
    for problem in problems:
        match, count = index.best_match(problem, threshold)
        if match is None:
            kept.append(problem)
        else:
            dropped.append((problem, match, count))
    return kept, dropped
