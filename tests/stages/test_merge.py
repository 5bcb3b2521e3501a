"""Merges: task arithmetic exact on a hand-computed example, across shards, on a VLM (every language-model tensor
kept), loud failures on mismatched checkpoints; LoRA merge gives the base+adapter logits."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from compass.cli import main as cli_main
from compass.errors import CompassError
from compass.models.merge import read_checkpoint
from compass.runner import execute_stage
from compass.stages import merge as merge_stage


def merge(tmp_path: Path, name: str, **kwargs) -> Path:
    inputs = {k: kwargs.pop(k) for k in ("base", "adapter", "finetuned") if k in kwargs}
    out = tmp_path / name
    execute_stage("merge", merge_stage.Config(**kwargs), inputs, out)
    return out / "model"


def write_model(path: Path, tensors: dict, files: dict[str, str] | None = None) -> Path:
    path.mkdir(parents=True)
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    for name, text in (files or {"config.json": "{}"}).items():
        (path / name).write_text(text)
    return path


def perturbed_copy(src: Path, dst: Path, seed: int, scale: float = 0.1) -> Path:
    """A 'finetuned' model: every float tensor of `src` plus seeded noise, same layout and files."""
    shutil.copytree(src, dst)
    gen = torch.Generator().manual_seed(seed)
    for shard in sorted(dst.glob("*.safetensors")):
        tensors = load_file(str(shard))
        noisy = {k: (v + scale * torch.randn(v.shape, generator=gen, dtype=v.dtype)) if v.is_floating_point() else v
                 for k, v in tensors.items()}
        save_file(noisy, str(shard), metadata={"format": "pt"})
    return dst


def all_tensors(model_dir: Path) -> dict[str, torch.Tensor]:
    out = {}
    for shard in sorted(model_dir.glob("*.safetensors")):
        out.update(load_file(str(shard)))
    return out


def expected_merge(base: Path, finetuned: list[Path], weights: list[float]) -> dict[str, torch.Tensor]:
    """The formula in plain torch on whole state dicts (what the streaming merge must reproduce bit for bit)."""
    theta0, thetas = all_tensors(base), [all_tensors(p) for p in finetuned]
    out = {}
    for key, t0 in theta0.items():
        delta = torch.zeros_like(t0, dtype=torch.float32)
        for theta, w in zip(thetas, weights):
            delta += w * (theta[key].float() - t0.float())
        out[key] = (t0.float() + delta).to(t0.dtype)
    return out


# --- task arithmetic -----------------------------------------------------------------------------------


def test_task_arithmetic_equals_hand_computed_example(tmp_path):
    files = {"config.json": '{"model_type": "toy"}', "tokenizer.json": '{"v": 1}'}
    base = write_model(tmp_path / "base", {"a": torch.tensor([1.0, 2.0, 3.0]), "b": torch.tensor([[0.5, -1.0], [4.0, 8.0]]),
                                           "steps": torch.tensor([7, 8], dtype=torch.int64)}, files)
    ft1 = write_model(tmp_path / "ft" / "m1", {"a": torch.tensor([5.0, 2.0, -1.0]), "b": torch.tensor([[0.5, 3.0], [4.0, 0.0]]),
                                               "steps": torch.tensor([7, 8], dtype=torch.int64)})
    ft2 = write_model(tmp_path / "ft" / "m2", {"a": torch.tensor([1.0, 6.0, 3.0]), "b": torch.tensor([[2.5, -1.0], [0.0, 8.0]]),
                                               "steps": torch.tensor([7, 8], dtype=torch.int64)})
    out = merge(tmp_path, "merged", base=base, finetuned=tmp_path / "ft", weights=[0.25, 0.5])
    merged = load_file(str(out / "model.safetensors"))
    # a = [1,2,3] + 0.25*[4,0,-4] + 0.5*[0,4,0];  b = b0 + 0.25*[[0,4],[0,-8]] + 0.5*[[2,0],[-4,0]]
    assert merged["a"].tolist() == [2.0, 4.0, 2.0]
    assert merged["b"].tolist() == [[1.5, 0.0], [2.0, 6.0]]
    assert merged["steps"].tolist() == [7, 8] and merged["steps"].dtype == torch.int64  # non-float: the base's
    assert (out / "config.json").read_text() == files["config.json"] and (out / "tokenizer.json").is_file()
    manifest = json.loads((tmp_path / "merged" / "manifest.json").read_text())
    assert manifest["metrics"]["finetuned"] == ["m1", "m2"] and manifest["metrics"]["tensors"] == 3
    assert manifest["metrics"]["changed_tensors"] == 2  # a and b; the int buffer is copied
    with safe_open(str(out / "model.safetensors"), "pt") as fh:
        assert fh.metadata() == {"format": "pt"}


def test_multi_shard_merge_keeps_the_base_layout_and_loads(tmp_path, tiny_models):
    from transformers import AutoModelForCausalLM

    base = tmp_path / "base"
    model = AutoModelForCausalLM.from_pretrained(str(tiny_models.llm))
    model.save_pretrained(str(base), max_shard_size="300KB")  # several shards + index
    shutil.copy2(tiny_models.llm / "tokenizer.json", base / "tokenizer.json")
    assert len(list(base.glob("*.safetensors"))) >= 3
    ft = perturbed_copy(tiny_models.llm, tmp_path / "ft", seed=1)  # single file: a different layout than the base
    out = merge(tmp_path, "merged", base=base, finetuned=ft, weights=[0.25])
    expected = expected_merge(base, [ft], [0.25])
    got = all_tensors(out)
    assert got.keys() == expected.keys()
    for key in expected:
        assert torch.equal(got[key], expected[key]), key
    assert sorted(p.name for p in out.glob("*.safetensors")) == sorted(p.name for p in base.glob("*.safetensors"))
    index_out = json.loads((out / "model.safetensors.index.json").read_text())
    index_base = json.loads((base / "model.safetensors.index.json").read_text())
    assert index_out["weight_map"] == index_base["weight_map"]
    assert index_out["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in got.values())
    reloaded, info = AutoModelForCausalLM.from_pretrained(str(out), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert (out / "tokenizer.json").is_file()


def test_vlm_merge_keeps_every_language_model_tensor(tmp_path, tiny_models):
    from transformers import LlavaOnevisionForConditionalGeneration

    ft = perturbed_copy(tiny_models.vlm, tmp_path / "ft", seed=2)
    out = merge(tmp_path, "merged", base=tiny_models.vlm, finetuned=ft, weights=[0.25])
    base_keys = set(read_checkpoint(tiny_models.vlm).tensors)
    lm_keys = {k for k in base_keys if "language_model" in k}
    assert len(lm_keys) >= 20  # embeddings, every layer, lm_head
    got, expected = all_tensors(out), expected_merge(tiny_models.vlm, [ft], [0.25])
    assert set(got) == base_keys
    for key in base_keys:
        assert torch.equal(got[key], expected[key]), key
    base_t = all_tensors(tiny_models.vlm)
    assert all(not torch.equal(got[k], base_t[k]) for k in lm_keys)  # really merged, not copied from the base
    model, info = LlavaOnevisionForConditionalGeneration.from_pretrained(str(out), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert (out / "processor_config.json").is_file()


def test_dtype_option_casts_floats_and_records_it(tmp_path, tiny_models):
    ft = perturbed_copy(tiny_models.llm, tmp_path / "ft", seed=3)
    out = merge(tmp_path, "bf16", base=tiny_models.llm, finetuned=ft, weights=[0.25], dtype="bfloat16")
    assert {info.dtype for info in read_checkpoint(out).tensors.values()} == {"BF16"}
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t.pop("model.norm.weight"), r"lacks 1 tensor\(s\) of the base .*first 'model.norm.weight'"),
        (lambda t: t.update({"extra.weight": torch.zeros(2)}), r"has 1 tensor\(s\) the base .* lacks, first 'extra.weight'"),
        (lambda t: t.update({"model.norm.weight": torch.zeros(3)}), r"tensor 'model.norm.weight' has shape \[3\], the base has \[64\]"),
        (lambda t: t.update({"model.norm.weight": torch.zeros(64, dtype=torch.int32)}), r"tensor 'model.norm.weight' has dtype I32"),
    ],
)
def test_mismatched_finetuned_model_fails_loudly_and_leaves_no_model(tmp_path, tiny_models, change, message):
    ft = tmp_path / "ft"
    shutil.copytree(tiny_models.llm, ft)
    tensors = load_file(str(ft / "model.safetensors"))
    change(tensors)
    save_file(tensors, str(ft / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CompassError, match=message):
        merge(tmp_path, "bad", base=tiny_models.llm, finetuned=ft, weights=[0.25])
    assert not (tmp_path / "bad" / "model").exists() and not list((tmp_path / "bad").glob(".model*"))


def test_config_and_inputs_are_checked(tmp_path, tiny_models, capsys):
    with pytest.raises(ValueError, match="needs weights"):
        merge_stage.Config(method="task_arithmetic")
    with pytest.raises(ValueError, match="takes no weights"):
        merge_stage.Config(method="lora", weights=[1.0])
    with pytest.raises(CompassError, match=r"2 finetuned model\(s\).* but 1 weight"):
        ft = tmp_path / "fts"
        perturbed_copy(tiny_models.llm, ft / "a", seed=1)
        perturbed_copy(tiny_models.llm, ft / "b", seed=2)
        merge(tmp_path, "x", base=tiny_models.llm, finetuned=ft, weights=[0.25])
    # the CLI verb: one line, non-zero exit
    code = cli_main(["merge", "--out", str(tmp_path / "cli"), "--base", str(tiny_models.llm), "--method", "lora"])
    assert code == 2 and "needs --adapter" in capsys.readouterr().err


# --- LoRA ---------------------------------------------------------------------------------------------


def make_adapter(base: Path, out: Path, seed: int):
    """A PEFT LoRA adapter with random (non-zero) A and B: no training needed for a merge check."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(base))
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    peft_model.save_pretrained(str(out))
    return peft_model.eval()


def test_lora_merge_gives_base_plus_adapter_logits(tmp_path, tiny_models):
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(1)
    peft_model = make_adapter(tiny_models.llm, tmp_path / "adapter", seed=0)
    ids = torch.tensor([[1, 17, 250, 33, 900, 5, 61, 12]])
    with torch.no_grad():
        expected = peft_model(input_ids=ids).logits
        with peft_model.disable_adapter():
            base_logits = peft_model(input_ids=ids).logits
    assert (expected - base_logits).abs().max() > 1e-2  # the adapter really changes the model
    out = merge(tmp_path, "lora", base=tiny_models.llm, adapter=tmp_path / "adapter", method="lora")
    merged = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    with torch.no_grad():
        got = merged(input_ids=ids).logits
    assert torch.allclose(got, expected, atol=1e-5, rtol=0)
    assert set(read_checkpoint(out).tensors) == set(read_checkpoint(tiny_models.llm).tensors)
    assert (out / "tokenizer.json").is_file() and not list(out.glob("adapter_*"))


def test_lora_merge_on_a_vlm_keeps_its_layout_and_changes_only_adapted_tensors(tmp_path, tiny_models):
    from peft import LoraConfig, get_peft_model
    from transformers import LlavaOnevisionForConditionalGeneration

    torch.manual_seed(0)
    model = LlavaOnevisionForConditionalGeneration.from_pretrained(str(tiny_models.vlm))
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=r".*language_model.*\.(q_proj|v_proj)",
                                                  init_lora_weights=False))
    peft_model.save_pretrained(str(tmp_path / "adapter"))
    out = merge(tmp_path, "lora-vlm", base=tiny_models.vlm, adapter=tmp_path / "adapter", method="lora")
    got, base = all_tensors(out), all_tensors(tiny_models.vlm)
    assert got.keys() == base.keys()
    changed = {k for k in base if not torch.equal(got[k], base[k])}
    assert changed and all("language_model" in k and ("q_proj" in k or "v_proj" in k) for k in changed)
    assert (out / "processor_config.json").is_file()
