"""Shared pieces of the training stages (sft, dpo): TRL + PEFT, nothing home-made in the training loop.

    config.py      the fields both stages share (LoRA, batch arithmetic, device choices, checkpoints)
    device.py      per-device choices: CPU/GPU, bf16, gradient checkpointing, batching mode, world size
    data.py        records -> datasets (Trace/DocExample for SFT, Pair for DPO), assistant-only labels
    model.py       loading an LLM or VLM directory, what trains (LoRA targets, full parts), merging
    session.py     checkpoints and resume, TRL argument construction, log history -> metrics

Nothing here imports torch/transformers at module top, so `compass --help` stays fast.
"""
