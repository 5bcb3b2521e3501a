"""Typed records that flow between stages, written as JSONL (one record per line).

    Problem --distill--> Trace --pairs--> Pair
    PDF --pages--> Page --evidence--> PageEvidence --doc-traces--> DocExample
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Lang = Literal["en", "ja"]


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Message(Record):
    role: Literal["system", "user", "assistant"]
    content: str


class Problem(Record):
    """One problem from a dataset source, in a schema shared by every source."""

    id: str = Field(description="stable id, unique within the source, e.g. 'gsm8k/train/12'")
    source: str
    question: str
    reference_answer: str
    reference_solution: str | None = None
    lang: Lang = "en"
    meta: dict[str, Any] = Field(default_factory=dict)


class Trace(Record):
    """A teacher's reasoning trace for a problem, in the <Problem>/<Thinking>/<Answer> format."""

    id: str = Field(description="'<problem id>#<sample index>'")
    problem_id: str
    source: str
    lang: Lang
    messages: list[Message] = Field(description="system, user, assistant: the SFT conversation")
    raw_output: str
    problem_part: str | None = None
    thinking: str | None = None
    answer_part: str | None = None
    extracted_answer: str | None = None
    reference_answer: str
    verified: bool
    teacher: str
    sampling: dict[str, Any] = Field(default_factory=dict)
    images: list[str] = Field(default_factory=list, description="image paths for VLM records")


class Reject(Record):
    """A record a stage refused, with the reason; written to rejects.jsonl."""

    id: str
    reason: str
    detail: str = ""
    record: dict[str, Any] = Field(default_factory=dict)


class Pair(Record):
    """A DPO preference pair. Where it came from: a corruption pair's `strategy` names the corruption and its
    `source_id` the Trace; a real preference pair (`strategy` "preference") has `source_id` '<dataset>#<row>'."""

    id: str
    source_id: str
    prompt: list[Message]
    chosen: str
    rejected: str
    strategy: Literal["omit_thinking", "tamper_thinking_numbers", "tamper_answer", "preference"]


class Page(Record):
    """One rendered PDF page."""

    doc_id: str
    page_index: int = Field(ge=0, description="0-based page index")
    image: str = Field(description="path of the rendered PNG, relative to the pages output directory")
    width: int
    height: int
    text: str = ""


class DocQuestion(Record):
    """A question about a document with its answer and the pages it was made from."""

    id: str
    doc_id: str
    question: str
    answer: str
    answer_format: Literal["Int", "Float", "Str", "List", "None"] = "Str"
    gold_pages: list[int] = Field(default_factory=list)


class PageEvidence(Record):
    question_id: str
    doc_id: str
    page_index: int
    evidence: str
    relevance_score: float = Field(ge=0, le=10)
    gold: bool = False


class DocExample(Record):
    """An SFT example for internalized long-document reasoning."""

    id: str
    question_id: str
    doc_id: str
    images: list[str]
    messages: list[Message]
    cot_placement: Literal["system", "user_prepend", "user_append", "none"]
    branch: Literal["vision", "text"]
    has_trace: bool
