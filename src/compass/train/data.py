"""Records -> training datasets.

SFT takes Trace records (text; `images` optional) or DocExample records (page images + question). Text
examples are tokenized here with the model's chat template: labels are the assistant tokens (the
template's {% generation %} span), everything else -100, cut to max_length. Tokenizing here rather than
inside TRL gives every batching mode (padded, padding-free, packing) the same truncated sequences, which
padding-free needs (TRL refuses a max_length there). Vision examples stay messages + images: TRL's
vision collator renders and masks them per batch.

Images: a user turn may mark where its images go with the literal `<image>` (one per image, in order);
without markers all images of the record go before the first user text. Relative image paths are
resolved against the directory of the JSONL file they come from.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from compass.errors import CompassError
from compass.io import iter_jsonl, jsonl_files
from compass.records import DocExample, Pair, Trace
from compass.vocab import IMAGE_TOKEN as IMAGE_MARK



@dataclass
class SftExample:
    id: str
    messages: list[dict]  # role/content, content a string
    images: list[Path] = field(default_factory=list)


def read_sft_examples(path: Path) -> list[SftExample]:
    """Trace or DocExample records (a JSONL file or a directory of shards; one record type per input)."""
    examples: list[SftExample] = []
    kind: type | None = None
    for file in jsonl_files(path):
        for lineno, raw in _numbered_lines(file):
            this = DocExample if "question_id" in raw else Trace
            if kind is None:
                kind = this
            elif this is not kind:
                raise CompassError(f"{file}:{lineno}: a {this.__name__} record among {kind.__name__} records; "
                                   "give one record type per input")
            record = _validate(this, raw, file, lineno)
            images = [_resolve_image(file, image, record.id) for image in record.images]
            messages = [m.model_dump() for m in record.messages]
            if not any(m["role"] == "assistant" for m in messages):
                raise CompassError(f"{file}:{lineno}: record {record.id!r} has no assistant message to train on")
            examples.append(SftExample(id=record.id, messages=messages, images=images))
    if not examples:
        raise CompassError(f"no records in {path}")
    return examples


def _numbered_lines(file: Path):
    with open(file, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as err:
                raise CompassError(f"{file}:{lineno}: not valid JSON ({err.msg} at column {err.colno})") from None


def _validate(model, raw: dict, file: Path, lineno: int):
    from pydantic import ValidationError

    try:
        return model.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "<record>"
        raise CompassError(f"{file}:{lineno}: field '{where}': {first['msg']} (expected a {model.__name__} record)") from None


def _resolve_image(jsonl_file: Path, image: str, record_id: str) -> Path:
    path = Path(image)
    if not path.is_absolute():
        path = jsonl_file.parent / path
    if not path.is_file():
        raise CompassError(f"{jsonl_file}: record {record_id!r}: image not found: {path}")
    return path


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
    pairs = list(iter_jsonl(path, Pair))
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
