"""The reasoning format (<Problem>/<Thinking>/<Answer>), \\boxed answer extraction, and answer equivalence."""
from compass.formats.boxed import extract_all_boxed, extract_boxed
from compass.formats.equivalence import answers_match, normalize_answer
from compass.formats.reasoning import (
    SYSTEM_PROMPTS,
    FormatError,
    ReasoningParts,
    parse_reasoning,
    render_reasoning,
    validate_reasoning,
)

__all__ = [
    "SYSTEM_PROMPTS",
    "FormatError",
    "ReasoningParts",
    "answers_match",
    "extract_all_boxed",
    "extract_boxed",
    "normalize_answer",
    "parse_reasoning",
    "render_reasoning",
    "validate_reasoning",
]
