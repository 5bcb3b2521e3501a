"""The words compass puts into prompts and training targets, defined once: control tokens, the reasoning
tags of both recipes, the image placeholder, and the helpers that strip or split on them.

- `<cot>` (COT): the control token of the long-document recipe (docs/method.md B.4): present, the model writes a
  `<think> ... </think>` trace before its answer; absent, it answers directly.
- `<think>` / `</think>` (THINK_OPEN / THINK_CLOSE): the trace delimiters of reasoning models and of the
  DocExample targets. Teachers (Qwen3-class) may also lead their replies with such a block.
- `<Problem>` / `<Thinking>` / `<Answer>` (REASONING_SECTIONS): the XML reasoning format of recipe A.
- `<image>` (IMAGE_TOKEN): where one image goes in a user turn; the processor expands it to patch tokens.
Plain constants and pure functions only: anything may import this module.
"""
from __future__ import annotations

import re

COT = "<cot>"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
IMAGE_TOKEN, VIDEO_TOKEN = "<image>", "<video>"

REASONING_SECTIONS = ("Problem", "Thinking", "Answer")
PROBLEM_OPEN, PROBLEM_CLOSE = "<Problem>", "</Problem>"
THINKING_OPEN, THINKING_CLOSE = "<Thinking>", "</Thinking>"
ANSWER_OPEN, ANSWER_CLOSE = "<Answer>", "</Answer>"

# Tokens a model writes in its outputs (added to tiny tokenizers as single, non-special tokens so that
# decode(skip_special_tokens=True) keeps them and answer extraction still sees them).
OUTPUT_MARKERS = (COT, THINK_OPEN, THINK_CLOSE, PROBLEM_OPEN, PROBLEM_CLOSE, THINKING_OPEN, THINKING_CLOSE,
                  ANSWER_OPEN, ANSWER_CLOSE)

_LEADING_THINK = re.compile(r"^\s*<think>.*?</think>\s*", re.DOTALL)
_CODE_FENCE = re.compile(r"^```(?:json)?\s*\n?(.*?)\n?\s*```$", re.DOTALL)


def strip_leading_think(text: str) -> str:
    """`text` without one leading `<think>...</think>` block (a reasoning teacher's preamble), stripped.
    Text with no such block comes back stripped; an unclosed `<think>` is left in place."""
    return _LEADING_THINK.sub("", text, count=1).strip()


def reply_body(text: str) -> str:
    """What a served model meant as its (JSON) reply: without a leading `<think>` block and without a
    surrounding ```json ... ``` fence, stripped."""
    body = strip_leading_think(text)
    fenced = _CODE_FENCE.match(body)
    return fenced.group(1).strip() if fenced else body


def after_thinking(text: str) -> str | None:
    """The answer part of a model output: what follows the last `</think>`, stripped; the whole text when it
    has no trace; None when a `<think>` is opened and never closed (the model ran out before answering)."""
    if THINK_CLOSE in text:
        return text.rsplit(THINK_CLOSE, 1)[1].strip()
    if THINK_OPEN in text:
        return None
    return text.strip()


def think_block(trace: str) -> str:
    """A DocExample's trace part: `<think>`, the trace, `</think>`, each on its own line."""
    return f"{THINK_OPEN}\n{trace}\n{THINK_CLOSE}"
