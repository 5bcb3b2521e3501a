"""Config fields shared by the training stages. Each stage's Config subclasses TrainConfig and declares the
fields whose defaults differ between SFT and DPO (learning rate, batch sizes, max length) itself, so every
default still lives in exactly one place."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from compass.config import StageConfig


class TrainConfig(StageConfig):
    # declared again with their defaults by each stage (the values differ between SFT and DPO)
    learning_rate: float = Field(gt=0, description="peak AdamW learning rate")
    micro_batch_size: int = Field(gt=0, description="sequences per device per forward pass")
    global_batch_size: int = Field(gt=0, description="sequences per optimizer step over all devices; "
                                   "gradient accumulation = global / (micro x processes)")
    max_length: int = Field(gt=0, description="tokens per sequence; longer ones are cut (prompt kept, answer end lost)")
    # schedule
    epochs: float = Field(1.0, gt=0, description="passes over the data (ignored when max_steps is set)")
    max_steps: int | None = Field(None, gt=0, description="stop after this many optimizer steps (tiny runs); overrides epochs")
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="share of the steps spent warming the learning rate up from 0")
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = Field(
        "linear", description="learning-rate schedule after warmup")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    max_grad_norm: float = Field(1.0, gt=0, description="gradient clipping norm")
    # LoRA
    lora_r: int = Field(32, gt=0, description="LoRA rank")
    lora_alpha: int = Field(64, gt=0, description="LoRA alpha (scale = alpha / r)")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the LoRA input")
    target_modules: Literal["all-linear"] | list[str] = Field(
        "all-linear",
        description="LoRA targets: 'all-linear' (every linear layer of the LLM except the output head) or leaf "
                    "module names such as [q_proj, v_proj]; in a VLM only the language model's layers are matched")
    modules_to_save: list[str] = Field(
        default_factory=list,
        description="modules trained fully beside LoRA and saved in the adapter (PEFT modules_to_save), named by how "
                    "their module path ends, e.g. [embed_tokens, lm_head]: needed when the data brings tokens the "
                    "model never learned (<cot>, <think>, new XML tags), whose embedding rows and output weights LoRA "
                    "cannot train; must not be LoRA targets")
    # device and precision: None = chosen per device (see compass.train.device)
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when present (and not launched with --cpu), else CPU")
    bf16: bool | None = Field(None, description="bf16 mixed precision; default on where the GPU supports it, off on CPU")
    gradient_checkpointing: bool | None = Field(None, description="recompute activations in backward; default on GPU, off on CPU")
    # logging, checkpoints, resume
    logging_steps: int = Field(10, gt=0, description="log loss every N optimizer steps (step 1 is always logged)")
    save_steps: int = Field(200, gt=0, description="write a resumable checkpoint every N optimizer steps")
    save_total_limit: int = Field(2, gt=0, description="checkpoints kept on disk while training")
    resume: bool = Field(True, description="continue from the latest checkpoint of an interrupted run in the same out dir")
    keep_checkpoints: bool = Field(False, description="keep out_dir/.checkpoints after success (they are not artifacts)")
    merge: bool = Field(False, description="also write the merged model (LoRA merged into the base) to out_dir/merged")
    report_to: list[str] = Field(
        default_factory=list,
        description="trackers the trainer also streams to (TRL/transformers report_to: wandb, tensorboard, mlflow, ...); "
                    "compass's own MLflow run of the stage gets the metrics live either way")

    @model_validator(mode="after")
    def _batch_arithmetic(self):
        if self.global_batch_size % self.micro_batch_size:
            raise ValueError(f"global_batch_size {self.global_batch_size} is not a multiple of "
                             f"micro_batch_size {self.micro_batch_size}")
        return self
