"""Tiny offline models: deterministic bytes, single-id special tokens, assistant mask, loading with plain transformers."""
import hashlib
from pathlib import Path

from compass.models.tiny import (
    IMAGE_TOKEN,
    SPECIAL_TOKENS,
    TEXT_TOKENS,
    build_tiny_llm,
    build_tiny_tokenizer,
    build_tiny_vlm,
    load_tokenizer,
)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_tokenizer_is_deterministic_and_seeded(tmp_path, tiny_models):
    again = build_tiny_tokenizer(tmp_path / "again", seed=0)
    assert sha(again / "tokenizer.json") == sha(tiny_models.tokenizer / "tokenizer.json")
    other = build_tiny_tokenizer(tmp_path / "other", seed=1)
    assert sha(other / "tokenizer.json") != sha(tiny_models.tokenizer / "tokenizer.json")


def test_tokenizer_vocab_and_single_id_tokens(tiny_models):
    tok = load_tokenizer(tiny_models.tokenizer)
    assert 2000 <= len(tok) <= 4000
    ids = {t: tok.encode(t, add_special_tokens=False) for t in SPECIAL_TOKENS + TEXT_TOKENS}
    assert all(len(v) == 1 for v in ids.values()), ids
    assert len({v[0] for v in ids.values()}) == len(ids)
    assert tok.image_token == IMAGE_TOKEN and tok.image_token_id == ids[IMAGE_TOKEN][0]
    assert (tok.pad_token, tok.bos_token, tok.eos_token) == ("<pad>", "<s>", "</s>")
    # tags inside running text stay single ids and survive skip_special_tokens decoding
    text = "<Problem>\n売上高は12%増えました。\n</Problem>\n<Answer>\n\\boxed{42}\n</Answer>"
    enc = tok.encode(text, add_special_tokens=False)
    assert ids["<Problem>"][0] in enc and ids["</Answer>"][0] in enc
    assert tok.decode(enc, skip_special_tokens=True) == text


def test_chat_template_renders_images_and_marks_assistant_tokens(tiny_models):
    tok = load_tokenizer(tiny_models.tokenizer)
    messages = [
        {"role": "system", "content": "You solve math."},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "2+3は？"}]},
        {"role": "assistant", "content": "<think>2+3=5</think>\n\\boxed{5}"},
        {"role": "user", "content": "And 4+4?"},
        {"role": "assistant", "content": [{"type": "text", "text": "\\boxed{8}"}]},
    ]
    text = tok.apply_chat_template(messages, tokenize=False)
    assert text == (
        "<s><|im_start|>system\nYou solve math.</s>\n"
        "<|im_start|>user\n<image>\n2+3は？</s>\n"
        "<|im_start|>assistant\n<think>2+3=5</think>\n\\boxed{5}</s>\n"
        "<|im_start|>user\nAnd 4+4?</s>\n"
        "<|im_start|>assistant\n\\boxed{8}</s>\n"
    )
    prompt = tok.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")
    out = tok.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    assert len(ids) == len(mask)
    marked = tok.decode([i for i, m in zip(ids, mask) if m])
    assert marked == "<think>2+3=5</think>\n\\boxed{5}</s>\\boxed{8}</s>"


def test_model_weights_are_deterministic(tmp_path, tiny_models):
    llm = build_tiny_llm(tmp_path / "llm", tiny_models.tokenizer, seed=0)
    vlm = build_tiny_vlm(tmp_path / "vlm", tiny_models.tokenizer, seed=0)
    assert sha(llm / "model.safetensors") == sha(tiny_models.llm / "model.safetensors")
    assert sha(vlm / "model.safetensors") == sha(tiny_models.vlm / "model.safetensors")
    assert (vlm / "processor_config.json").read_bytes() == (tiny_models.vlm / "processor_config.json").read_bytes()
    other = build_tiny_llm(tmp_path / "llm1", tiny_models.tokenizer, seed=1)
    assert sha(other / "model.safetensors") != sha(llm / "model.safetensors")


def test_llm_loads_and_generates(tiny_models):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_models.llm)
    tok = AutoTokenizer.from_pretrained(tiny_models.llm)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.hidden_size == 64 and model.config.num_hidden_layers == 2
    assert model.config.vocab_size == len(tok)
    ids = tok.apply_chat_template([{"role": "user", "content": "1+1?"}], add_generation_prompt=True, return_tensors="pt",
                                  return_dict=True)
    out = model.generate(**ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]
    assert torch.equal(out, model.generate(**ids, max_new_tokens=5, do_sample=False))  # greedy is reproducible
    assert torch.isfinite(model(**ids).logits).all()


def test_vlm_loads_with_auto_class_and_generates_from_image(tiny_models):
    import numpy as np
    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText

    from compass.models.vlm import ImageOnlyOnevisionProcessor, load_processor

    model = AutoModelForImageTextToText.from_pretrained(tiny_models.vlm)
    assert type(model).__name__ == "LlavaOnevisionForConditionalGeneration"
    processor = load_processor(tiny_models.vlm)
    assert isinstance(processor, ImageOnlyOnevisionProcessor)
    assert type(processor.image_processor).__name__ == "LlavaOnevisionImageProcessorPil"
    image = Image.fromarray((np.random.RandomState(0).rand(40, 60, 3) * 255).astype("uint8"))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is on the page?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=[image], text=[text], return_tensors="pt")
    n_image = (inputs["input_ids"] == processor.tokenizer.image_token_id).sum().item()
    assert n_image > 4  # <image> expanded to AnyRes patch tokens (base view + tiles + newlines)
    out = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    assert out.shape[1] > inputs["input_ids"].shape[1]
    # the image reaches the logits: a different image changes them
    with torch.no_grad():
        a = model(**inputs).logits[0, -1]
        other = processor(images=[Image.new("RGB", (60, 40), "white")], text=[text], return_tensors="pt")
        b = model(**other).logits[0, -1]
    assert not torch.allclose(a, b)
