"""Merge models: a LoRA adapter into its base, or task arithmetic base + sum_i w_i * (finetuned_i - base); LLMs and VLMs alike.

method lora: PEFT merge_and_unload of --adapter into --base, saved as safetensors.
method task_arithmetic: tensor by tensor over the safetensors shards (memory: a few tensors, not the model),
in the base's layout, config/tokenizer/processor files copied from the base. docs/method.md B.5 uses one
finetuned model with weight 0.25. For several, --finetuned is a directory of model directories, merged in
sorted name order with one weight each. Either way the output must have exactly the base's tensor names,
shapes and dtypes, or the stage fails naming the first bad tensor.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from compass.config import StageConfig
from compass.errors import CompassError
from compass.stagekit import StageContext
from compass.stages import Port

VERSION = 1  # code version of what this stage writes: bump when the same config and inputs would give other bytes
EXAMPLE = "compass merge --method task_arithmetic --base vlm/ --finetuned sft/model --weights '[0.25]' --out merged/"


class Config(StageConfig):
    method: Literal["lora", "task_arithmetic"] = Field("task_arithmetic", description="lora: adapter into base; task_arithmetic: weighted task vectors")
    weights: list[float] | None = Field(None, description="task_arithmetic: one weight per finetuned model, e.g. [0.25]")
    dtype: Literal["float32", "bfloat16", "float16"] | None = Field(None, description="dtype of the merged float tensors (default: the base's)")

    @model_validator(mode="after")
    def _weights_match_method(self):
        if self.method == "task_arithmetic" and not self.weights:
            raise ValueError("method task_arithmetic needs weights, e.g. [0.25]")
        if self.weights is not None and not all(math.isfinite(w) for w in self.weights):
            raise ValueError(f"weights must be finite numbers, got {self.weights}")  # NaN/inf turn every tensor NaN
        if self.method == "lora" and self.weights is not None:
            raise ValueError(f"method lora takes no weights (got {self.weights}); the adapter is merged at its own scale")
        return self


INPUTS = {
    "base": Port("base model directory or hub id (owner/name[@revision]; transformers, safetensors)", hub_model=True),
    "adapter": Port("PEFT LoRA adapter directory (method lora)", required=False),
    "finetuned": Port("task_arithmetic: a finetuned model directory, or a directory of model directories (sorted by name)", required=False),
}
OUTPUTS = {"model": "model"}


def is_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file() or (path / "model.safetensors").is_file() or any(path.glob("*.safetensors.index.json"))


def finetuned_models(path: Path) -> list[Path]:
    """A model directory, or the sorted model directories inside `path`."""
    if is_model_dir(path):
        return [path]
    models = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".") and is_model_dir(p))
    for model in models:
        if model.is_symlink():
            # the run's input hashes do not follow directory links, so a linked model would not be in the cache key
            raise CompassError(f"finetuned model {model} is a symlink; use a real directory (e.g. `cp -al` hard links)")
    if not models:
        raise CompassError(f"finetuned input {path} is neither a model directory nor a directory of model directories")
    return models


def run(config: Config, ctx: StageContext) -> dict:
    inputs, out_dir = ctx.inputs, ctx.out_dir
    from compass.io import staged_dir

    # build in a hidden directory and rename at the end: a failed merge never leaves a model-looking directory
    if not (inputs["base"] / "config.json").is_file():
        raise CompassError(f"merge: base {inputs['base']} has no config.json; a merge of it would not load as a model")
    with staged_dir(out_dir / OUTPUTS["model"]) as partial:
        metrics = _merge(config, inputs, partial)
        check_loadable(partial)  # before the rename, so before the runner writes a manifest for it
    return {"method": config.method, **metrics}


def check_loadable(model_dir: Path) -> None:
    """The merged directory must load as a model: its config parses and every tensor is finite (a NaN or an
    overflow to inf would otherwise be recorded as a successful merge)."""
    import json

    import torch
    from safetensors import safe_open

    try:
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CompassError(f"merge: the merged model's config.json does not load ({err})") from None
    if not isinstance(config, dict):
        raise CompassError("merge: the merged model's config.json is not a JSON object")
    shards = sorted(model_dir.glob("*.safetensors"))
    if not shards:
        raise CompassError(f"merge: the merged model in {model_dir} has no safetensors weights")
    for shard in shards:
        with safe_open(str(shard), framework="pt") as fh:
            for name in fh.keys():
                tensor = fh.get_tensor(name)
                if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                    raise CompassError(f"merge: tensor {name} of the merged model is not finite (NaN or inf); "
                                       "check the weights and the dtype")


def _merge(config: Config, inputs: dict[str, Path], partial: Path) -> dict:
    from compass.models.merge import merge_lora, task_arithmetic

    if config.method == "lora":
        if "adapter" not in inputs or "finetuned" in inputs:
            raise CompassError("merge --method lora needs --adapter (and no --finetuned)")
        metrics = merge_lora(inputs["base"], inputs["adapter"], partial, dtype=config.dtype)
    else:
        if "finetuned" not in inputs or "adapter" in inputs:
            raise CompassError("merge --method task_arithmetic needs --finetuned (and no --adapter)")
        models = finetuned_models(inputs["finetuned"])
        if len(models) != len(config.weights):
            raise CompassError(f"merge: {len(models)} finetuned model(s) {[m.name for m in models]} but {len(config.weights)} weight(s) {config.weights}")
        metrics = task_arithmetic(inputs["base"], models, config.weights, partial, dtype=config.dtype)
        metrics["finetuned"] = [m.name for m in models]
    return metrics
