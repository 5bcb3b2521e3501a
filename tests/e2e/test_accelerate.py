"""Multi-process training: SFT under `accelerate launch` with 2 CPU processes (gloo), started directly and
from a recipe stage with `launch:`; the shipped accelerate configs load and name only known fields."""
from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import pytest

from compass.config import Launch
from compass.io import write_jsonl
from support.traces import synthetic_trace
from compass.pipeline import run_recipe
from compass.runner import execute_stage, launch_command
from compass.stages import sft

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "configs" / "accelerate").glob("*.yaml"))
# 2 processes x micro batch 2 = the global batch of 4: no accumulation; 1 process accumulates 2 micro batches.
# No LoRA dropout: its masks depend on which process draws them, so only then can 2 processes match 1.
TINY = dict(max_steps=4, global_batch_size=4, micro_batch_size=2, lora_r=8, lora_alpha=16, learning_rate=5e-3,
            max_length=256, logging_steps=1, warmup_ratio=0.0, lora_dropout=0.0)


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    path = tmp_path_factory.mktemp("acc-data") / "traces.jsonl"
    write_jsonl(path, [synthetic_trace(i) for i in range(32)])
    return path


def test_shipped_configs_load_with_known_fields():
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import launch_command_parser

    assert [p.stem for p in CONFIGS] == ["ddp", "fsdp", "zero2", "zero3"]
    known = set(vars(launch_command_parser().parse_args(["x.py"])))
    expected = {"ddp": "MULTI_GPU", "zero2": "DEEPSPEED", "zero3": "DEEPSPEED", "fsdp": "FSDP"}
    for path in CONFIGS:
        config = load_config_from_file(str(path))  # unknown top-level keys raise here
        assert config.distributed_type.value == expected[path.stem] and config.mixed_precision == "bf16"
        for key in {**config.deepspeed_config, **config.fsdp_config}:
            assert key in known, f"{path.name}: {key} is not an accelerate launch field"
        assert path.read_text().startswith("#") and "accelerate launch --config_file" in path.read_text()
    assert load_config_from_file(str(REPO / "configs/accelerate/zero3.yaml")).deepspeed_config["zero_stage"] == 3
    assert load_config_from_file(str(REPO / "configs/accelerate/fsdp.yaml")).fsdp_config[
        "fsdp_transformer_layer_cls_to_wrap"] == "LlamaDecoderLayer"


def test_launch_command():
    cmd, env = launch_command(Launch(num_processes=2, cpu=True))
    assert cmd[-5:] == ["--multi_gpu", "--num_machines", "1", "--num_processes", "2"]  # --cpu would start ONE process
    assert env == {"CUDA_VISIBLE_DEVICES": "", "ACCELERATE_USE_CPU": "true"}
    cmd, env = launch_command(Launch(accelerate_config=str(CONFIGS[-1]), num_processes=4))
    assert cmd[-4:] == ["--config_file", str(CONFIGS[-1]), "--num_processes", "4"] and env == {}


def _losses(out: Path) -> list[float]:
    return [e["loss"] for e in json.loads((out / "log_history.json").read_text()) if "loss" in e]


def test_sft_under_accelerate_launch_directly(tiny_models, traces, tmp_path):
    """`accelerate launch ... -m compass.cli sft`: both processes train, rank 0 alone writes outputs and the
    manifest; data parallelism over 2 processes matches one process accumulating the same global batch."""
    out = tmp_path / "launched"
    cmd, env = launch_command(Launch(num_processes=2, cpu=True))
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]
    proc = subprocess.run([*cmd, "-m", "compass.cli", "sft", "--model", str(tiny_models.llm), "--data", str(traces),
                           "--out", str(out), "--merge", *flags],
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    m = manifest["metrics"]
    assert m["device.num_processes"] == 2 and m["device.gradient_accumulation_steps"] == 1
    assert "merge.tensors" in m  # rank 0's metrics (only it merges) are the recorded ones
    assert (out / "adapter" / "adapter_model.safetensors").is_file() and (out / "merged" / "model.safetensors").is_file()
    assert set(manifest["outputs"]) >= {"adapter/adapter_model.safetensors", "merged/model.safetensors", "log_history.json"}
    assert all(math.isfinite(x) for x in _losses(out)) and m["last_loss"] < m["first_loss"]

    single = execute_stage("sft", sft.Config(**TINY), {"model": tiny_models.llm, "data": traces}, tmp_path / "single")
    assert single.manifest.metrics["device.gradient_accumulation_steps"] == 2
    assert _losses(out) == pytest.approx(_losses(single.out_dir), abs=1e-4)


def test_recipe_stage_with_launch(tiny_models, traces, tmp_path):
    recipe = tmp_path / "launched.yaml"
    config = ", ".join(f"{k}: {v}" for k, v in TINY.items())
    recipe.write_text(
        "# compass run launched.yaml\n"
        "name: launched-sft\n"
        "stages:\n"
        "  - name: sft\n"
        "    stage: sft\n"
        f"    inputs: {{model: {tiny_models.llm}, data: {traces}}}\n"
        f"    config: {{{config}}}\n"
        "    launch: {num_processes: 2, cpu: true}\n")
    results = run_recipe(recipe, tmp_path / "work", log=lambda _: None)
    result = results["sft"]
    m = result.manifest.metrics
    assert not result.cached and m["device.num_processes"] == 2 and result.manifest.launch["num_processes"] == 2
    assert (result.out_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert math.isfinite(m["last_loss"]) and m["last_loss"] < m["first_loss"]
    assert not (result.out_dir / ".launch.json").exists() and not (result.out_dir / ".metrics.json").exists()
    # a second run of the recipe is a cache hit: nothing is launched
    assert run_recipe(recipe, tmp_path / "work", log=lambda _: None)["sft"].cached
