"""Build the tiny offline models from a seed: tokenizer, Llama LLM, LLaVA-OneVision VLM, SigLIP vision tower.

Everything is built locally (no hub): a byte-level BPE trained on a built-in English + Japanese corpus, with
a chat template that marks assistant turns, and models of hidden size 64 with 2 layers. The same seed gives
the same bytes. Each output is an ordinary Hugging Face directory (from_pretrained).
"""
from __future__ import annotations

from pathlib import Path

from pydantic import Field

from compass.config import StageConfig
from compass.stagekit import StageContext

VERSION = 2  # code version of what this stage writes: bump when the same config and inputs would give other bytes
EXAMPLE = "compass tiny-models --out work/tiny --seed 0"


class Config(StageConfig):
    vocab_size: int = Field(3000, ge=300, le=50000, description="BPE vocabulary target (the small corpus may give fewer)")


INPUTS: dict = {}
OUTPUTS = {"tokenizer": "tokenizer", "llm": "llm", "vlm": "vlm", "vision": "vision"}


def run(config: Config, ctx: StageContext) -> dict:
    out_dir = ctx.out_dir
    import torch

    from compass.models.tiny import build_tiny_llm, build_tiny_tokenizer, build_tiny_vision, build_tiny_vlm
    from compass.io import staged_dir

    torch.set_num_threads(1)
    with staged_dir(out_dir / OUTPUTS["tokenizer"]) as tmp:
        build_tiny_tokenizer(tmp, seed=config.seed, vocab_size=config.vocab_size)
    tokenizer = out_dir / OUTPUTS["tokenizer"]
    with staged_dir(out_dir / OUTPUTS["llm"]) as tmp:
        build_tiny_llm(tmp, tokenizer, seed=config.seed)
    with staged_dir(out_dir / OUTPUTS["vlm"]) as tmp:
        build_tiny_vlm(tmp, tokenizer, seed=config.seed)
    with staged_dir(out_dir / OUTPUTS["vision"]) as tmp:
        build_tiny_vision(tmp, seed=config.seed)

    from transformers import AutoConfig, AutoTokenizer

    vlm_config = AutoConfig.from_pretrained(str(out_dir / OUTPUTS["vlm"]))
    return {
        "vocab_size": len(AutoTokenizer.from_pretrained(str(tokenizer))),
        "hidden_size": vlm_config.text_config.hidden_size,
        "layers": vlm_config.text_config.num_hidden_layers,
        "image_size": vlm_config.vision_config.image_size,
    }
