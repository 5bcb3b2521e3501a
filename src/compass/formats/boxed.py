"""Find the final answer in \\boxed{...}: nested braces, escaped braces, several boxes, `\\boxed 5` without braces.

A box's content runs to its matching closing brace; `\\{` and `\\}` are literal braces (a LaTeX set
`\\boxed{\\{1, 2\\}}`) and do not count. Scanning continues after a box's end, so a box inside a box is part
of the outer content, not a box of its own. A `\\boxed` whose braces never close swallows the rest of the
text: it is malformed, and when it is the last box there is no final answer (None), because an earlier box
is not what the writer gave as final.
"""
from __future__ import annotations

import re

_BOXED = re.compile(r"\\boxed(?![A-Za-z])")
# `\boxed 72` : TeX takes one token as the argument; writers mean the number/word that follows.
_BRACELESS = re.compile(r"[^\s${}]+")
_TRAILING_PUNCT = ".,;:。、"


def match_brace(text: str, open_at: int) -> int | None:
    """Index of the brace closing the one at `open_at`, skipping backslash escapes; None when unbalanced."""
    depth = 0
    i = open_at
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 2
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def box_spans(text: str, begin: int = 0) -> tuple[list[tuple[int, int]], bool]:
    """(start, end) of the contents of each well-formed \\boxed at or after `begin`, in order, and whether the
    text ends in a malformed \\boxed. The one scanner behind extraction here and answer tampering in pairs."""
    spans: list[tuple[int, int]] = []
    pos = begin
    while (match := _BOXED.search(text, pos)) is not None:
        i = match.end()
        while i < len(text) and text[i].isspace():
            i += 1
        if i < len(text) and text[i] == "{":
            close = match_brace(text, i)
            if close is None:
                return spans, True
            spans.append((i + 1, close))
            pos = close + 1
            continue
        token = _BRACELESS.match(text, i)
        if token is None:
            return spans, True
        end = token.start() + len(token.group(0).rstrip(_TRAILING_PUNCT))
        if end == token.start():
            return spans, True
        spans.append((token.start(), end))
        pos = token.end()
    return spans, False


def find_boxes(text: str) -> tuple[list[str], bool]:
    """Contents (stripped) of the well-formed boxes in order, and whether the text ends in a malformed \\boxed."""
    spans, malformed = box_spans(text)
    return [text[start:end].strip() for start, end in spans], malformed


def extract_all_boxed(text: str) -> list[str]:
    """Contents of every well-formed \\boxed in order (a trailing malformed one is left out)."""
    return find_boxes(text)[0]


def extract_boxed(text: str) -> str | None:
    """Content of the last \\boxed in `text`; None when there is none or the last one is malformed."""
    boxes, malformed = find_boxes(text)
    if malformed or not boxes:
        return None
    return boxes[-1]
