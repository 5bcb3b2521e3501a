"""Per-device choices for a training run, made once and recorded in the metrics.

On CPU: fp32, no gradient checkpointing (it only costs time there), padding-free batches for text (measured
1.8x the padded tokens/s on length-skewed traces; bfd packing is slower on CPU because one long packed row
pays dense quadratic attention, see STACK.md and bench/sft_padding.py). On GPU: bf16 where supported,
gradient checkpointing on. Vision batches are always padded: TRL refuses packing and padding-free there.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Literal

from compass.errors import CompassError

Batching = Literal["padded", "padding_free", "packing"]


@dataclass(frozen=True)
class DevicePlan:
    device: Literal["cpu", "cuda"]
    num_processes: int
    process_index: int
    bf16: bool
    gradient_checkpointing: bool
    gradient_accumulation_steps: int

    @property
    def is_main(self) -> bool:
        return self.process_index == 0

    def as_metrics(self) -> dict:
        return asdict(self)


def launched_with_cpu() -> bool:
    """`accelerate launch --cpu` tells its processes through ACCELERATE_USE_CPU (absent outside a launch)."""
    from accelerate.utils import str_to_bool

    return bool(str_to_bool(os.environ.get("ACCELERATE_USE_CPU", "false")))


def plan_device(config) -> DevicePlan:
    """Device, precision, checkpointing and gradient accumulation for `config` (a TrainConfig) in this process."""
    import torch
    from accelerate import PartialState

    if config.device == "cuda" and not torch.cuda.is_available():
        raise CompassError("device: cuda was asked for but torch sees no CUDA device")
    use_cpu = config.device == "cpu" or (config.device == "auto" and (not torch.cuda.is_available() or launched_with_cpu()))
    # The process group (gloo under `accelerate launch --cpu`, nccl on GPUs) exists from here on; TRL's
    # TrainingArguments reuse this same shared state.
    state = PartialState(cpu=use_cpu)
    device = "cpu" if use_cpu else "cuda"
    bf16_ok = not use_cpu and torch.cuda.is_bf16_supported()
    if config.bf16 and not bf16_ok:
        raise CompassError(f"bf16: true needs a GPU with bf16 support; this run is on {device}")
    per_step = config.micro_batch_size * state.num_processes
    if config.global_batch_size % per_step:
        raise CompassError(
            f"global_batch_size {config.global_batch_size} is not a multiple of micro_batch_size "
            f"{config.micro_batch_size} x {state.num_processes} process(es) = {per_step}")
    return DevicePlan(
        device=device,
        num_processes=state.num_processes,
        process_index=state.process_index,
        bf16=bf16_ok if config.bf16 is None else config.bf16,
        gradient_checkpointing=(not use_cpu) if config.gradient_checkpointing is None else config.gradient_checkpointing,
        gradient_accumulation_steps=config.global_batch_size // per_step,
    )


def choose_batching(requested: str, *, vision: bool) -> Batching:
    """The batching mode: `auto` is padding-free for text (the best measured mode on CPU, and TRL's
    recommended mode with flash attention on GPU) and padded for vision data (the only mode TRL takes)."""
    if vision:
        if requested not in ("auto", "padded"):
            raise CompassError(f"batching: {requested} is not possible with images (TRL pads vision batches); use auto or padded")
        return "padded"
    if requested == "auto":
        return "padding_free"
    return requested  # type: ignore[return-value]
