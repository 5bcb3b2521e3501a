"""Per-page evidence (docs/method.md B.1): the extraction prompt, strict parsing of the JSON reply, score
clamping, and the offline `lexical` extractor.

A reply must be one JSON object with exactly two keys, `evidence` (a non-empty string) and
`relevance_score` (a finite number). The only leniency: a leading <think>...</think> block (reasoning
models without a server-side parser) and one ```json fence around the object are removed first.
Anything else is malformed and raises MalformedEvidence with the reason; the stage retries and then
rejects. The score is clamped to [0, 10]; a gold page (one the question was made from) is raised to at
least `min_gold_score` afterwards.
"""
from __future__ import annotations

import base64
import json
import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from compass.errors import CompassError
from compass.records import DocQuestion, Page
from compass.vocab import reply_body

MIN_SCORE, MAX_SCORE = 0.0, 10.0
IRRELEVANT = "This page contains no information relevant to the question."

EVIDENCE_PROMPT = """You are reading one page of a long document, one page at a time, to collect evidence for a question.

Question: {question}

Read the page image and reply with one JSON object and nothing else:
{{"evidence": "...", "relevance_score": 0.0}}

- "evidence": quote, verbatim and at length, every piece of text on this page that bears on the question, and
  describe in detail any table, chart, figure or other visual element that does (its labels, values and what it shows).
  Be verbose. Do not mention page numbers. Do not answer the question or draw conclusions.
- "relevance_score": a number from 0 to 10 for how useful this page is for answering the question.
- If the page is irrelevant, write a single sentence saying so as the evidence and give a relevance_score of 0.{gold_note}"""

GOLD_NOTE = ("\n- This page is one of the pages the question was written from: it is relevant, so give it a "
             "relevance_score between 6 and 10.")


class MalformedEvidence(ValueError):
    """A reply that is not the required JSON object; the message is the reason."""


def clamp_score(score: float) -> float:
    return min(MAX_SCORE, max(MIN_SCORE, score))


def final_score(score: float, gold: bool, min_gold_score: float) -> float:
    """Clamp to [0, 10], then raise a gold page to at least `min_gold_score`."""
    score = clamp_score(score)
    return max(score, min_gold_score) if gold else score


def parse_evidence(text: str) -> tuple[str, float]:
    """(evidence, clamped score) from a reply, or MalformedEvidence naming what is wrong."""
    body = reply_body(text)
    try:
        data = json.loads(body)
    except json.JSONDecodeError as err:
        raise MalformedEvidence(f"not valid JSON ({err.msg} at column {err.colno}): {body[:80]!r}") from None
    if not isinstance(data, dict):
        raise MalformedEvidence(f"expected a JSON object, got {type(data).__name__}")
    keys = set(data)
    if keys != {"evidence", "relevance_score"}:
        raise MalformedEvidence(f"expected exactly the keys evidence and relevance_score, got {sorted(keys)}")
    evidence, score = data["evidence"], data["relevance_score"]
    if not isinstance(evidence, str) or not evidence.strip():
        raise MalformedEvidence(f"evidence must be a non-empty string, got {evidence!r:.60}")
    # bool is an int subclass in Python: true/false are not scores
    if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
        raise MalformedEvidence(f"relevance_score must be a finite number, got {score!r}")
    return evidence.strip(), clamp_score(float(score))


IMAGE_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}


def image_data_url(path: Path) -> str:
    """A page image as a data: URL for an OpenAI-style request; a missing or unsupported image is one line naming it."""
    if path.suffix.lower() not in IMAGE_MIME:
        raise CompassError(f"page image {path}: unsupported type {path.suffix!r}; pages must be "
                           f"{', '.join(sorted(IMAGE_MIME))} (what `compass pages` writes)")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CompassError(f"page image {path} does not exist (the pages input names it): rerun `compass pages` "
                           "for that document or pass the images directory it wrote") from None
    return f"data:{IMAGE_MIME[path.suffix.lower()]};base64,{base64.b64encode(data).decode('ascii')}"


def evidence_messages(question: DocQuestion, image: Path, gold: bool) -> list[dict]:
    """The OpenAI chat messages of one (question, page) extraction: the page image, then the instructions."""
    prompt = EVIDENCE_PROMPT.format(question=question.question, gold_note=GOLD_NOTE if gold else "")
    return [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": image_data_url(image)}},
        {"type": "text", "text": prompt},
    ]}]


# --- the offline lexical extractor ------------------------------------------------------------------------

_WORD = re.compile(r"[a-z]+|\d+(?:[.,]\d+)*")
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uff66-\uff9f]+")
STOPWORDS = frozenset(
    "a an and are as at be by co did do does for from had has have how in is it its ltd many much of on or "
    "the to was were what when where which who whose with".split()
)


def tokens(text: str) -> list[str]:
    """Lowercased words and numbers (thousands separators dropped) plus character bigrams of Japanese runs."""
    text = text.lower()
    out = [w.replace(",", "") for w in _WORD.findall(text) if w not in STOPWORDS]
    for run in _CJK.findall(text):
        out.extend([run] if len(run) == 1 else [run[i : i + 2] for i in range(len(run) - 1)])
    return out


def display_width(line: str) -> int:
    """Columns a line takes: CJK characters are twice as wide as latin ones."""
    return sum(2 if _CJK.match(ch) or "\u3000" <= ch <= "\u303f" or "\uff00" <= ch <= "\uffef" else 1 for ch in line)


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"(])|(?<=[。！？])")


def text_units(text: str, long_line: int = 60) -> list[str]:
    """Quotable units of a page's text layer: sentences of wrapped paragraphs, and runs of short lines
    (table rows, chart labels, headings) kept together so that a table is quoted with its header."""
    units: list[str] = []
    paragraph: list[str] = []
    short: list[str] = []

    def flush_paragraph() -> None:
        if paragraph:
            joined = paragraph[0]
            for line in paragraph[1:]:  # a wrapped Japanese line continues without a space
                glue = "" if _CJK.match(joined[-1:]) and _CJK.match(line[:1]) else " "
                joined += glue + line
            units.extend(s.strip() for s in _SENTENCE_END.split(joined) if s.strip())
            paragraph.clear()

    def flush_short() -> None:
        if short:
            units.append(" | ".join(short))
            short.clear()

    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        wide = display_width(line) >= long_line
        if wide or paragraph:
            flush_short()
            paragraph.append(line)
            if not wide:  # a short line closes a wrapped paragraph
                flush_paragraph()
        else:
            short.append(line)
    flush_paragraph()
    flush_short()
    return units


@dataclass
class LexicalExtractor:
    """BM25 over the text layers of one document's pages; scores mapped onto 0-10 as 10 * s / (s + scale).

    A page whose mapped score is below `floor` is irrelevant: one sentence and 0. A relevant page quotes
    its best `max_quotes` units verbatim, in page order. Gold pages always quote their best units (the
    score is raised later, by the stage, like every backend's)."""

    k1: float = 1.2
    b: float = 0.75
    scale: float = 6.0
    floor: float = 1.5
    max_quotes: int = 3
    min_quote_share: float = 0.4

    def score_document(self, question: DocQuestion, pages: list[Page]) -> list[tuple[str, float]]:
        """(evidence, score in [0, 10]) for every page of one document, in page order."""
        page_tokens = [tokens(p.text) for p in pages]
        n = len(pages)
        df = Counter(t for toks in page_tokens for t in set(toks))
        avg_len = sum(len(t) for t in page_tokens) / n if n else 0.0
        query = set(tokens(question.question))
        idf = {t: math.log(1 + (n - df[t] + 0.5) / (df[t] + 0.5)) for t in query}
        out = []
        for page, toks in zip(pages, page_tokens):
            tf = Counter(toks)
            norm = self.k1 * (1 - self.b + self.b * len(toks) / avg_len) if avg_len else self.k1
            s = sum(idf[t] * tf[t] * (self.k1 + 1) / (tf[t] + norm) for t in query if tf[t])
            score = round(MAX_SCORE * s / (s + self.scale), 1)
            gold = page.page_index in question.gold_pages
            if score < self.floor and not gold:
                out.append((IRRELEVANT, 0.0))
                continue
            out.append((self.quote(page.text, query, idf), score))
        return out

    def quote(self, text: str, query: set[str], idf: dict[str, float]) -> str:
        units = text_units(text)
        scored = [(sum(idf[t] for t in set(tokens(u)) & query), i) for i, u in enumerate(units)]
        top = max((s for s, _ in scored), default=0.0)
        # quote the best units only: a unit far below the best one (a running footer) is noise
        ranked = sorted(scored, key=lambda x: (-x[0], x[1]))[: self.max_quotes]
        best = sorted(i for s, i in ranked if s > 0 and s >= self.min_quote_share * top)
        if not best:
            return "The page has no passage that matches the question's terms."
        return "The page states: " + " ".join(f'"{units[i]}"' for i in best)
