"""Loading the model to train, choosing what trains, and writing the merged model.

An LLM directory (config.json without `vision_config`) trains with LoRA on its linear layers. A VLM directory
is one of the families in compass.models.families (LLaVA-OneVision, Mistral3/Pixtral, Gemma3, Qwen3-VL,
Qwen2.5-VL, Idefics3/SmolVLM), whose parts that module resolves: `train` picks LoRA on the language model (llm),
full training of the projector (projector), or both; the vision tower stays frozen unless `train_vision` (then it
trains fully too). Fully trained parts ride along in the PEFT adapter as `modules_to_save` (ModuleLists split into
their elements); bare parameters (OneVision's image_newline), and every fully trained part when there is no LoRA
at all, are saved as adapter/trained_parts.safetensors under their model keys.

Tied embeddings (Gemma3, small Qwen LLMs): LoRA is configured with PEFT's ensure_weight_tying, so a trained
embed_tokens / lm_head stays one tensor and the merged model has the base's layout (no extra lm_head.weight).
"""
from __future__ import annotations

import json
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from compass.errors import CompassError
from compass.models.families import Part, ModelParts, resolve, tie_word_embeddings, trainable_leaves

ModelKind = Literal["llm", "vlm"]
TRAINED_PARTS_FILE = "trained_parts.safetensors"
PEFT_PREFIX = "base_model.model."  # what PeftModel puts before the wrapped model's names


def read_model_config(model_dir: Path) -> dict:
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise CompassError(f"{model_dir} is not a model directory (no config.json)")
    return json.loads(path.read_text(encoding="utf-8"))


def model_kind(model_dir: Path) -> ModelKind:
    return "vlm" if "vision_config" in read_model_config(model_dir) else "llm"


def load_processing_class(model_dir: Path, kind: ModelKind, chat_template: Path | None = None,
                          assistant_masks: bool = True):
    """The tokenizer of an LLM, or the processor of a VLM (torchvision-free where the stock one needs it). With
    `assistant_masks` (SFT's assistant-only loss) its chat template is one that marks assistant tokens
    (compass.models.chat_templates); DPO renders prompt and answers apart and keeps the model's own."""
    return load_for_training(model_dir, kind, chat_template, assistant_masks)[0]


def load_for_training(model_dir: Path, kind: ModelKind, chat_template: Path | None = None,
                      assistant_masks: bool = True):
    """(processing class, TemplateChoice or None) as load_processing_class describes."""
    from compass.models.chat_templates import use_training_template

    if kind == "llm":
        from transformers import AutoTokenizer

        processing_class = AutoTokenizer.from_pretrained(str(model_dir))
    else:
        from compass.models.processors import load_processor

        processing_class = load_processor(model_dir)
    if not assistant_masks:
        if chat_template is not None:  # replaces the model's template (marks are not needed, and do no harm)
            from compass.models.chat_templates import TemplateChoice, set_template

            choice = TemplateChoice(Path(chat_template).read_text(encoding="utf-8"), f"file:{Path(chat_template).name}")
            set_template(processing_class, choice.template)
            return processing_class, choice
        if processing_class.chat_template is None:
            raise CompassError(f"{model_dir}: no chat template; training renders conversations with one")
        return processing_class, None
    return use_training_template(processing_class, model_dir, chat_template)


def load_model(model_dir: Path, kind: ModelKind, dtype):
    if kind == "llm":
        from transformers import AutoModelForCausalLM as Auto
    else:
        from transformers import AutoModelForImageTextToText as Auto
    return Auto.from_pretrained(str(model_dir), dtype=dtype)


def lora_target_modules(model, kind: ModelKind, targets: str | list[str]) -> str | list[str]:
    """PEFT target_modules: the LLM's linear layers (output head excluded); in a VLM only the language model's."""
    if kind == "llm":
        return targets  # PEFT's own "all-linear" (skips the output head) or leaf names
    from compass.models.families import lora_leaf_names

    parts = resolve(model)
    leaves = lora_leaf_names(model, parts)
    if targets != "all-linear":
        unknown = sorted(set(targets) - set(leaves))
        if unknown:
            raise CompassError(f"target_modules {unknown} are not linear layers of the language model; it has {leaves}")
        leaves = sorted(targets)
    # a regex string is matched by PEFT against each full module name
    return re.escape(parts.family.language_model) + r"\..*\.(?:" + "|".join(map(re.escape, leaves)) + ")"


def full_parts(kind: ModelKind, train: str, train_vision: bool) -> list[Part]:
    """VLM parts trained fully (not through LoRA)."""
    if kind == "llm":
        if train != "llm" or train_vision:
            raise CompassError(f"train: {train}, train_vision: {train_vision} need a VLM; this model is a text-only LLM")
        return []
    parts: list[Part] = ["projector"] if train in ("projector", "both") else []
    return parts + (["vision_tower"] if train_vision else [])


@dataclass(frozen=True)
class FullTraining:
    """What trains fully, as the model names it: PEFT-wrappable modules and bare parameters."""

    parts: list[Part]
    modules: list[str] = field(default_factory=list)
    parameters: list[str] = field(default_factory=list)


def plan_full_training(model, kind: ModelKind, parts: list[Part]) -> FullTraining:
    if kind == "llm" or not parts:
        return FullTraining(list(parts))
    leaves = trainable_leaves(model, resolve(model), parts)
    return FullTraining(list(parts), leaves.modules, leaves.parameters)


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


def embeddings_tied(model) -> bool:
    """The config's flag, checked against the loaded model: a flag that says tied over two tensors (or the
    reverse) means the layout on disk is not what the config claims."""
    flag = tie_word_embeddings(model.config)
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    shared = head is not None and head.weight is embed.weight
    if flag != shared:
        raise CompassError(f"{type(model).__name__}: tie_word_embeddings is {flag} but the loaded output head "
                           f"{'shares' if shared else 'does not share'} the embedding weight")
    return flag


def lora_config(config, model, kind: ModelKind, full: FullTraining | list[str]):
    """LoRA on the chosen linear layers; fully trained modules and config.modules_to_save train beside it. With
    tied embeddings PEFT keeps a trained embed_tokens / lm_head tied (ensure_weight_tying), so the merged model
    keeps the base's single tensor. `full` is a plan_full_training result or a list of module paths ([] = none)."""
    from peft import LoraConfig

    check_modules_to_save(model, kind, config)
    modules_to_save = (full.modules if isinstance(full, FullTraining) else list(full)) + list(config.modules_to_save)
    return LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=lora_target_modules(model, kind, config.target_modules),
        modules_to_save=modules_to_save or None,
        ensure_weight_tying=embeddings_tied(model),
        task_type="CAUSAL_LM",
    )


def _unwrapped_name(name: str) -> str:
    return name.removeprefix(PEFT_PREFIX)


def freeze_all_but(model, full: FullTraining) -> None:
    """Full training of `full.parts` without LoRA: everything else gets no gradient."""
    parts = resolve(model)
    for name, param in model.named_parameters():
        param.requires_grad_(parts.owns(full.parts, name))


def train_bare_parameters(model, full: FullTraining) -> None:
    """After PEFT wrapped the model: bare parameters of the fully trained parts (no module PEFT could wrap holds
    them) get gradients too; they are saved by save_trained."""
    wanted = set(full.parameters)
    found = set()
    for name, param in model.named_parameters():
        if _unwrapped_name(name) in wanted:
            param.requires_grad_(True)
            found.add(_unwrapped_name(name))
    if found != wanted:
        raise CompassError(f"internal: bare parameters {sorted(wanted - found)} not found in the wrapped model")


def trained_parts_state(state_dict: dict, model, full: FullTraining, lora: bool) -> dict:
    """The tensors written to trained_parts.safetensors, under the base model's names: every fully trained
    parameter without LoRA; only the bare ones with LoRA (the adapter holds the rest)."""
    if lora:
        wanted = set(full.parameters)
        keep = {_unwrapped_name(k): v for k, v in state_dict.items() if _unwrapped_name(k) in wanted}
        if set(keep) != wanted:
            raise CompassError(f"internal: bare parameters {sorted(wanted - set(keep))} missing from the state dict")
    else:
        parts = resolve(model)
        keep = {k: v for k, v in state_dict.items() if parts.owns(full.parts, k)}
    return {k: v.detach().to("cpu").contiguous() for k, v in keep.items()}


def save_trained(trainer, adapter_dir: Path, full: FullTraining, lora: bool, is_main: bool, processing_class) -> None:
    """Write what trained: the PEFT adapter (with LoRA), and trained_parts.safetensors when there are fully
    trained tensors outside it. Every process calls this (ZeRO-3 gathers); the main one writes."""
    if lora:
        trainer.save_model(str(adapter_dir))
        if is_main:
            tidy_adapter_dir(adapter_dir)
    if lora and not full.parameters:
        return
    state = trainer.accelerator.get_state_dict(trainer.model_wrapped)  # gathered on every process
    if is_main:
        from safetensors.torch import save_file

        adapter_dir.mkdir(parents=True, exist_ok=True)
        save_file(trained_parts_state(state, trainer.model, full, lora), str(adapter_dir / TRAINED_PARTS_FILE))
        if not lora:  # processor_config.json names transformers' class, as every directory compass writes
            from compass.models.processors import save_processor

            save_processor(processing_class, adapter_dir, trainer.model.config.model_type)


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


def _apply_trained_parts(model, parts_file: Path, base_dir: Path) -> int:
    from safetensors.torch import load_file

    tensors = load_file(str(parts_file))
    own = model.state_dict()
    bad = [k for k in tensors if k not in own or own[k].shape != tensors[k].shape]
    if bad:
        raise CompassError(f"{parts_file}: tensors {bad[:5]} do not fit the base model {base_dir}")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in tensors.items()}, strict=False)
    return len(tensors)


def write_merged(base_dir: Path, adapter_dir: Path, out_dir: Path) -> dict:
    """The base model with the trained weights merged in, as safetensors in the base's layout with its
    tokenizer/processor files, written staged (a failure leaves no directory). A PEFT adapter (LoRA, plus any
    fully trained modules_to_save) goes through PEFT merge_and_unload; fully trained tensors outside it
    (trained_parts.safetensors) replace theirs in the base. The output must have exactly the base's tensor
    names, shapes and dtypes."""
    from compass.io import staged_dir
    from compass.models.merge import check_output, copy_non_weight_files, merge_lora, model_class, read_checkpoint

    base_dir, adapter_dir = Path(base_dir), Path(adapter_dir)
    parts_file = adapter_dir / TRAINED_PARTS_FILE
    has_adapter = (adapter_dir / "adapter_config.json").is_file()
    if not has_adapter and not parts_file.is_file():
        raise CompassError(f"{adapter_dir} holds neither a PEFT adapter nor {TRAINED_PARTS_FILE}")
    with single_process_loading(), staged_dir(out_dir) as tmp:
        base = read_checkpoint(base_dir)
        replaced = 0
        if has_adapter:
            result = merge_lora(base_dir, adapter_dir, tmp, extra=lambda model: _apply_trained_parts(model, parts_file, base_dir)
                                if parts_file.is_file() else 0)
            replaced = result.pop("extra")
        else:
            model = model_class(base_dir).from_pretrained(str(base_dir), dtype="auto")
            replaced = _apply_trained_parts(model, parts_file, base_dir)
            model.save_pretrained(str(tmp), safe_serialization=True)
            copy_non_weight_files(base_dir, tmp, skip={p.name for p in tmp.iterdir()})
            result = {"tensors": len(check_output(base, tmp, None).tensors)}
        result["replaced_tensors"] = replaced
    return {f"merge.{k}": v for k, v in result.items() if not isinstance(v, list)}
