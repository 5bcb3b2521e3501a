"""Compose a LLaVA-OneVision VLM from a SigLIP vision tower, a projector and an LLM (dimensions checked).

LLaVA-OneVision only; for the other families (Qwen-VL, Mistral3, Gemma3, Idefics3/SmolVLM) train the language model
inside the VLM with `compass sft --train llm`.

The projector comes from `--projector-from` (a projector dir written by decompose, or any LLaVA-OneVision dir,
of which only the projector tensors are read) or is new, initialised from the seed with the settings below.
Dimensions are checked from the configs before weights load, e.g. SigLIP2-so400m (hidden 1152) -> projector
1152->4096->4096 -> LLM-JP-4-8B (hidden 4096). The output loads with transformers'
AutoModelForImageTextToText and its processor_config.json names LlavaOnevisionProcessor (AutoProcessor where
torchvision is installed; compass.models.processors.load_processor without it).
Works on hub-style directories as well as the tiny ones; no trust_remote_code.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from compass.config import StageConfig
from compass.errors import CompassError
from compass.stagekit import StageContext
from compass.stages import Port

VERSION = 2  # code version of what this stage writes: bump when the same config and inputs would give other bytes
EXAMPLE = ("compass compose --vision work/decompose/vision --llm work/sft/merged "
           "--projector-from work/decompose/projector --out work/compose")

# Settings of a fresh projector; with --projector-from they come from there and may not be set here.
FRESH_ONLY = ("projector_hidden_act", "multimodal_projector_bias", "vision_feature_layer",
              "vision_feature_select_strategy", "vision_aspect_ratio", "anyres_max_tiles")


class Config(StageConfig):
    projector_hidden_act: str = Field("gelu", description="fresh projector: activation between its two Linear layers")
    multimodal_projector_bias: bool = Field(True, description="fresh projector: Linear layers with bias")
    vision_feature_layer: int = Field(-1, description="fresh projector: vision hidden state fed to the projector (-1 = last)")
    vision_feature_select_strategy: Literal["full", "default"] = Field(
        "full", description="fresh projector: 'full' keeps every patch (SigLIP has no CLS token); 'default' drops the first")
    vision_aspect_ratio: str = Field("anyres_max_9", description="fresh projector: OneVision's cap on AnyRes features")
    anyres_max_tiles: int = Field(6, ge=1, le=12, description=(
        "fresh projector: AnyRes grid pinpoints are every i x j tiles of the vision image size for i, j <= N "
        "(6 at 384 px is OneVision's own list)"))
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="weights dtype of the VLM; auto = the LLM's (parts in another dtype are cast, and reported)")


INPUTS = {
    "vision": Port("SigLIP vision tower dir (SiglipVisionModel, or a full SiglipModel from the hub) with its image processor"),
    "llm": Port("causal-LM dir (weights + tokenizer with an <image> token), e.g. decompose's llm/ after SFT"),
    "projector_from": Port("projector dir from decompose, or a LLaVA-OneVision dir to take the projector from; "
                           "omit for a fresh projector from the seed", required=False),
}
OUTPUTS = {"vlm": "vlm"}


def run(config: Config, ctx: StageContext) -> dict:
    inputs, out_dir = ctx.inputs, ctx.out_dir
    import torch

    from compass.io import staged_dir
    from compass.models.vlm import compose_vlm, load_projector

    torch.set_num_threads(1)
    projector = None
    fresh_settings = None
    if "projector_from" in inputs:
        overridden = sorted(set(FRESH_ONLY) & config.model_fields_set)
        if overridden:
            raise CompassError(
                f"compose: {overridden} set, but the projector and its settings come from {inputs['projector_from']}")
        projector = load_projector(inputs["projector_from"])
    else:
        dumped = config.model_dump()
        fresh_settings = {key: dumped[key] for key in FRESH_ONLY if key != "anyres_max_tiles"}
    with staged_dir(out_dir / OUTPUTS["vlm"]) as tmp:
        metrics = compose_vlm(
            inputs["vision"], inputs["llm"], tmp,
            projector=projector, seed=config.seed, fresh_settings=fresh_settings,
            anyres_max_tiles=config.anyres_max_tiles, dtype=config.dtype,
        )
    metrics["projector_source"] = "given" if projector is not None else "fresh"
    return metrics
