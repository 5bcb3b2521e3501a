"""Tiny offline models, built locally from a seed (no hub): a byte-level BPE tokenizer, a Llama LLM and a
LLaVA-OneVision VLM (SigLIP vision tower -> 2-layer GELU MLP projector -> Llama). Every directory is an
ordinary Hugging Face directory that loads with `from_pretrained`; the same seed gives the same bytes.
"""
from __future__ import annotations

import random
from pathlib import Path

from compass.errors import CompassError
from compass.models.tiny_corpus import corpus_lines
from compass.vocab import IMAGE_TOKEN, OUTPUT_MARKERS, VIDEO_TOKEN

# --- special tokens ----------------------------------------------------------------------------------
BOS, EOS, PAD = "<s>", "</s>", "<pad>"
TURN_START = "<|im_start|>"
# Markers that the model writes in its answers: added tokens (one id each) but not "special", so that
# decode(skip_special_tokens=True) keeps them and answer extraction still sees <Answer> and </think>.
TEXT_TOKENS = list(OUTPUT_MARKERS)
SPECIAL_TOKENS = [PAD, BOS, EOS, TURN_START, IMAGE_TOKEN, VIDEO_TOKEN]

TOKENIZER_VOCAB = 3000

# Content may be a string or a list of parts ({"type": "text", "text": ...} / {"type": "image"}); an image
# part becomes one <image> token that the processor later expands to the image's patch tokens.
# Assistant turns sit inside {% generation %} so `return_assistant_tokens_mask` (TRL assistant-only loss)
# marks exactly the assistant's words and its closing </s>.
CHAT_TEMPLATE = (
    "{%- macro render(content) -%}"
    "{%- if content is string -%}{{ content }}"
    "{%- else -%}{%- for part in content -%}"
    "{%- if part['type'] == 'image' -%}" + IMAGE_TOKEN + "{{ '\\n' }}"
    "{%- elif part['type'] == 'text' -%}{{ part['text'] }}"
    "{%- else -%}{{ raise_exception('unsupported content part type: ' ~ part['type']) }}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{%- endmacro -%}"
    "{{ bos_token }}"
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] -%}"
    "{{ raise_exception('unsupported role: ' ~ message['role']) }}{%- endif -%}"
    + TURN_START + "{{ message['role'] + '\\n' }}"
    "{%- if message['role'] == 'assistant' -%}"
    "{% generation %}{{ render(message['content']) }}{{ eos_token }}{% endgeneration %}"
    "{%- else -%}{{ render(message['content']) }}{{ eos_token }}{%- endif -%}{{ '\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}" + TURN_START + "{{ 'assistant\\n' }}{%- endif -%}"
)


def set_torch_seed(seed: int) -> None:
    import torch

    torch.manual_seed(seed)
    random.seed(seed)


def build_tiny_tokenizer(out_dir: Path, seed: int = 0, vocab_size: int = TOKENIZER_VOCAB) -> Path:
    """Train a byte-level BPE on the built-in corpus and save it as a PreTrainedTokenizerFast directory."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    out_dir = Path(out_dir)
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS + TEXT_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(corpus_lines(seed), trainer=trainer)
    # The XML tags were trained as reserved ids; registering them as added (non-special) tokens makes the
    # tokenizer split them out of running text as single ids.
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in TEXT_TOKENS])

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=None,
        extra_special_tokens={"image_token": IMAGE_TOKEN, "video_token": VIDEO_TOKEN},
        chat_template=CHAT_TEMPLATE,
        model_max_length=4096,
        padding_side="right",
    )
    tokenizer.save_pretrained(out_dir)
    return out_dir


def load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


# --- models --------------------------------------------------------------------------------------------
HIDDEN = 64
LAYERS = 2
HEADS = 4
IMAGE_SIZE = 28  # px; with patch 14 a tile is 2x2 = 4 patch tokens
PATCH = 14
# AnyRes: a page image is cut into up to 2x2 tiles of IMAGE_SIZE plus one downscaled base view.
GRID_PINPOINTS = [[IMAGE_SIZE * h, IMAGE_SIZE * w] for h in (1, 2) for w in (1, 2)]
# SigLIP's normalisation (the image is scaled to [-1, 1]).
IMAGE_MEAN = [0.5, 0.5, 0.5]
IMAGE_STD = [0.5, 0.5, 0.5]


def tiny_text_config(tokenizer):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN,
        intermediate_size=2 * HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=HEADS // 2,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def tiny_vision_config():
    from transformers import SiglipVisionConfig

    return SiglipVisionConfig(
        hidden_size=HIDDEN,
        intermediate_size=2 * HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        image_size=IMAGE_SIZE,
        patch_size=PATCH,
        vision_use_head=False,  # LLaVA takes patch features; SigLIP's pooling head is unused
    )


def tiny_image_processor():
    """The LLaVA-OneVision AnyRes image processor, PIL backend (no torchvision)."""
    from transformers import LlavaOnevisionImageProcessorPil

    return LlavaOnevisionImageProcessorPil(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_grid_pinpoints=GRID_PINPOINTS,
        image_mean=IMAGE_MEAN,
        image_std=IMAGE_STD,
    )


def _save_model(model, out_dir: Path) -> None:
    # One shard, safetensors only: the bytes depend on the weights alone.
    model.save_pretrained(str(out_dir), safe_serialization=True, max_shard_size="10GB")


def build_tiny_llm(out_dir: Path, tokenizer_dir: Path, seed: int = 0) -> Path:
    """A 2-layer, hidden-64 LlamaForCausalLM with the tiny tokenizer, initialised from `seed`."""
    import torch
    from transformers import LlamaForCausalLM

    out_dir = Path(out_dir)
    tokenizer = load_tokenizer(tokenizer_dir)
    set_torch_seed(seed)
    with torch.device("cpu"):
        model = LlamaForCausalLM(tiny_text_config(tokenizer))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    _save_model(model, out_dir)
    tokenizer.save_pretrained(str(out_dir))
    return out_dir


def build_tiny_vision(out_dir: Path, seed: int = 0) -> Path:
    """A standalone SigLIP vision tower directory (SiglipVisionModel + SigLIP image processor)."""
    import torch
    from transformers import SiglipImageProcessorPil, SiglipVisionModel

    out_dir = Path(out_dir)
    set_torch_seed(seed)
    with torch.device("cpu"):
        model = SiglipVisionModel(tiny_vision_config())
    _save_model(model, out_dir)
    SiglipImageProcessorPil(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, image_mean=IMAGE_MEAN, image_std=IMAGE_STD
    ).save_pretrained(str(out_dir))
    return out_dir


def tiny_vlm_config(tokenizer):
    from transformers import LlavaOnevisionConfig

    if tokenizer.image_token_id is None:
        raise CompassError(f"tokenizer has no {IMAGE_TOKEN} token; build it with build_tiny_tokenizer")
    return LlavaOnevisionConfig(
        vision_config=tiny_vision_config(),
        text_config=tiny_text_config(tokenizer),
        image_token_index=tokenizer.image_token_id,
        video_token_index=tokenizer.video_token_id,
        projector_hidden_act="gelu",
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        image_grid_pinpoints=GRID_PINPOINTS,
        vision_aspect_ratio="anyres_max_9",
        tie_word_embeddings=False,
    )


def build_tiny_vlm(out_dir: Path, tokenizer_dir: Path, seed: int = 0) -> Path:
    """A tiny LLaVA-OneVision (SigLIP -> Linear/GELU/Linear -> Llama) with its processor, from `seed`."""
    import torch
    from transformers import LlavaOnevisionForConditionalGeneration

    from compass.models.processors import ImageOnlyOnevisionProcessor, save_processor

    out_dir = Path(out_dir)
    tokenizer = load_tokenizer(tokenizer_dir)
    config = tiny_vlm_config(tokenizer)
    set_torch_seed(seed)
    with torch.device("cpu"):
        model = LlavaOnevisionForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    _save_model(model, out_dir)
    processor = ImageOnlyOnevisionProcessor(
        image_processor=tiny_image_processor(),
        tokenizer=tokenizer,
        num_image_tokens=(IMAGE_SIZE // PATCH) ** 2,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        chat_template=tokenizer.chat_template,
        image_token=IMAGE_TOKEN,
        vision_aspect_ratio=config.vision_aspect_ratio,
    )
    save_processor(processor, out_dir, "llava_onevision")
    return out_dir
