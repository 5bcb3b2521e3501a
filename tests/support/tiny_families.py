"""Tiny random-weight models of every family compass supports, built from transformers config classes (nothing
downloaded), each with the family's real chat template and special tokens. Under 1M parameters each.

Templates: TRL ships the families' published templates (trl/chat_templates/*.jinja); Mistral-Small-3.1's is not
among them and comes from tests/fixtures/chat_templates (its published tokenizer config, Apache-2.0). The
tokenizer itself is a small byte-level BPE trained on compass's tiny corpus with the family's special tokens added
as single ids, so the templates render and tokenize as they do on the real models.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import trl

from compass.models.processors import save_processor
from compass.models.tiny_corpus import corpus_lines
from compass.vocab import OUTPUT_MARKERS

TRL_TEMPLATES = Path(trl.__file__).parent / "chat_templates"
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "chat_templates"
MISTRAL_TEMPLATE = FIXTURES / "mistral_small_3_1.jinja"
VOCAB = 700
H = 32  # hidden size of every tiny model


def trl_template(name: str) -> str:
    return (TRL_TEMPLATES / f"{name}.jinja").read_text(encoding="utf-8")


@dataclass(frozen=True)
class TokenizerSpec:
    template: str
    bos: str | None
    eos: str
    pad: str
    specials: list[str]  # added as special single-id tokens (beside bos/eos/pad)
    extra: dict[str, str] = field(default_factory=dict)  # extra_special_tokens (image_token, ...)
    unk: str | None = None


QWEN_SPECIALS = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
GEMMA_SPECIALS = ["<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>", "<image_soft_token>"]
MISTRAL_SPECIALS = ["[INST]", "[/INST]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[IMG]", "[IMG_BREAK]", "[IMG_END]"]
IDEFICS_SPECIALS = (["<|im_start|>", "<end_of_utterance>", "<fake_token_around_image>", "<image>", "<global-img>"]
                    + [f"<row_{r}_col_{c}>" for r in range(1, 4) for c in range(1, 4)])
LLAMA3_SPECIALS = ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]


def qwen_spec(template: str) -> TokenizerSpec:
    return TokenizerSpec(template, None, "<|im_end|>", "<|endoftext|>", QWEN_SPECIALS,
                         {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
                          "vision_bos_token": "<|vision_start|>", "vision_eos_token": "<|vision_end|>"})


def gemma_spec() -> TokenizerSpec:
    return TokenizerSpec(trl_template("gemma3"), "<bos>", "<eos>", "<pad>", GEMMA_SPECIALS,
                         {"image_token": "<image_soft_token>", "boi_token": "<start_of_image>",
                          "eoi_token": "<end_of_image>"})


def mistral_spec() -> TokenizerSpec:
    return TokenizerSpec(MISTRAL_TEMPLATE.read_text(encoding="utf-8"), "<s>", "</s>", "<pad>", MISTRAL_SPECIALS,
                         {"image_token": "[IMG]"}, unk="<unk>")


def idefics_spec(template: str, bos: str | None) -> TokenizerSpec:
    return TokenizerSpec(template, bos, "<end_of_utterance>", "<|endoftext|>", IDEFICS_SPECIALS,
                         {"image_token": "<image>", "fake_image_token": "<fake_token_around_image>",
                          "global_image_token": "<global-img>", "end_of_utterance_token": "<end_of_utterance>"})


def llama3_spec() -> TokenizerSpec:
    return TokenizerSpec(trl_template("llama3"), "<|begin_of_text|>", "<|eot_id|>", "<|finetune_right_pad_id|>",
                         LLAMA3_SPECIALS)


def build_tokenizer(spec: TokenizerSpec, seed: int = 0):
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    named = [t for t in (spec.pad, spec.bos, spec.eos, spec.unk) if t is not None]
    specials = list(dict.fromkeys(named + spec.specials))
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, min_frequency=2, special_tokens=specials + list(OUTPUT_MARKERS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(corpus_lines(seed), trainer=trainer)
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in OUTPUT_MARKERS])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=spec.bos, eos_token=spec.eos, pad_token=spec.pad, unk_token=spec.unk,
        extra_special_tokens=spec.extra, chat_template=spec.template, model_max_length=4096, padding_side="right")


def _text(tok, **overrides) -> dict:
    base = dict(vocab_size=len(tok), hidden_size=H, intermediate_size=2 * H, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=4096,
                bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    base.update(overrides)
    return base


def _save(model, tok, out: Path, eos_ids: list[int] | None = None) -> None:
    import torch  # noqa: F401

    model.generation_config.pad_token_id = tok.pad_token_id
    if eos_ids is not None:
        model.generation_config.eos_token_id = eos_ids
    model.save_pretrained(str(out), safe_serialization=True)


# --- VLM families -------------------------------------------------------------------------------------


def build_qwen3_vl(out: Path, seed: int = 0) -> Path:
    from transformers import Qwen2VLImageProcessorPil, Qwen3VLConfig, Qwen3VLForConditionalGeneration

    from compass.models.processors import ImageOnlyQwen3VLProcessor

    tok = build_tokenizer(qwen_spec(trl_template("qwen3_vl")), seed)
    # 3 text layers: deepstack features join after text layers 0 and 1; after the last one they could only reach
    # the image positions' own logits (no loss there), so their merger would never train
    text = _text(tok, num_hidden_layers=3, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                            "mrope_section": [1, 1, 2], "mrope_interleaved": True})
    config = Qwen3VLConfig(
        text_config=text,
        vision_config=dict(depth=2, hidden_size=H, intermediate_size=2 * H, num_heads=4, out_hidden_size=H,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=16,
                           deepstack_visual_indexes=[0, 1]),
        image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tok.convert_tokens_to_ids("<|video_pad|>"),
        vision_start_token_id=tok.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tok.convert_tokens_to_ids("<|vision_end|>"),
        tie_word_embeddings=False)
    import torch

    torch.manual_seed(seed)
    model = Qwen3VLForConditionalGeneration(config)
    _save(model, tok, out, [tok.eos_token_id, tok.pad_token_id])
    image_processor = Qwen2VLImageProcessorPil(patch_size=14, merge_size=2, temporal_patch_size=2,
                                               size={"shortest_edge": 28 * 28, "longest_edge": 56 * 56})
    save_processor(ImageOnlyQwen3VLProcessor(image_processor=image_processor, tokenizer=tok,
                                             chat_template=tok.chat_template), out, "qwen3_vl")
    return out


def build_qwen2_5_vl(out: Path, seed: int = 0) -> Path:
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLImageProcessorPil

    from compass.models.processors import ImageOnlyQwen2_5_VLProcessor

    tok = build_tokenizer(qwen_spec(trl_template("qwen2_5_vl")), seed)
    text = _text(tok, rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [1, 1, 2]})
    config = Qwen2_5_VLConfig(
        text_config=text,
        vision_config=dict(depth=2, hidden_size=H, intermediate_size=2 * H, num_heads=4, out_hidden_size=H,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, fullatt_block_indexes=[1],
                           window_size=56),
        image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tok.convert_tokens_to_ids("<|video_pad|>"),
        vision_start_token_id=tok.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tok.convert_tokens_to_ids("<|vision_end|>"),
        tie_word_embeddings=False)
    import torch

    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config)
    _save(model, tok, out, [tok.eos_token_id, tok.pad_token_id])
    image_processor = Qwen2VLImageProcessorPil(patch_size=14, merge_size=2, temporal_patch_size=2,
                                               size={"shortest_edge": 28 * 28, "longest_edge": 56 * 56})
    save_processor(ImageOnlyQwen2_5_VLProcessor(image_processor=image_processor, tokenizer=tok,
                                                chat_template=tok.chat_template), out, "qwen2_5_vl")
    return out


def build_mistral3(out: Path, seed: int = 0) -> Path:
    import torch
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration, PixtralImageProcessorPil

    from compass.models.processors import ImageOnlyPixtralProcessor

    tok = build_tokenizer(mistral_spec(), seed)
    config = Mistral3Config(
        text_config=dict(model_type="mistral", **_text(tok), tie_word_embeddings=False),
        vision_config=dict(model_type="pixtral", hidden_size=H, intermediate_size=2 * H, num_hidden_layers=2,
                           num_attention_heads=4, head_dim=8, image_size=56, patch_size=14),
        image_token_index=tok.convert_tokens_to_ids("[IMG]"), spatial_merge_size=2, vision_feature_layer=-1,
        projector_hidden_act="gelu", multimodal_projector_bias=False, tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = Mistral3ForConditionalGeneration(config)
    _save(model, tok, out)
    image_processor = PixtralImageProcessorPil(size={"longest_edge": 56}, patch_size=14)
    save_processor(ImageOnlyPixtralProcessor(image_processor=image_processor, tokenizer=tok, patch_size=14,
                                    spatial_merge_size=2, chat_template=tok.chat_template), out, "mistral3")
    return out


def build_gemma3(out: Path, seed: int = 0) -> Path:
    import torch
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3ImageProcessorPil, Gemma3Processor

    tok = build_tokenizer(gemma_spec(), seed)
    config = Gemma3Config(
        text_config=_text(tok, sliding_window=64, tie_word_embeddings=True),
        vision_config=dict(hidden_size=H, intermediate_size=2 * H, num_hidden_layers=2, num_attention_heads=4,
                           image_size=56, patch_size=14, vision_use_head=False),
        mm_tokens_per_image=4, image_token_index=tok.convert_tokens_to_ids("<image_soft_token>"),
        boi_token_index=tok.convert_tokens_to_ids("<start_of_image>"),
        eoi_token_index=tok.convert_tokens_to_ids("<end_of_image>"))
    torch.manual_seed(seed)
    model = Gemma3ForConditionalGeneration(config)
    # Gemma3 ends a turn with <end_of_turn>, not the tokenizer's <eos>: the hub generation config lists both
    _save(model, tok, out, [tok.eos_token_id, tok.convert_tokens_to_ids("<end_of_turn>")])
    image_processor = Gemma3ImageProcessorPil(size={"height": 56, "width": 56})
    save_processor(Gemma3Processor(image_processor=image_processor, tokenizer=tok, image_seq_length=4,
                                   chat_template=tok.chat_template), out, "gemma3")
    return out


def build_idefics3(out: Path, seed: int = 0) -> Path:
    import torch
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessorPil
    from transformers import Idefics3Processor

    tok = build_tokenizer(idefics_spec(trl_template("idefics3"), "<|begin_of_text|>"), seed)
    config = Idefics3Config(
        text_config=dict(model_type="llama", **_text(tok), tie_word_embeddings=False),
        vision_config=dict(hidden_size=H, intermediate_size=2 * H, num_hidden_layers=2, num_attention_heads=4,
                           image_size=56, patch_size=14),
        scale_factor=2, image_token_id=tok.convert_tokens_to_ids("<image>"), tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration(config)
    _save(model, tok, out)
    image_processor = Idefics3ImageProcessorPil(size={"longest_edge": 112}, max_image_size={"longest_edge": 56},
                                                do_image_splitting=True)
    # image_seq_len = (56 / 14)^2 / scale_factor^2 = 4 tokens per tile
    save_processor(Idefics3Processor(image_processor=image_processor, tokenizer=tok, image_seq_len=4,
                                     chat_template=tok.chat_template), out, "idefics3")
    return out


def build_smolvlm(out: Path, seed: int = 0) -> Path:
    """SmolVLM (Idefics3's layout, its own processor and template); its processor needs num2words
    (compass-vlm[smolvlm])."""
    import torch
    from transformers import SmolVLMConfig, SmolVLMForConditionalGeneration, SmolVLMImageProcessorPil

    from compass.models.processors import ImageOnlySmolVLMProcessor

    tok = build_tokenizer(idefics_spec(trl_template("smolvlm"), "<|im_start|>"), seed)
    config = SmolVLMConfig(
        text_config=dict(model_type="llama", **_text(tok), tie_word_embeddings=False),
        vision_config=dict(hidden_size=H, intermediate_size=2 * H, num_hidden_layers=2, num_attention_heads=4,
                           image_size=56, patch_size=14),
        scale_factor=2, image_token_id=tok.convert_tokens_to_ids("<image>"), tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = SmolVLMForConditionalGeneration(config)
    _save(model, tok, out)
    image_processor = SmolVLMImageProcessorPil(size={"longest_edge": 112}, max_image_size={"longest_edge": 56},
                                               do_image_splitting=True)
    # image_seq_len = (56 / 14)^2 / scale_factor^2 = 4 tokens per tile
    save_processor(ImageOnlySmolVLMProcessor(image_processor=image_processor, tokenizer=tok, image_seq_len=4,
                                             chat_template=tok.chat_template), out, "smolvlm")
    return out


def build_llava_onevision(out: Path, seed: int = 0) -> Path:
    """compass's own tiny OneVision (its tokenizer's template has generation markers)."""
    from compass.models.tiny import build_tiny_tokenizer, build_tiny_vlm

    tokenizer_dir = build_tiny_tokenizer(out.parent / f"{out.name}-tokenizer", seed=seed)
    return build_tiny_vlm(out, tokenizer_dir, seed=seed)


VLM_BUILDERS = {
    "llava_onevision": build_llava_onevision,
    "mistral3": build_mistral3,
    "gemma3": build_gemma3,
    "qwen3_vl": build_qwen3_vl,
    "qwen2_5_vl": build_qwen2_5_vl,
    "idefics3": build_idefics3,
    "smolvlm": build_smolvlm,
}


# --- text LLMs with real templates ---------------------------------------------------------------------


def build_text_llm(family: str, out: Path, seed: int = 0) -> Path:
    import torch
    import transformers as T

    if family == "qwen3":
        tok = build_tokenizer(qwen_spec(trl_template("qwen3")), seed)
        config, cls, eos = T.Qwen3Config(**_text(tok), tie_word_embeddings=True), T.Qwen3ForCausalLM, None
    elif family == "mistral":
        tok = build_tokenizer(mistral_spec(), seed)
        config, cls, eos = T.MistralConfig(**_text(tok), tie_word_embeddings=False), T.MistralForCausalLM, None
    elif family == "gemma":
        tok = build_tokenizer(gemma_spec(), seed)
        config = T.Gemma3TextConfig(**_text(tok, sliding_window=64), tie_word_embeddings=True)
        cls, eos = T.Gemma3ForCausalLM, [tok.eos_token_id, tok.convert_tokens_to_ids("<end_of_turn>")]
    elif family == "llama":
        tok = build_tokenizer(llama3_spec(), seed)
        config, cls, eos = T.LlamaConfig(**_text(tok), tie_word_embeddings=False), T.LlamaForCausalLM, None
    else:
        raise ValueError(f"no tiny text family {family!r}")
    torch.manual_seed(seed)
    model = cls(config)
    _save(model, tok, out, eos)
    tok.save_pretrained(str(out))
    return out


TEXT_FAMILIES = ("qwen3", "mistral", "gemma", "llama")


class FamilyModels:
    """Builds each family's tiny model once (seed 0) under `root`, on first request."""

    def __init__(self, root: Path):
        self.root = root
        self.built: dict[str, Path] = {}

    def __call__(self, name: str) -> Path:
        if name not in self.built:
            import torch

            torch.set_num_threads(1)
            out = self.root / name
            if name in VLM_BUILDERS:
                self.built[name] = VLM_BUILDERS[name](out)
            else:
                self.built[name] = build_text_llm(name, out)
        return self.built[name]


def marked_mistral_template() -> str:
    """What a user passes as --chat-template for Mistral-Small-3.1: its real template with the assistant's content
    and closing </s> wrapped in generation markers, and one fix: the published template tests whether the system
    *message* is a string (never true) instead of its content, so a plain-string system prompt fails to render."""
    text = MISTRAL_TEMPLATE.read_text(encoding="utf-8")
    plain = "{{- message['content'] + eos_token }}"
    parts = "{{- message['content'][0]['text'] + eos_token }}"
    system_check = "{%- if messages[0] is string %}"
    assert text.count(plain) == 1 and text.count(parts) == 1 and text.count(system_check) == 1
    return (text.replace(plain, "{% generation %}" + plain + "{% endgeneration %}")
                .replace(parts, "{% generation %}" + parts + "{% endgeneration %}")
                .replace(system_check, "{%- if messages[0]['content'] is string %}"))
