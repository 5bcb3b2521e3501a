"""From per-page evidence to SFT examples (docs/method.md B.2-B.4).

- select_pages: keep pages scoring above the threshold (1.0), sort high to low (ties: page order), keep
  the top K (24). Irrelevant pages never enter a trace: listing them made the model loop on "irrelevant".
- build_trace: "Page i:" + evidence blocks in that order (1-based page numbers, as the images are labelled).
- Answer branches, exclusive, split by seed: vision (the top-K page images and the question, no system
  prompt) and text (the sorted evidence, the question and TEXT_BRANCH_SYSTEM).
- example_messages: user turn = every page image with its "Page N:" label, then the question;
  assistant = <think> trace </think> answer. The control token <cot> sits in the system message, before
  or after the user text, or nowhere; with no <cot> there is no trace either (the answer alone).

Per-question choices (branch, placement) are drawn from sha256(seed, purpose, question id): independent of
the order and number of other questions, so adding a question never changes another one's example.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from compass.errors import CompassError
from compass.io import derived_bits
from compass.records import DocQuestion, Message, PageEvidence
from compass.vocab import COT, IMAGE_TOKEN as IMAGE_MARK, think_block

Placement = Literal["system", "user_prepend", "user_append", "none"]
PLACEMENTS: tuple[Placement, ...] = ("system", "user_prepend", "user_append", "none")

TEXT_BRANCH_SYSTEM = (
    "You answer questions about a long document. You cannot see the document itself: the evidence below was "
    "gathered page by page by a reader who looked at one page at a time, and only the {top_k} most relevant "
    "pages are included, sorted from most to least relevant. Each block starts with its page number. Answer "
    "the question from this evidence, concisely. If the evidence does not contain the answer, reply "
    "\"Not answerable\"."
)


def select_pages(evidence: Iterable[PageEvidence], threshold: float = 1.0, top_k: int = 24) -> list[PageEvidence]:
    """Pages with relevance_score > threshold, highest first (ties by page index), at most top_k."""
    if top_k < 1:
        raise CompassError(f"top_k must be >= 1, got {top_k}")
    kept = [e for e in evidence if e.relevance_score > threshold]
    kept.sort(key=lambda e: (-e.relevance_score, e.page_index))
    return kept[:top_k]


def build_trace(selected: list[PageEvidence]) -> str:
    if not selected:
        raise CompassError("a trace needs at least one relevant page")
    return "\n\n".join(f"Page {e.page_index + 1}: {e.evidence.strip()}" for e in selected)


def unit_draw(seed: int, purpose: str, key: str) -> float:
    """A uniform number in [0, 1) fixed by (seed, purpose, key)."""
    return derived_bits(seed, purpose, key, nbytes=8) / 2**64


def choose(weights: dict[str, float], u: float) -> str:
    """The category whose cumulative-weight interval holds u (weights in a fixed order, summing to 1)."""
    total = 0.0
    for name, weight in weights.items():
        total += weight
        if u < total:
            return name
    return next(reversed(weights))  # u within float rounding of 1.0


def check_weights(weights: dict[str, float]) -> dict[str, float]:
    if set(weights) != set(PLACEMENTS):
        raise CompassError(f"placement weights must name exactly {list(PLACEMENTS)}, got {sorted(weights)}")
    bad = {k: v for k, v in weights.items() if v < 0}
    if bad:
        raise CompassError(f"placement weights must be >= 0, got {bad}")
    if abs(sum(weights.values()) - 1.0) > 1e-6:
        raise CompassError(f"placement weights must sum to 1, got {sum(weights.values())} from {weights}")
    return {name: weights[name] for name in PLACEMENTS}


def draw_branch(seed: int, question_id: str, vision_share: float) -> Literal["vision", "text"]:
    return "vision" if unit_draw(seed, "branch", question_id) < vision_share else "text"


def draw_placement(seed: int, question_id: str, weights: dict[str, float]) -> Placement:
    return choose(weights, unit_draw(seed, "placement", question_id))  # type: ignore[return-value]


# --- answer prompts ---------------------------------------------------------------------------------------


def vision_answer_messages(question: DocQuestion, selected: list[PageEvidence], image_urls: list[str]) -> list[dict]:
    """Vision branch: the top-K page images, each after its "Page N:" label, then the question; no system prompt."""
    parts: list[dict] = []
    for evidence, url in zip(selected, image_urls, strict=True):
        parts.append({"type": "text", "text": f"Page {evidence.page_index + 1}:"})
        parts.append({"type": "image_url", "image_url": {"url": url}})
    parts.append({"type": "text", "text": question.question})
    return [{"role": "user", "content": parts}]


def text_answer_messages(question: DocQuestion, selected: list[PageEvidence], top_k: int) -> list[dict]:
    """Text branch: system prompt, then the sorted evidence and the question."""
    return [
        {"role": "system", "content": TEXT_BRANCH_SYSTEM.format(top_k=top_k)},
        {"role": "user", "content": f"Evidence:\n\n{build_trace(selected)}\n\nQuestion: {question.question}"},
    ]


# --- the SFT example ---------------------------------------------------------------------------------------


def shown_pages(n_pages: int, selected: list[PageEvidence], max_images: int | None) -> list[int]:
    """0-based pages whose images the example shows, in page order: every page (the recipe), or, capped at
    `max_images`, the trace's pages plus the first pages of the document up to the cap."""
    if max_images is None or n_pages <= max_images:
        return list(range(n_pages))
    chosen = {e.page_index for e in selected}
    if len(chosen) > max_images:
        raise CompassError(f"{len(chosen)} trace pages do not fit in max_images={max_images}")
    for page in range(n_pages):
        if len(chosen) == max_images:
            break
        chosen.add(page)
    return sorted(chosen)


def example_messages(question: str, pages: list[int], placement: Placement, trace: str | None, answer: str) -> list[Message]:
    """The conversation of one DocExample: each shown page's image after its "Page N:" label (N = index + 1),
    then the question."""
    if placement not in PLACEMENTS:
        raise CompassError(f"unknown <cot> placement {placement!r}; expected one of {PLACEMENTS}")
    if placement != "none" and not trace:
        raise CompassError(f"placement {placement!r} needs a trace")
    user = "".join(f"Page {p + 1}:\n{IMAGE_MARK}\n" for p in pages) + question
    if placement == "user_prepend":
        user = f"{COT}\n{user}"
    elif placement == "user_append":
        user = f"{user}\n{COT}"
    messages = [Message(role="system", content=COT)] if placement == "system" else []
    messages.append(Message(role="user", content=user))
    assistant = answer if placement == "none" else f"{think_block(trace)}\n\n{answer}"
    messages.append(Message(role="assistant", content=assistant))
    return messages
