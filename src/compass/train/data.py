"""Records -> training datasets.

SFT takes any format of compass.data.sft_formats (TRL messages / prompt-completion, with images for a VLM;
ShareGPT; alpaca; compass Trace or DocExample records), detected from the first row or given, from a file, a
directory of shards, or several datasets mixed with weights. Text examples are tokenized here with the model's
chat template: labels are the assistant tokens (the template's {% generation %} span), everything else -100,
cut to max_length. Tokenizing here rather than inside TRL gives every batching mode (padded, padding-free,
packing) the same truncated sequences, which padding-free needs (TRL refuses a max_length there). Vision
examples stay messages + images: TRL's vision collator renders and masks them per batch.

Images: a user turn may mark where its images go with the literal `<image>` (one per image, in order);
without markers all images of the record go before the first user text. Relative image paths are
resolved against the directory of the JSONL file they come from.

DPO takes Pair records or any preference format of compass.data.preference (converted on reading).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compass.data.sft_formats import IMAGE_MARK, DataSource, SftExample, convert_sft_rows, data_files, load_mix, load_rows
from compass.errors import CompassError
from compass.records import Pair

__all__ = ["IMAGE_MARK", "SftExample", "read_sft_examples", "sft_examples", "read_pairs", "dpo_dataset"]


def read_sft_examples(path: Path, data_format: str = "auto", image_dir: Path | None = None) -> list[SftExample]:
    """SFT examples of one input: a JSONL/parquet file or a directory of shards, every row in one format."""
    examples, _ = _read_input(Path(path), data_format, image_dir)
    return examples


def _read_input(path: Path, data_format: str, image_dir: Path | None) -> tuple[list[SftExample], str]:
    """Every file in the format of the first row (or the one given); example ids are '<file stem>/<row>'."""
    files = data_files(path)
    examples: list[SftExample] = []
    fmt = data_format
    for file in files:
        rows = load_rows(file).rows
        if rows:
            converted, fmt = convert_sft_rows(rows, fmt, id_prefix=file.stem, image_dir=image_dir)
            examples.extend(converted)
    if not examples:
        raise CompassError(f"no records in {path}")
    return examples, fmt


def sft_examples(data: Path | None, data_format: str, mix: Sequence[DataSource], seed: int,
                 image_dir: Path | None) -> tuple[list[SftExample], dict[str, Any]]:
    """The SFT stage's examples and what they came from: the `data` input alone, or the `mix` (whose relative
    paths are read from the `data` input directory); per-source counts, formats, file hashes and hub revisions."""
    if mix:
        if data_format != "auto":
            raise CompassError(f"data_format {data_format!r} applies to the `data` input; with `mix` give each "
                               "dataset its own `format`")
        examples, reports = load_mix(mix, data, seed, image_dir)
        return examples, {"sources": reports}
    if data is None:
        raise CompassError("give the `data` input (a file or directory of SFT rows) or a `mix` of datasets")
    examples, fmt = _read_input(data, data_format, image_dir)
    return examples, {"data_format": fmt}


# --- text SFT ------------------------------------------------------------------------------------------


@dataclass
class TokenizedSft:
    dataset: object  # datasets.Dataset with input_ids, labels
    examples: int
    truncated: int  # examples cut at max_length (still trained on what is left)
    dropped: int  # examples with no assistant token left after the cut
    tokens: int
    assistant_tokens: int


def tokenize_sft(tokenizer, examples: list[SftExample], max_length: int) -> TokenizedSft:
    """Chat-template tokenization with assistant-only labels, truncated to max_length (start kept)."""
    from datasets import Dataset

    input_ids, labels = [], []
    truncated = dropped = tokens = assistant = 0
    for example in examples:
        if example.images:
            raise CompassError(f"record {example.id!r} has images but the model is a text-only LLM; "
                               "train the VLM directory, or give text records")
        encoded = tokenizer.apply_chat_template(
            example.messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        ids, mask = encoded["input_ids"], encoded["assistant_masks"]
        if 1 not in mask:
            raise CompassError(
                f"record {example.id!r}: the chat template marks no assistant token ({{% generation %}} markers "
                "missing?), so assistant-only loss has nothing to learn")
        if len(ids) > max_length:
            truncated += 1
            ids, mask = ids[:max_length], mask[:max_length]
            if 1 not in mask:
                dropped += 1
                continue
        input_ids.append(ids)
        labels.append([t if m else -100 for t, m in zip(ids, mask, strict=True)])
        tokens += len(ids)
        assistant += sum(mask)
    if not input_ids:
        raise CompassError(f"every example lost its answer at max_length {max_length}; raise max_length")
    dataset = Dataset.from_dict({"input_ids": input_ids, "labels": labels})
    return TokenizedSft(dataset, len(input_ids), truncated, dropped, tokens, assistant)


# --- vision SFT ----------------------------------------------------------------------------------------


def vision_messages(example: SftExample) -> list[dict]:
    """Messages with structured content: text parts and {"type": "image"} placeholders where images go."""
    marks = sum(m["content"].count(IMAGE_MARK) for m in example.messages if m["role"] == "user")
    if marks and marks != len(example.images):
        raise CompassError(f"record {example.id!r}: {marks} {IMAGE_MARK} marks in user turns but "
                           f"{len(example.images)} images")
    placed = False
    out = []
    for message in example.messages:
        content = message["content"]
        if message["role"] != "user":
            parts = [{"type": "text", "text": content}]
        elif marks:
            parts = []
            for index, piece in enumerate(content.split(IMAGE_MARK)):
                if index:
                    parts.append({"type": "image", "text": None})
                if piece:
                    parts.append({"type": "text", "text": piece})
        elif not placed:
            parts = [{"type": "image", "text": None} for _ in example.images] + [{"type": "text", "text": content}]
            placed = True
        else:
            parts = [{"type": "text", "text": content}]
        out.append({"role": message["role"], "content": parts})
    return out


def vision_sft_dataset(examples: list[SftExample]):
    """messages + images (decoded to PIL by the datasets Image feature when a batch is drawn)."""
    from datasets import Dataset, Image, List

    rows = {"messages": [vision_messages(e) for e in examples], "images": [[str(p) for p in e.images] for e in examples]}
    if not any(rows["images"]):
        raise CompassError("the model is a VLM but no record has images; decompose the VLM and train its LLM on text records")
    return Dataset.from_dict(rows).cast_column("images", List(Image()))


# --- DPO -----------------------------------------------------------------------------------------------


def read_pairs(path: Path) -> list[Pair]:
    """Pair records, or preference rows in any format of compass.data.preference (converted on reading; rows that
    give no pair, such as UltraFeedback ties, are left out)."""
    from compass.data.preference import read_preference_pairs

    pairs, _ = read_preference_pairs(path)
    if not pairs:
        raise CompassError(f"no Pair records in {path}")
    return pairs


def dpo_dataset(pairs: list[Pair]):
    """Conversational preference rows: TRL renders prompt (+ generation prompt) and each answer with the template."""
    from datasets import Dataset

    return Dataset.from_dict({
        "prompt": [[m.model_dump() for m in p.prompt] for p in pairs],
        "chosen": [[{"role": "assistant", "content": p.chosen}] for p in pairs],
        "rejected": [[{"role": "assistant", "content": p.rejected}] for p in pairs],
    })
