"""LLaVA-OneVision processor without torchvision, and VLM composition: vision tower + projector + LLM."""
from __future__ import annotations

from pathlib import Path

from transformers import LlavaOnevisionProcessor


class ImageOnlyOnevisionProcessor(LlavaOnevisionProcessor):
    """LlavaOnevisionProcessor for images only.

    The stock class type-checks a video processor, whose default implementation needs torchvision (which must
    not be installed here). Naming only image_processor and tokenizer in __init__ makes ProcessorMixin treat
    those two as the sub-processors. AutoProcessor cannot resolve this class from processor_config.json (it
    returns a bare tokenizer), so reload with `load_processor`.
    """

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        num_image_tokens=None,
        vision_feature_select_strategy=None,
        chat_template=None,
        image_token="<image>",
        vision_aspect_ratio="anyres_max_9",
        **kwargs,
    ):
        super().__init__(
            image_processor=image_processor,
            tokenizer=tokenizer,
            num_image_tokens=num_image_tokens,
            vision_feature_select_strategy=vision_feature_select_strategy,
            chat_template=chat_template,
            image_token=image_token,
            vision_aspect_ratio=vision_aspect_ratio,
            **kwargs,
        )


def load_processor(path: str | Path) -> ImageOnlyOnevisionProcessor:
    """The processor of a VLM directory written by compass (tiny builder or compose)."""
    return ImageOnlyOnevisionProcessor.from_pretrained(str(path))
