"""The chat template training renders with: one that marks the assistant's tokens ({% generation %} markers), so
that the loss falls on the assistant's words only.

Real templates (Qwen3, Mistral, Gemma, Llama, ...) carry no markers. In order:
1. `--chat-template PATH` when given (a template file the user marked; it must have the markers);
2. the model's own template when it has the markers;
3. TRL's training template for that exact template (TRL ships patched copies for Qwen2.5/Qwen3/Qwen3-VL,
   Gemma/Gemma3, Llama 3, Idefics3/SmolVLM, LLaVA-NeXT, Phi-3, DeepSeek and more; not Mistral);
4. otherwise training refuses, with that advice.
Only what training renders changes: merged models keep the base's own template for inference.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from compass.errors import CompassError

_MARKER = re.compile(r"\{%-?\s*generation\s*-?%\}")


def has_generation_markers(template: str) -> bool:
    return _MARKER.search(template) is not None


@dataclass(frozen=True)
class TemplateChoice:
    template: str
    source: str  # "model", "trl", or "file:<name>"

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.template.encode("utf-8")).hexdigest()


def _own_template(processing_class) -> str | None:
    template = processing_class.chat_template
    if isinstance(template, dict):  # named variants: the default one renders
        template = template["default"] if "default" in template else None
    return template


def choose_training_template(processing_class, model_dir: Path, chat_template: Path | None) -> TemplateChoice:
    advice = ("pass --chat-template PATH: a copy of the model's template with each assistant turn wrapped in "
              "{% generation %}...{% endgeneration %}")
    if chat_template is not None:
        path = Path(chat_template)
        if not path.is_file():
            raise CompassError(f"--chat-template {path}: no such file")
        text = path.read_text(encoding="utf-8")
        if not has_generation_markers(text):
            raise CompassError(f"--chat-template {path}: no {{% generation %}} markers, so no assistant token would be "
                               "marked for the loss")
        return TemplateChoice(text, f"file:{path.name}")
    own = _own_template(processing_class)
    if own is None:
        raise CompassError(f"{model_dir}: no chat template; training renders conversations with one: {advice}")
    if has_generation_markers(own):
        return TemplateChoice(own, "model")
    from trl.chat_template_utils import get_training_chat_template

    try:
        patched = get_training_chat_template(processing_class)
    except ValueError:  # TRL's way of saying it has no training copy of this template
        patched = None
    if patched is not None and has_generation_markers(patched):
        return TemplateChoice(patched, "trl")
    raise CompassError(f"{model_dir}: its chat template has no {{% generation %}} markers (needed for assistant-only "
                       f"loss) and TRL ships no training template for it; {advice}")


def set_template(processing_class, template: str) -> None:
    """On a processor and its tokenizer alike (text tokenization renders with the tokenizer's)."""
    from transformers import ProcessorMixin

    processing_class.chat_template = template
    if isinstance(processing_class, ProcessorMixin):
        processing_class.tokenizer.chat_template = template


def use_training_template(processing_class, model_dir: Path, chat_template: Path | None):
    choice = choose_training_template(processing_class, model_dir, chat_template)
    set_template(processing_class, choice.template)
    return processing_class, choice
