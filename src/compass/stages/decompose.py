"""Split a LLaVA-OneVision VLM into its SigLIP vision tower, projector and LLM directories.

LLaVA-OneVision only; for the other families (Qwen-VL, Mistral3, Gemma3, Idefics3/SmolVLM) train the language model
inside the VLM with `compass sft --train llm`.

vision/ loads with SiglipVisionModel (plus its SigLIP image processor); projector/ holds projector.safetensors
(linear_1, linear_2, image_newline) and projector_config.json (sizes and the VLM settings that go with it);
llm/ loads with AutoModelForCausalLM and AutoTokenizer (the VLM's tokenizer and chat template), ready for
text-only training. `compass compose` on the three parts gives back the same tensors.
"""
from __future__ import annotations

from pathlib import Path

from compass.config import StageConfig
from compass.stagekit import StageContext
from compass.stages import Port

VERSION = 1  # code version of what this stage writes: bump when the same config and inputs would give other bytes
EXAMPLE = "compass decompose --vlm work/tiny/vlm --out work/decompose"


class Config(StageConfig):
    pass


INPUTS = {"vlm": Port("LLaVA-OneVision dir (from tiny-models, compose or the hub)")}
OUTPUTS = {"vision": "vision", "projector": "projector", "llm": "llm"}


def run(config: Config, ctx: StageContext) -> dict:
    inputs, out_dir = ctx.inputs, ctx.out_dir
    import torch

    from compass.io import staged_dir
    from compass.models.vlm import decompose_vlm

    torch.set_num_threads(1)
    with staged_dir(out_dir / OUTPUTS["vision"]) as vision, staged_dir(out_dir / OUTPUTS["projector"]) as projector, \
            staged_dir(out_dir / OUTPUTS["llm"]) as llm:
        return decompose_vlm(inputs["vlm"], vision, projector, llm)
