"""VLM processors without torchvision, chosen by a registry keyed by the model's family.

Several stock processors cannot be built where torchvision is missing (these machines: its wheel is a CUDA build
that fails on import): LLaVA-OneVision, Qwen2.5-VL, Qwen3-VL and SmolVLM type-check a video processor whose
implementation needs torchvision; PixtralProcessor's module imports torchvision (compass has its own image path
for it, ImageOnlyPixtralProcessor). compass only feeds images, so each of
those gets an image-only subclass whose `__init__` names just the image processor and the tokenizer (which is how
ProcessorMixin decides its sub-processors); Gemma3 and Idefics3 processors need no workaround. With torchvision
importable, the stock processor is used (AutoProcessor).

Whatever compass writes names transformers' own processor class in processor_config.json (`save_processor`), so
plain AutoProcessor (vLLM, lmms-eval, the hub) reads the directory as the stock processor.
"""
from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

from transformers import (
    Gemma3Processor,
    Idefics3Processor,
    LlavaOnevisionProcessor,
    ProcessorMixin,
    Qwen2_5_VLProcessor,
    Qwen3VLProcessor,
    SmolVLMProcessor,
)
from compass.errors import CompassError
from compass.models.families import family_of

PROCESSOR_CONFIG = "processor_config.json"
# optional packages a family's processor imports, and the extra that installs them
EXTRAS = {"smolvlm": [("num2words", "compass-vlm[smolvlm]")]}


class ImageOnlyOnevisionProcessor(LlavaOnevisionProcessor):
    """LlavaOnevisionProcessor for images only (no video processor)."""

    def __init__(self, image_processor=None, tokenizer=None, num_image_tokens=None,
                 vision_feature_select_strategy=None, chat_template=None, image_token="<image>",
                 vision_aspect_ratio="anyres_max_9", **kwargs):
        super().__init__(image_processor=image_processor, tokenizer=tokenizer, num_image_tokens=num_image_tokens,
                         vision_feature_select_strategy=vision_feature_select_strategy, chat_template=chat_template,
                         image_token=image_token, vision_aspect_ratio=vision_aspect_ratio, **kwargs)


class ImageOnlyQwen2_5_VLProcessor(Qwen2_5_VLProcessor):
    """Qwen2_5_VLProcessor for images only (no video processor)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
                         chat_template=chat_template, **kwargs)


class ImageOnlyQwen3VLProcessor(Qwen3VLProcessor):
    """Qwen3VLProcessor for images only (no video processor)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
                         chat_template=chat_template, **kwargs)


class ImageOnlySmolVLMProcessor(SmolVLMProcessor):
    """SmolVLMProcessor for images only (no video processor)."""

    def __init__(self, image_processor=None, tokenizer=None, image_seq_len: int = 169, chat_template=None, **kwargs):
        super().__init__(image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
                         image_seq_len=image_seq_len, chat_template=chat_template, **kwargs)

    def apply_chat_template(self, conversation, chat_template=None, **kwargs):
        # SmolVLMProcessor's own reads frame settings off its video processor, which this class has none of
        return ProcessorMixin.apply_chat_template(self, conversation, chat_template, **kwargs)


class ImageOnlyPixtralProcessor(ProcessorMixin):
    """PixtralProcessor's image path, for Mistral3 (Mistral-Small-3.1) where torchvision is missing: transformers'
    own module imports torchvision at load time. An image of h x w patch cells (after the merge) becomes h rows of
    w [IMG] tokens, each row ended by [IMG_BREAK], the last by [IMG_END]; the tokens and sizes follow the stock
    processor's saved settings."""

    def __init__(self, image_processor=None, tokenizer=None, patch_size: int = 16, spatial_merge_size: int = 1,
                 chat_template=None, image_token="[IMG]", image_break_token="[IMG_BREAK]",
                 image_end_token="[IMG_END]", **kwargs):
        super().__init__(image_processor, tokenizer, chat_template=chat_template)
        self.patch_size, self.spatial_merge_size = patch_size, spatial_merge_size
        self.image_token, self.image_break_token, self.image_end_token = image_token, image_break_token, image_end_token
        self.image_token_id = tokenizer.convert_tokens_to_ids(image_token)
        self.image_break_token_id = tokenizer.convert_tokens_to_ids(image_break_token)
        self.image_end_token_id = tokenizer.convert_tokens_to_ids(image_end_token)

    @property
    def image_token_ids(self) -> list[int]:
        return [self.image_token_id, self.image_break_token_id, self.image_end_token_id]

    @property
    def cell(self) -> int:
        """Pixels per image token along each side."""
        return self.patch_size * self.spatial_merge_size

    def _process_images(self, images, **images_kwargs):
        images_kwargs["patch_size"] = self.cell
        return super()._process_images(images, **images_kwargs)

    def _rows(self, height: int, width: int) -> str:
        rows, cols = height // self.cell, width // self.cell
        text = (self.image_token * cols + self.image_break_token) * rows
        return text[: -len(self.image_break_token)] + self.image_end_token

    def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs) -> str:
        height, width = image_inputs["image_sizes"][image_idx]
        return self._rows(int(height), int(width))

    def _get_num_multimodal_tokens(self, image_sizes=None, **kwargs):
        from transformers.models.pixtral.image_processing_pil_pixtral import get_resize_output_image_size
        from transformers.processing_utils import MultiModalData
        import numpy as np

        longest = self.image_processor.size["longest_edge"]
        counts = []
        for height, width in image_sizes:
            h, w = get_resize_output_image_size(np.zeros((height, width, 3)), size=(longest, longest),
                                                patch_size=(self.cell, self.cell))
            counts.append((w // self.cell + 1) * (h // self.cell))
        return MultiModalData(num_image_tokens=counts, num_image_patches=[1] * len(counts))

    @property
    def model_input_names(self):
        return self.tokenizer.model_input_names + self.image_processor.model_input_names + ["image_sizes"]


# model_type -> the class compass builds when torchvision is missing
IMAGE_ONLY: dict[str, type[ProcessorMixin]] = {
    "llava_onevision": ImageOnlyOnevisionProcessor,
    "mistral3": ImageOnlyPixtralProcessor,
    "gemma3": Gemma3Processor,
    "qwen3_vl": ImageOnlyQwen3VLProcessor,
    "qwen2_5_vl": ImageOnlyQwen2_5_VLProcessor,
    "idefics3": Idefics3Processor,
    "smolvlm": ImageOnlySmolVLMProcessor,
}


def torchvision_available() -> bool:
    if importlib.util.find_spec("torchvision") is None:
        return False
    try:
        import torchvision  # noqa: F401  (a broken CUDA wheel fails here)
    except (ImportError, RuntimeError):
        return False
    return True


def _model_type(model_dir: Path) -> str:
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise CompassError(f"{model_dir} is not a model directory (no config.json)")
    return json.loads(path.read_text(encoding="utf-8"))["model_type"]


def check_extras(model_type: str) -> None:
    for module, extra in EXTRAS.get(model_type, []):
        if importlib.util.find_spec(module) is None:
            raise CompassError(f"the {family_of(model_type).name} processor needs the package {module!r}: "
                               f"pip install '{extra}'")


def processor_class_for(model_dir: Path) -> type[ProcessorMixin]:
    """The class that loads this VLM directory's processor here."""
    model_type = _model_type(model_dir)
    family_of(model_type)  # unknown families fail with the supported list
    check_extras(model_type)
    return IMAGE_ONLY[model_type]


def load_processor(model_dir: str | Path) -> ProcessorMixin:
    """The processor of a VLM directory: the stock one through AutoProcessor when torchvision is importable,
    else the family's torchvision-free class."""
    model_dir = Path(model_dir)
    if not (model_dir / PROCESSOR_CONFIG).is_file() and not (model_dir / "preprocessor_config.json").is_file():
        raise CompassError(f"{model_dir}: no {PROCESSOR_CONFIG} or preprocessor_config.json; a VLM directory needs "
                           "its processor files")
    cls = processor_class_for(model_dir)
    if torchvision_available():
        from transformers import AutoProcessor

        processor = AutoProcessor.from_pretrained(str(model_dir))
    else:
        processor = cls.from_pretrained(str(model_dir))
    if not isinstance(processor, ProcessorMixin):
        raise CompassError(f"{model_dir}: the processor loaded as a {type(processor).__name__}, not a processor")
    return processor


def save_processor(processor: ProcessorMixin, out_dir: Path, model_type: str) -> None:
    """save_pretrained, with processor_config.json naming transformers' class for the family (not an image-only
    subclass), so AutoProcessor elsewhere gets the stock processor."""
    out_dir = Path(out_dir)
    processor.save_pretrained(str(out_dir))
    path = out_dir / PROCESSOR_CONFIG
    data = json.loads(path.read_text(encoding="utf-8"))
    data["processor_class"] = family_of(model_type).processor_class
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def tokens_per_image(processor: ProcessorMixin, width: int, height: int) -> int:
    """How many prompt tokens one image of this size becomes, as the processor itself counts them (placeholder
    tokens plus the family's wrappers such as row breaks)."""
    data = processor._get_num_multimodal_tokens(image_sizes=[(height, width)])
    return int(data["num_image_tokens"][0])


# --- fitting page images to a token budget ---------------------------------------------------------------
MIN_LONG_SIDE = 224  # px: below this a page's text is unreadable for any of the families


@dataclass(frozen=True)
class ImageFit:
    """How a prompt's images were capped to fit: the long side they were scaled to (None = as given), how many
    images were kept (from the start), and the prompt's exact token count as the processor makes it."""

    max_long_side: int | None
    images_kept: int
    tokens: int


def prompt_tokens(processor: ProcessorMixin, prompt: str, images: list, add_special_tokens: bool = True) -> int:
    """The token count of `prompt` with `images`, exactly as the processor expands the image placeholders.
    add_special_tokens=False counts as TRL's training collator encodes a rendered chat (no second BOS)."""
    encoded = processor(text=[prompt], images=[images] if images else None, return_tensors="np",
                        add_special_tokens=add_special_tokens)
    return int(encoded["input_ids"].shape[1])


def _scaled(images: list, long_side: int | None) -> list:
    if long_side is None:
        return images
    out = []
    for image in images:
        scale = long_side / max(image.size)
        out.append(image if scale >= 1 else image.resize((max(1, round(image.width * scale)),
                                                          max(1, round(image.height * scale)))))
    return out


def fit_images(processor: ProcessorMixin, prompt_for, images: list, budget: int, *,
               priority: list[int] | None = None, add_special_tokens: bool = True) -> tuple[list, ImageFit]:
    """Images scaled down (long side halving toward MIN_LONG_SIDE) and then, if still too long, dropped until
    `prompt_for(n_images)` with them fits `budget` tokens. Families whose image tokens do not depend on the
    resolution (Gemma3, fixed-size SigLIP towers) only drop images. Fails when not even the text fits.

    `priority` (indices into `images`, most important first; default: as given) is the order images are kept in:
    with n kept, they are priority[:n], passed to the processor (and returned) in their own order in `images`,
    which is the order of the placeholders `prompt_for(n)` renders."""
    order = list(range(len(images))) if priority is None else list(priority)
    if sorted(order) != list(range(len(images))):
        raise CompassError(f"priority {order} is not an order of the {len(images)} images")
    longest = max((max(i.size) for i in images), default=0)
    sides: list[int | None] = [None]
    side = longest // 2
    while side >= MIN_LONG_SIDE:
        sides.append(side)
        side //= 2
    if longest > MIN_LONG_SIDE:
        sides.append(MIN_LONG_SIDE)

    def attempt(side: int | None, kept: int) -> tuple[list, int]:
        chosen = [images[i] for i in sorted(order[:kept])]
        scaled = _scaled(chosen, side)
        return scaled, prompt_tokens(processor, prompt_for(kept), scaled, add_special_tokens)

    for side in sides:
        scaled, tokens = attempt(side, len(images))
        if tokens <= budget:
            return scaled, ImageFit(side, len(scaled), tokens)
    for kept in range(len(images) - 1, -1, -1):
        scaled, tokens = attempt(sides[-1], kept)
        if tokens <= budget:
            return scaled, ImageFit(sides[-1], kept, tokens)
    raise CompassError(f"the prompt alone is {tokens} tokens, over the budget of {budget}")
