"""compose / decompose: exact round trip, loading with plain transformers, dimension checks with clear errors."""
import filecmp
import json
import shutil
from pathlib import Path

import pytest
import torch

from compass.errors import CompassError
from compass.models.vlm import ProjectorShape, check_dimensions, load_processor
from compass.runner import execute_stage
from compass.stagekit import run_stage
from compass.stages import compose, decompose


def safetensors_of(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


def same_tree(a: Path, b: Path) -> list[str]:
    """Relative paths whose bytes differ (or exist on one side only)."""
    files_a = {p.relative_to(a) for p in a.rglob("*") if p.is_file()}
    files_b = {p.relative_to(b) for p in b.rglob("*") if p.is_file()}
    diff = sorted(str(p) for p in files_a ^ files_b)
    diff += sorted(str(p) for p in files_a & files_b if not filecmp.cmp(a / p, b / p, shallow=False))
    return diff


@pytest.fixture(scope="module")
def decomposed(tiny_models, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("decompose")
    result = execute_stage("decompose", decompose.Config(seed=0), {"vlm": tiny_models.vlm}, out)
    assert result.manifest.metrics["projector"] == [64, 64, 64]
    return out


@pytest.fixture(scope="module")
def fresh_vlm(tiny_models, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fresh")
    execute_stage("compose", compose.Config(seed=3, anyres_max_tiles=2),
                  {"vision": tiny_models.vision, "llm": tiny_models.llm}, out)
    return out / "vlm"


def test_decompose_then_compose_reproduces_every_tensor_and_file(tiny_models, decomposed, tmp_path):
    result = execute_stage(
        "compose", compose.Config(seed=0),
        {"vision": decomposed / "vision", "llm": decomposed / "llm", "projector_from": decomposed / "projector"},
        tmp_path,
    )
    assert result.manifest.metrics["projector_source"] == "given"
    original, rebuilt = safetensors_of(tiny_models.vlm), safetensors_of(tmp_path / "vlm")
    assert sorted(original) == sorted(rebuilt) and len(original) == 63
    for name, tensor in original.items():
        assert tensor.dtype == rebuilt[name].dtype and torch.equal(tensor, rebuilt[name]), name
    # config, generation config, processor, tokenizer and chat template too: the same bytes
    assert same_tree(tiny_models.vlm, tmp_path / "vlm") == []


def test_projector_taken_straight_from_a_vlm_dir_gives_the_same_vlm(tiny_models, decomposed, tmp_path):
    run_stage(compose, compose.Config(), {"vision": decomposed / "vision", "llm": decomposed / "llm",
                                   "projector_from": tiny_models.vlm}, tmp_path)
    assert same_tree(tiny_models.vlm, tmp_path / "vlm") == []


def test_decomposed_parts_load_on_their_own(tiny_models, decomposed):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer, SiglipVisionModel

    original = safetensors_of(tiny_models.vlm)
    vision = SiglipVisionModel.from_pretrained(decomposed / "vision")
    assert vision.config.hidden_size == 64 and vision.config.image_size == 28
    for name, tensor in vision.state_dict().items():
        assert torch.equal(tensor, original[f"vision_tower.{name}"]), name
    assert json.loads((decomposed / "vision" / "preprocessor_config.json").read_text())["size"] == {"height": 28, "width": 28}

    projector = load_file(str(decomposed / "projector" / "projector.safetensors"))
    assert torch.equal(projector["linear_1.weight"], original["multi_modal_projector.linear_1.weight"])
    assert torch.equal(projector["image_newline"], original["image_newline"])
    settings = json.loads((decomposed / "projector" / "projector_config.json").read_text())
    assert (settings["in_features"], settings["hidden"], settings["out_features"]) == (64, 64, 64)
    assert settings["image_grid_pinpoints"] == [[28, 28], [28, 56], [56, 28], [56, 56]]

    # the LLM is a plain causal LM with the VLM's tokenizer and chat template: text-only SFT can start from it
    llm = AutoModelForCausalLM.from_pretrained(decomposed / "llm")
    tokenizer = AutoTokenizer.from_pretrained(decomposed / "llm")
    assert type(llm).__name__ == "LlamaForCausalLM"
    assert torch.equal(llm.lm_head.weight, original["language_model.lm_head.weight"])
    assert torch.equal(llm.model.embed_tokens.weight, original["language_model.model.embed_tokens.weight"])
    batch = tokenizer.apply_chat_template(
        [{"role": "user", "content": "3+4?"}, {"role": "assistant", "content": "\\boxed{7}"}],
        return_dict=True, return_tensors="pt", return_assistant_tokens_mask=True)
    loss = llm(input_ids=batch["input_ids"], labels=batch["input_ids"]).loss
    assert torch.isfinite(loss) and batch["assistant_masks"].sum() > 0


def test_fresh_compose_loads_with_auto_class_and_generates_from_image(tiny_models, fresh_vlm):
    import numpy as np
    from PIL import Image
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(fresh_vlm)
    assert type(model).__name__ == "LlavaOnevisionForConditionalGeneration"
    # the tower and LLM are the given ones, untouched
    vlm_tensors, llm_tensors = safetensors_of(fresh_vlm), safetensors_of(tiny_models.llm)
    for name, tensor in llm_tensors.items():
        assert torch.equal(vlm_tensors[f"language_model.{name}"], tensor), name
    for name, tensor in safetensors_of(tiny_models.vision).items():
        assert torch.equal(vlm_tensors[f"vision_tower.{name}"], tensor), name
    processor = load_processor(fresh_vlm)
    image = Image.fromarray((np.random.RandomState(1).rand(50, 30, 3) * 255).astype("uint8"))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "この表の売上高は？"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=[image], text=[text], return_tensors="pt")
    assert (inputs["input_ids"] == processor.tokenizer.image_token_id).sum() > 4
    out = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > inputs["input_ids"].shape[1]


def test_fresh_projector_is_seeded(tiny_models, fresh_vlm, tmp_path):
    run_stage(compose, compose.Config(seed=3, anyres_max_tiles=2), {"vision": tiny_models.vision, "llm": tiny_models.llm},
                tmp_path / "same")
    assert same_tree(fresh_vlm, tmp_path / "same" / "vlm") == []
    run_stage(compose, compose.Config(seed=4, anyres_max_tiles=2), {"vision": tiny_models.vision, "llm": tiny_models.llm},
                tmp_path / "other")
    a, b = safetensors_of(fresh_vlm), safetensors_of(tmp_path / "other" / "vlm")
    changed = sorted(name for name in a if not torch.equal(a[name], b[name]))
    assert changed == ["image_newline"] + [f"multi_modal_projector.linear_{i}.{p}" for i in (1, 2) for p in ("bias", "weight")]


def test_compose_from_hub_style_siglip_and_a_tied_bfloat16_llm(tiny_models, tmp_path):
    """A hub SigLIP dir is a full SiglipModel (text tower + pooling head); an LLM may tie its embeddings and be bf16."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoTokenizer, SiglipConfig, SiglipModel

    from compass.models.tiny import tiny_text_config, tiny_vision_config

    torch.manual_seed(0)
    vision_config = tiny_vision_config()
    vision_config.vision_use_head = True
    siglip = SiglipModel(SiglipConfig(
        vision_config=vision_config.to_dict(),
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                         vocab_size=64, bos_token_id=1, eos_token_id=2, pad_token_id=0)))
    siglip.save_pretrained(tmp_path / "siglip")
    shutil.copy(tiny_models.vision / "preprocessor_config.json", tmp_path / "siglip")

    tokenizer = AutoTokenizer.from_pretrained(tiny_models.tokenizer)
    text_config = tiny_text_config(tokenizer)
    text_config.tie_word_embeddings = True
    llm = AutoModelForCausalLM.from_config(text_config).to(torch.bfloat16)
    llm.save_pretrained(tmp_path / "llm")
    tokenizer.save_pretrained(tmp_path / "llm")

    metrics = run_stage(compose, compose.Config(), {"vision": tmp_path / "siglip", "llm": tmp_path / "llm",
                                             "projector_from": tiny_models.vlm}, tmp_path / "out")
    assert metrics["dtype"] == "bfloat16"
    assert metrics["casts"] == ["vision tower float32 -> bfloat16", "projector float32 -> bfloat16"]
    vlm = AutoModelForImageTextToText.from_pretrained(tmp_path / "out" / "vlm")
    assert vlm.dtype == torch.bfloat16
    assert vlm.lm_head.weight.data_ptr() == vlm.model.language_model.embed_tokens.weight.data_ptr()
    tower = vlm.model.vision_tower.state_dict()
    assert not any(name.startswith("head.") for name in tower)  # SigLIP's pooling head is not part of the VLM
    source = siglip.vision_model.state_dict()
    assert sorted(tower) == sorted(k for k in source if not k.startswith("head."))
    for name, tensor in tower.items():
        assert torch.equal(tensor, source[name].to(torch.bfloat16)), name


def test_real_model_sizes_from_configs_only():
    """SigLIP2-so400m (1152) -> projector 1152->4096->4096 -> LLM-JP-4-8B (4096): configs, no weights."""
    from transformers import LlamaConfig, SiglipVisionConfig

    so400m = SiglipVisionConfig(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                                image_size=384, patch_size=14)
    llm_jp_8b = LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                            num_key_value_heads=8, vocab_size=99584)
    check_dimensions(so400m, ProjectorShape(1152, 4096, 4096, 4096), llm_jp_8b)

    with pytest.raises(CompassError) as err:  # a 3B-class LLM behind the 8B's projector
        check_dimensions(so400m, ProjectorShape(1152, 4096, 4096, 4096), LlamaConfig(hidden_size=3072))
    assert str(err.value) == (
        "dimension mismatch: projector inner size 4096 != LLM hidden size 3072 (LLaVA-OneVision's projector maps to "
        "the LLM width and stays there); projector output 4096 != LLM hidden size 3072; "
        "image_newline size 4096 != LLM hidden size 3072")
    with pytest.raises(CompassError) as err:  # a CLIP-L (1024) projector in front of SigLIP so400m
        check_dimensions(so400m, ProjectorShape(1024, 4096, 4096, 4096), llm_jp_8b)
    assert str(err.value) == "dimension mismatch: projector input 1024 != vision tower hidden size 1152"
    with pytest.raises(CompassError) as err:  # two feature layers concatenated need a 2304-wide input
        check_dimensions(so400m, ProjectorShape(1152, 4096, 4096, 4096), llm_jp_8b, vision_feature_layer=[-2, -1])
    assert "projector input 1152 != vision tower hidden size 1152 x 2 feature layers" in str(err.value)


def test_compose_refuses_a_mismatched_llm_before_loading_weights(tiny_models, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from compass.models.tiny import tiny_text_config

    tokenizer = AutoTokenizer.from_pretrained(tiny_models.tokenizer)
    text_config = tiny_text_config(tokenizer)
    text_config.hidden_size, text_config.num_hidden_layers = 96, 1
    AutoModelForCausalLM.from_config(text_config).save_pretrained(tmp_path / "llm96")
    tokenizer.save_pretrained(tmp_path / "llm96")
    with pytest.raises(CompassError, match=r"projector output 64 != LLM hidden size 96"):
        run_stage(compose, compose.Config(), {"vision": tiny_models.vision, "llm": tmp_path / "llm96",
                                       "projector_from": tiny_models.vlm}, tmp_path / "out")
    assert not (tmp_path / "out" / "vlm").exists()  # nothing half-written


def test_compose_refusals_name_the_problem(tiny_models, decomposed, tmp_path):
    inputs = {"vision": tiny_models.vision, "llm": tiny_models.llm}
    with pytest.raises(CompassError, match=r"composite model, not a causal LM; run `compass decompose`"):
        run_stage(compose, compose.Config(), {**inputs, "llm": tiny_models.vlm}, tmp_path)
    with pytest.raises(CompassError, match=r"model_type 'llama' is not supported"):
        run_stage(compose, compose.Config(), {**inputs, "vision": tiny_models.llm}, tmp_path)
    with pytest.raises(CompassError, match=r"\['anyres_max_tiles'\] set, but the projector and its settings come from"):
        run_stage(compose, compose.Config(anyres_max_tiles=3), {**inputs, "projector_from": decomposed / "projector"}, tmp_path)
    with pytest.raises(CompassError, match=r"neither a projector dir"):
        run_stage(compose, compose.Config(), {**inputs, "projector_from": tmp_path}, tmp_path / "x")

    no_image = tmp_path / "no_image_llm"
    shutil.copytree(tiny_models.llm, no_image)
    data = json.loads((no_image / "tokenizer.json").read_text())
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] != "<image>"]
    data["model"]["vocab"].pop("<image>")
    (no_image / "tokenizer.json").write_text(json.dumps(data))
    config = json.loads((no_image / "tokenizer_config.json").read_text())
    del config["image_token"], config["model_specific_special_tokens"]["image_token"]
    (no_image / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(CompassError, match=r"tokenizer has no <image> token"):
        run_stage(compose, compose.Config(), {**inputs, "llm": no_image}, tmp_path / "y")

    truncated = tmp_path / "truncated_vision"
    shutil.copytree(tiny_models.vision, truncated)
    from safetensors.torch import load_file, save_file

    weights = load_file(str(truncated / "model.safetensors"))
    weights.pop("post_layernorm.weight")
    save_file(weights, str(truncated / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CompassError, match=r"vision tower .*: 1 weights missing from its files, e.g. \['post_layernorm.weight'\]"):
        run_stage(compose, compose.Config(), {**inputs, "vision": truncated}, tmp_path / "z")


def test_decompose_refuses_a_non_llava_dir(tiny_models, tmp_path):
    with pytest.raises(CompassError, match=r"model_type 'llama', expected 'llava_onevision'"):
        run_stage(decompose, decompose.Config(), {"vlm": tiny_models.llm}, tmp_path)


def test_composed_vlm_is_a_standard_checkpoint(fresh_vlm):
    """processor_config.json names transformers' LlavaOnevisionProcessor (not compass's image-only subclass), and
    transformers alone loads the model in a fresh process without compass imported."""
    import json
    import subprocess
    import sys

    assert json.loads((fresh_vlm / "processor_config.json").read_text())["processor_class"] == "LlavaOnevisionProcessor"
    script = ("import sys; from transformers import AutoModelForImageTextToText, AutoTokenizer; "
              "m = AutoModelForImageTextToText.from_pretrained(sys.argv[1]); AutoTokenizer.from_pretrained(sys.argv[1]); "
              "assert 'compass' not in sys.modules; print(type(m).__name__)")
    done = subprocess.run([sys.executable, "-c", script, str(fresh_vlm)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "LlavaOnevisionForConditionalGeneration"
