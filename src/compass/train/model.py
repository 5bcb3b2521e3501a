"""Loading the model to train, choosing what trains, and writing the merged model.

An LLM directory (config.json without `vision_config`) trains with LoRA on its linear layers. A VLM
directory must have the LLaVA layout transformers uses (model.vision_tower, model.multi_modal_projector,
model.language_model): `train` picks LoRA on the language model (llm), full training of the projector
(projector), or both; the vision tower stays frozen unless `train_vision` (then it trains fully too).
Fully trained parts ride along in the PEFT adapter as `modules_to_save`; with no LoRA at all they are
saved as adapter/trained_parts.safetensors under their model keys.
"""
from __future__ import annotations

import json
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from compass.errors import CompassError

ModelKind = Literal["llm", "vlm"]
VLM_PARTS = ("vision_tower", "multi_modal_projector", "language_model")
TRAINED_PARTS_FILE = "trained_parts.safetensors"
PROCESSOR_CLASSES_OF_COMPASS = {"ImageOnlyOnevisionProcessor"}


def read_model_config(model_dir: Path) -> dict:
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise CompassError(f"{model_dir} is not a model directory (no config.json)")
    return json.loads(path.read_text(encoding="utf-8"))


def model_kind(model_dir: Path) -> ModelKind:
    return "vlm" if "vision_config" in read_model_config(model_dir) else "llm"


def load_processing_class(model_dir: Path, kind: ModelKind):
    """The tokenizer of an LLM, or the processor of a VLM (compass's torchvision-free processor when the
    directory was written by compass; AutoProcessor otherwise)."""
    if kind == "llm":
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        if tokenizer.chat_template is None:
            raise CompassError(f"{model_dir}: the tokenizer has no chat template; training needs one")
        return tokenizer
    processor_file = Path(model_dir) / "processor_config.json"
    if processor_file.is_file() and json.loads(processor_file.read_text())["processor_class"] in PROCESSOR_CLASSES_OF_COMPASS:
        from compass.models.vlm import load_processor

        return load_processor(model_dir)
    from transformers import AutoProcessor, ProcessorMixin

    processor = AutoProcessor.from_pretrained(str(model_dir))
    if not isinstance(processor, ProcessorMixin):
        raise CompassError(f"{model_dir}: AutoProcessor gave a {type(processor).__name__}, not a processor; "
                           "a VLM directory needs processor_config.json")
    return processor


def load_model(model_dir: Path, kind: ModelKind, dtype):
    if kind == "llm":
        from transformers import AutoModelForCausalLM as Auto
    else:
        from transformers import AutoModelForImageTextToText as Auto
    return Auto.from_pretrained(str(model_dir), dtype=dtype)


def vlm_prefixes(model) -> dict[str, str]:
    """Qualified module names of the VLM's parts, e.g. {"language_model": "model.language_model", ...}."""
    import torch

    inner = model.get_submodule("model") if "model" in dict(model.named_children()) else None
    children = dict(inner.named_children()) if isinstance(inner, torch.nn.Module) else {}
    missing = [p for p in VLM_PARTS if p not in children]
    if missing:
        raise CompassError(f"unsupported VLM layout {type(model).__name__}: expected model.{{{', '.join(VLM_PARTS)}}}, "
                           f"missing {missing}")
    return {part: f"model.{part}" for part in VLM_PARTS}


def lora_target_modules(model, kind: ModelKind, targets: str | list[str]) -> str | list[str]:
    """PEFT target_modules: the LLM's linear layers (output head excluded); in a VLM only the language model's."""
    if kind == "llm":
        return targets  # PEFT's own "all-linear" (skips the output head) or leaf names
    import torch

    prefix = vlm_prefixes(model)["language_model"]
    leaves = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                     if name.startswith(prefix + ".") and isinstance(module, torch.nn.Linear)})
    if targets != "all-linear":
        unknown = sorted(set(targets) - set(leaves))
        if unknown:
            raise CompassError(f"target_modules {unknown} are not linear layers of the language model; it has {leaves}")
        leaves = sorted(targets)
    # a regex string is matched by PEFT against each full module name
    return re.escape(prefix) + r"\..*\.(?:" + "|".join(map(re.escape, leaves)) + ")"


def full_parts(kind: ModelKind, train: str, train_vision: bool) -> list[str]:
    """VLM parts trained fully (not through LoRA)."""
    if kind == "llm":
        if train != "llm" or train_vision:
            raise CompassError(f"train: {train}, train_vision: {train_vision} need a VLM; this model is a text-only LLM")
        return []
    parts = ["multi_modal_projector"] if train in ("projector", "both") else []
    return parts + (["vision_tower"] if train_vision else [])


def check_modules_to_save(model, kind: ModelKind, config) -> None:
    """PEFT matches each modules_to_save name against the end of every module path and trains nothing, silently,
    when none matches; a module that is also a LoRA target would be wrapped twice. Both are refused here."""
    import torch

    targets = lora_target_modules(model, kind, config.target_modules)
    output_head = model.get_output_embeddings()

    def lora_targeted(path: str, module) -> bool:
        if isinstance(targets, list):
            return path.rsplit(".", 1)[-1] in targets
        if targets == "all-linear":  # PEFT's rule: every linear layer but the output head
            return isinstance(module, torch.nn.Linear) and module is not output_head
        return re.fullmatch(targets, path) is not None  # the VLM regex

    for name in config.modules_to_save:
        matched = {path: module for path, module in model.named_modules() if path == name or path.endswith("." + name)}
        if not matched:
            raise CompassError(f"modules_to_save: no module path of {type(model).__name__} ends in {name!r} "
                               "(e.g. embed_tokens, lm_head)")
        doubled = sorted(path for path, module in matched.items() if lora_targeted(path, module))
        if doubled:
            raise CompassError(f"modules_to_save: {name!r} names LoRA targets ({', '.join(doubled[:3])}); a module "
                               "trains either through LoRA or fully, so leave it out of one of target_modules / modules_to_save")


def lora_config(config, model, kind: ModelKind, parts: list[str]):
    """LoRA on the chosen linear layers; `parts` (whole VLM parts) and config.modules_to_save train fully beside it."""
    from peft import LoraConfig

    check_modules_to_save(model, kind, config)
    return LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=lora_target_modules(model, kind, config.target_modules),
        modules_to_save=(parts + config.modules_to_save) or None,
        task_type="CAUSAL_LM",
    )


def freeze_all_but(model, parts: list[str]) -> None:
    """Full training of `parts` without LoRA: everything else gets no gradient."""
    prefixes = tuple(f"{vlm_prefixes(model)[p]}." for p in parts)
    for name, param in model.named_parameters():
        param.requires_grad_(name.startswith(prefixes))


def trained_parts_state(state_dict: dict, model, parts: list[str]) -> dict:
    prefixes = tuple(f"{vlm_prefixes(model)[p]}." for p in parts)
    return {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items() if k.startswith(prefixes)}


def tidy_adapter_dir(adapter_dir: Path) -> None:
    """Drop what Trainer.save_model adds beside the adapter: a pickle of the TrainingArguments (the manifest
    records the config) and PEFT's boilerplate model card, which names the absolute base path."""
    for name in ("training_args.bin", "README.md"):
        (adapter_dir / name).unlink(missing_ok=True)


def trainable_parameter_count(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@contextmanager
def single_process_loading():
    """Load models in this one process even inside a DeepSpeed ZeRO-3 run. While the run's config is alive,
    transformers' from_pretrained partitions weights over all ranks (zero.Init), a collective the other
    ranks never join: a hang. transformers keeps that config behind one module-level weak reference."""
    from transformers.integrations import deepspeed as hf_deepspeed

    saved = hf_deepspeed._hf_deepspeed_config_weak_ref
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = saved


def write_merged(base_dir: Path, adapter_dir: Path, out_dir: Path) -> dict:
    """The base model with the trained weights merged in, as safetensors in the base's layout with its
    tokenizer/processor files. A PEFT adapter (LoRA, plus any fully trained modules_to_save) goes through
    compass.models.merge.merge_lora (PEFT merge_and_unload); fully trained parts without LoRA replace
    their tensors in the base. Either way the output must have exactly the base's tensor names and shapes."""
    from compass.models.merge import check_output, copy_non_weight_files, merge_lora, model_class, read_checkpoint

    parts_file = adapter_dir / TRAINED_PARTS_FILE
    with single_process_loading():
        if (adapter_dir / "adapter_config.json").is_file():
            result = merge_lora(base_dir, adapter_dir, out_dir)
        elif parts_file.is_file():
            from safetensors.torch import load_file

            base = read_checkpoint(base_dir)
            model = model_class(base_dir).from_pretrained(str(base_dir), dtype="auto")
            tensors = load_file(str(parts_file))
            own = model.state_dict()
            bad = [k for k in tensors if k not in own or own[k].shape != tensors[k].shape]
            if bad:
                raise CompassError(f"{parts_file}: tensors {bad[:5]} do not fit the base model {base_dir}")
            model.load_state_dict({k: v.to(own[k].dtype) for k, v in tensors.items()}, strict=False)
            model.save_pretrained(str(out_dir), safe_serialization=True)
            copy_non_weight_files(base_dir, out_dir, skip={p.name for p in out_dir.iterdir()})
            result = {"tensors": len(check_output(base, out_dir, None).tensors), "replaced_tensors": len(tensors)}
        else:
            raise CompassError(f"{adapter_dir} holds neither a PEFT adapter nor {TRAINED_PARTS_FILE}")
    return {f"merge.{k}": v for k, v in result.items() if not isinstance(v, list)}
