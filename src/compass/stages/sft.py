"""LoRA SFT with TRL's SFTTrainer + PEFT on Trace/DocExample records; loss on assistant tokens only.

Text records train an LLM directory (e.g. the LLM taken out of a VLM with `compass decompose`). Records with
images train a whole VLM directory: `train` picks LoRA on the language model (llm), the projector fully
(projector) or both; the vision tower stays frozen unless `train_vision`. `modules_to_save` (e.g. embed_tokens,
lm_head) trains those modules fully beside LoRA, for tokens the model has never learned. Writes out_dir/adapter (PEFT
adapter, plus fully trained parts), out_dir/merged with `merge: true` (safetensors + tokenizer/processor),
and out_dir/log_history.json. An interrupted run resumes from its latest checkpoint when rerun in the same
out dir. Under `accelerate launch` every process trains; only the main process writes outputs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from compass.data.sft_formats import DataSource, SftFormat
from compass.errors import CompassError
from compass.stages import Port
from compass.stagekit import StageContext, whole_run_training_figures
from compass.train.config import TrainConfig

VERSION = 3  # code version of what this stage writes: bump when the same config and inputs would give other bytes
EXAMPLE = ("compass sft --model work/llm --data distill/traces.jsonl --out sft/ --merge "
           "--max-steps 50 --global-batch-size 4 --micro-batch-size 2 --lora-r 8")


class Config(TrainConfig):
    learning_rate: float = Field(2e-4, gt=0, description="peak AdamW learning rate")
    micro_batch_size: int = Field(2, gt=0, description="sequences per device per forward pass")
    global_batch_size: int = Field(64, gt=0, description="sequences per optimizer step over all devices; "
                                   "gradient accumulation = global / (micro x processes)")
    max_length: int = Field(4096, gt=0, description="tokens per sequence; longer ones are cut (start kept)")
    batching: Literal["auto", "padded", "padding_free", "packing"] = Field(
        "auto", description="how text batches are formed; auto = per device (padding_free for text, padded for images)")
    train: Literal["llm", "projector", "both"] = Field(
        "llm", description="VLM: LoRA on the language model (llm), the projector fully (projector), or both")
    train_vision: bool = Field(False, description="VLM: also train the vision tower (fully); frozen by default")
    data_format: Literal["auto"] | SftFormat = Field(
        "auto", description="format of the `data` rows: messages, prompt_completion, sharegpt, alpaca, trace, doc_example; "
                            "auto = detected from the first row")
    mix: list[DataSource] = Field(
        default_factory=list, description="several datasets mixed with weights, e.g. [{path: a.jsonl, weight: 2}, "
                                          "{hub_id: teknium/OpenHermes-2.5, weight: 0.1}]; paths are relative to the `data` input")


INPUTS = {
    "model": Port("model directory or hub id (owner/name[@revision]): an LLM (text SFT) or a VLM of a supported "
                  "family (SFT with images)", hub_model=True),
    "data": Port("SFT rows (JSONL/parquet file or shard directory): TRL messages or prompt/completion (with images for a VLM), "
                 "ShareGPT, alpaca, Trace or DocExample records; with `mix`, the directory its paths are read from",
                 required=False),
    "chat_template": Port("a chat template file (Jinja) with {% generation %} markers, for a model whose own template "
                          "has none and for which TRL ships no training template (e.g. Mistral-Small-3.1)",
                          required=False),
}
OUTPUTS = {"adapter": "adapter", "merged": "merged", "log_history": "log_history.json"}


def hub_inputs(config: Config) -> list:
    """The hub datasets of `mix`, for the cache key (a moved branch is a cache miss)."""
    from compass.data.sft_formats import hub_refs

    return hub_refs(config.mix)

def run(config: Config, ctx: StageContext) -> dict:
    inputs, out_dir = ctx.inputs, ctx.out_dir
    import torch
    from trl import SFTConfig, SFTTrainer

    from compass.train import data as D
    from compass.train import model as M
    from compass.train.device import choose_batching, plan_device
    from compass.train.session import common_args, finish, prepare_checkpoints, train

    plan = plan_device(config)
    kind = M.model_kind(inputs["model"])
    parts = M.full_parts(kind, config.train, config.train_vision)
    use_lora = kind == "llm" or config.train in ("llm", "both")
    if config.modules_to_save and not use_lora:
        raise CompassError(f"modules_to_save {config.modules_to_save} are saved in the LoRA adapter, but train: "
                           f"{config.train} trains no LoRA; use train: both")
    # rows carrying image bytes (parquet/hub) are written once under out_dir/data_images, named by hash
    examples, data_sources = D.sft_examples(inputs.get("data"), config.data_format, config.mix, config.seed,
                                            out_dir / "data_images")
    batching = choose_batching(config.batching, vision=kind == "vlm")
    processing_class, template = M.load_for_training(inputs["model"], kind, inputs.get("chat_template"))

    from compass.models.hub_models import hub_origin

    data_metrics: dict = {"examples": len(examples), **data_sources, "chat_template": template.source,
                          "chat_template_sha256": template.sha256, "model_hub": hub_origin(inputs["model"])}
    if kind == "llm":
        tokenized = D.tokenize_sft(processing_class, examples, config.max_length)
        dataset = tokenized.dataset
        data_metrics.update(examples=tokenized.examples, truncated=tokenized.truncated, dropped=tokenized.dropped,
                            dataset_tokens=tokenized.tokens, assistant_tokens=tokenized.assistant_tokens)
    else:  # pages capped so each example fits max_length (TRL cannot cut through image tokens); see train.image_fit
        from compass.train.image_fit import fit_examples, record_fits

        fitted = fit_examples(processing_class, examples, config.max_length, out_dir / "fitted_images")
        dataset = D.vision_sft_dataset(fitted.examples)
        data_metrics.update(fitted.metrics())
        if plan.is_main:
            record_fits(fitted, out_dir, config.max_length)

    resume = prepare_checkpoints(out_dir, config, ctx.resume_key, plan)
    # TRL's config first: under ZeRO-3 it must exist before the model loads, so that loading partitions it
    args = SFTConfig(
        **common_args(config, plan, out_dir),
        # text: our labels already hold the assistant-only mask; images: TRL's collator masks per batch
        assistant_only_loss=kind == "vlm",
        padding_free=batching == "padding_free",
        packing=batching == "packing",
        # padding-free takes no max_length (sequences are cut above); packing uses it as the row length
        max_length=None if batching == "padding_free" else config.max_length,
    )
    model = M.load_model(inputs["model"], kind, torch.bfloat16 if plan.bf16 else torch.float32)
    full = M.plan_full_training(model, kind, parts)
    peft_config = M.lora_config(config, model, kind, full) if use_lora else None
    if not use_lora:
        M.freeze_all_but(model, full)
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=processing_class,
                         peft_config=peft_config)
    if use_lora:
        M.train_bare_parameters(trainer.model, full)  # e.g. OneVision's image_newline, outside any PEFT module
    trainable = M.trainable_parameter_count(trainer.model)
    output = train(trainer, resume, config, plan)  # compass's log lines and live MLflow metrics around trainer.train

    adapter_dir = out_dir / "adapter"
    M.save_trained(trainer, adapter_dir, full, use_lora, plan.is_main, processing_class)
    trainer.accelerator.wait_for_everyone()
    metrics = {"model_kind": kind, "train": config.train if kind == "vlm" else "llm", "full_parts": parts,
               "lora": use_lora, "batching": batching, "trainable_params": trainable, **data_metrics}
    if config.merge and plan.is_main:
        metrics.update(M.write_merged(inputs["model"], adapter_dir, out_dir / "merged"))
    metrics.update(finish(trainer, out_dir, output, resume, config, plan))
    # a resumed run's trainer counts only its own part: record the whole run's loss mean and tokens
    metrics.update(whole_run_training_figures(trainer.state.log_history, output.training_loss, trainer.state.global_step,
                                              resume.step, trainer.state.num_input_tokens_seen, resume.tokens_seen,
                                              metrics["train_runtime_s"]))
    return metrics
