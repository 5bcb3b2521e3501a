"""The VLM families compass trains, and where each keeps its parts: one resolver for LoRA targeting, freezing,
trained-part export and merges.

A VLM has three parts: the language model, the vision tower and the projector that maps vision features into
the language model's hidden space. Their module paths differ per family (transformers 5.23):

| family              | language model              | vision tower         | projector                                         |
|---------------------|-----------------------------|----------------------|---------------------------------------------------|
| LLaVA-OneVision     | model.language_model        | model.vision_tower   | model.multi_modal_projector, model.image_newline  |
| Mistral3 (Pixtral)  | model.language_model        | model.vision_tower   | model.multi_modal_projector                       |
| Gemma3              | model.language_model        | model.vision_tower   | model.multi_modal_projector                       |
| Qwen3-VL            | model.language_model        | model.visual         | model.visual.merger, model.visual.deepstack_merger_list |
| Qwen2.5-VL          | model.language_model        | model.visual         | model.visual.merger                               |
| Idefics3 / SmolVLM  | model.text_model            | model.vision_model   | model.connector                                   |

Qwen's projector sits inside its vision tower: a parameter belongs to the projector when a projector path
covers it, to the vision tower otherwise. The output head (lm_head) belongs to no part: it trains only when named
in modules_to_save.

"Leaves" are what PEFT can wrap as `modules_to_save` (it refuses ModuleList / ModuleDict, so those are split into
their elements, e.g. deepstack_merger_list.0, .1, ...) plus bare parameters such as OneVision's image_newline,
which no module of their own holds: those train through requires_grad and travel in trained_parts.safetensors.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from compass.errors import CompassError

Part = Literal["language_model", "vision_tower", "projector"]
PARTS: tuple[Part, ...] = ("language_model", "vision_tower", "projector")


@dataclass(frozen=True)
class Family:
    name: str  # as the README table says it
    model_type: str  # config.json model_type
    model_class: str  # transformers class (AutoModelForImageTextToText resolves it)
    processor_class: str  # transformers processor class written into processor_config.json
    language_model: str
    vision_tower: str
    projector: tuple[str, ...]  # module or parameter paths


FAMILIES: tuple[Family, ...] = (
    Family("LLaVA-OneVision", "llava_onevision", "LlavaOnevisionForConditionalGeneration", "LlavaOnevisionProcessor",
           "model.language_model", "model.vision_tower", ("model.multi_modal_projector", "model.image_newline")),
    Family("Mistral3 (Pixtral)", "mistral3", "Mistral3ForConditionalGeneration", "PixtralProcessor",
           "model.language_model", "model.vision_tower", ("model.multi_modal_projector",)),
    Family("Gemma3", "gemma3", "Gemma3ForConditionalGeneration", "Gemma3Processor",
           "model.language_model", "model.vision_tower", ("model.multi_modal_projector",)),
    Family("Qwen3-VL", "qwen3_vl", "Qwen3VLForConditionalGeneration", "Qwen3VLProcessor",
           "model.language_model", "model.visual", ("model.visual.merger", "model.visual.deepstack_merger_list")),
    Family("Qwen2.5-VL", "qwen2_5_vl", "Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLProcessor",
           "model.language_model", "model.visual", ("model.visual.merger",)),
    Family("Idefics3", "idefics3", "Idefics3ForConditionalGeneration", "Idefics3Processor",
           "model.text_model", "model.vision_model", ("model.connector",)),
    Family("SmolVLM", "smolvlm", "SmolVLMForConditionalGeneration", "SmolVLMProcessor",
           "model.text_model", "model.vision_model", ("model.connector",)),
)
BY_MODEL_TYPE = {f.model_type: f for f in FAMILIES}


def supported_list() -> str:
    return ", ".join(f"{f.name} ({f.model_type})" for f in FAMILIES)


def family_of(model_type: str) -> Family:
    if model_type not in BY_MODEL_TYPE:
        raise CompassError(f"unsupported VLM model_type {model_type!r}; supported: {supported_list()}")
    return BY_MODEL_TYPE[model_type]


def family_by_class(class_name: str) -> Family:
    for family in FAMILIES:
        if family.model_class == class_name:
            return family
    raise CompassError(f"unsupported VLM class {class_name}; supported: "
                       + ", ".join(f"{f.name} ({f.model_class})" for f in FAMILIES))


def _covers(path: str, name: str) -> bool:
    return name == path or name.startswith(path + ".")


@dataclass(frozen=True)
class ModelParts:
    """The resolved parts of one model instance (module paths as `model.named_modules()` names them)."""

    family: Family

    def paths(self, part: Part) -> tuple[str, ...]:
        if part == "projector":
            return self.family.projector
        return (getattr(self.family, part),)

    def part_of(self, name: str) -> Part | None:
        """The part a parameter (or module) name belongs to; None for the output head and other top-level tensors."""
        if any(_covers(p, name) for p in self.family.projector):
            return "projector"
        if _covers(self.family.vision_tower, name):
            return "vision_tower"
        if _covers(self.family.language_model, name):
            return "language_model"
        return None

    def owns(self, parts: list[Part], name: str) -> bool:
        return self.part_of(name) in parts


def resolve(model) -> ModelParts:
    """The parts of a loaded VLM; an unknown class fails with the supported list, a known class whose layout
    lacks a declared path (another transformers version) fails naming it."""
    family = family_by_class(type(model).__name__)
    modules = dict(model.named_modules())
    params = dict(model.named_parameters())
    declared = (family.language_model, family.vision_tower, *family.projector)
    missing = [p for p in declared if p not in modules and p not in params]
    if missing:
        raise CompassError(f"{type(model).__name__}: expected module paths {missing} are not in the model "
                           "(is this the transformers version compass pins?)")
    return ModelParts(family)


@dataclass(frozen=True)
class Leaves:
    modules: list[str]  # PEFT modules_to_save (full paths)
    parameters: list[str]  # bare parameters held directly by a module that is not itself a leaf


def trainable_leaves(model, parts_obj: ModelParts, parts: list[Part]) -> Leaves:
    """The smallest set of wrap-able modules (plus bare parameters) whose parameters are exactly those of `parts`."""
    import torch

    modules: list[str] = []
    bare: list[str] = []

    def visit(path: str, module) -> None:
        names = [n for n, _ in module.named_parameters(prefix=path)]
        if not names:
            return
        inside = [parts_obj.owns(parts, n) for n in names]
        if all(inside) and not isinstance(module, (torch.nn.ModuleList, torch.nn.ModuleDict)) and path:
            modules.append(path)
            return
        if not any(inside):
            return
        for pname, _ in module.named_parameters(prefix=path, recurse=False):
            if parts_obj.owns(parts, pname):
                bare.append(pname)
        for child_name, child in module.named_children():
            visit(f"{path}.{child_name}" if path else child_name, child)

    visit("", model)
    return Leaves(modules, bare)


def lora_leaf_names(model, parts_obj: ModelParts) -> list[str]:
    """Leaf names of the language model's Linear layers (q_proj, ..., down_proj)."""
    import torch

    prefix = parts_obj.family.language_model + "."
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                   if name.startswith(prefix) and isinstance(module, torch.nn.Linear)})


def tie_word_embeddings(config) -> bool:
    """Whether the output head shares the input embedding's weight: the top-level flag, which is the one
    transformers 5.23 ties by (PreTrainedModel.tie_weights reads `config.tie_word_embeddings`); a composite config
    without one falls back to its text config's. A VLM's text config may say otherwise (a tiny Mistral3 built with
    a text config of False still ties when the top level says True), so callers check it against the model."""
    for candidate in (config, config.get_text_config(decoder=True)):
        if "tie_word_embeddings" in candidate.to_dict():
            return bool(candidate.to_dict()["tie_word_embeddings"])
    return False  # transformers' own default when no config says
