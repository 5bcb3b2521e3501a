"""The generation interface every backend implements: requests in, results out as they complete."""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from compass.errors import CompassError

DEVICE_HELP = "torch device: auto (CUDA when torch sees one, else CPU), cpu, cuda, cuda:1, ..."


def torch_device(requested: str) -> str:
    """The device a local model runs on: `auto` is CUDA when torch sees a GPU, else CPU (as training's
    `device: auto`); anything else is passed to torch as given."""
    if requested != "auto":
        return requested
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class GenRequest:
    """One chat completion to produce.

    `messages` is the OpenAI chat format: {"role": ..., "content": str | list of parts}; an image part is
    {"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}. `meta` travels with the request
    into its result untouched (e.g. the Problem the reference backend renders, or a sample index); it is
    never sent to a server.
    """

    id: str
    messages: list[dict[str, Any]]
    max_tokens: int = 1024
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class GenResult:
    """The outcome of one request: `text` on success, `error` (one line, no secrets) when every attempt failed."""

    id: str
    text: str | None
    error: str | None
    attempts: int
    output_tokens: int | None
    latency_s: float
    finish_reason: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None


class Backend(Protocol):
    """A text generator. `generate` yields one result per request, in completion order (not input order),
    reads `requests` lazily (never the whole iterable at once) and keeps its workers busy while the caller
    handles earlier results. Per-request failures come back as results with `error`; only misconfiguration
    raises."""

    name: str

    def generate(self, requests: Iterable[GenRequest]) -> Iterator[GenResult]: ...


def content_text(content: str | list[dict[str, Any]]) -> str:
    """The text of a message's content (a string, or the text parts of a part list joined by newlines)."""
    if isinstance(content, str):
        return content
    texts = []
    for part in content:
        if part["type"] == "text":
            texts.append(part["text"])
        elif part["type"] != "image_url":
            raise CompassError(f"unsupported message content part type {part['type']!r} (expected 'text' or 'image_url')")
    return "\n".join(texts)


def has_images(messages: list[dict[str, Any]]) -> bool:
    return any(
        not isinstance(m["content"], str) and any(p["type"] == "image_url" for p in m["content"]) for m in messages
    )


def sampling_batches(requests: Iterable[GenRequest], batch_size: int) -> Iterator[list[GenRequest]]:
    """Consecutive requests in batches of at most `batch_size` that share their sampling settings: one
    generate() call takes one set of them. Lazy, so the input is never held whole."""
    batch: list[GenRequest] = []
    for request in requests:
        if batch and (len(batch) == batch_size or _sampling_key(request) != _sampling_key(batch[0])):
            yield batch
            batch = []
        batch.append(request)
    if batch:
        yield batch


def _sampling_key(request: GenRequest) -> tuple:
    return (request.max_tokens, request.temperature, request.top_p, request.seed)
