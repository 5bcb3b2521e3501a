"""Vision SFT examples sized to `max_length` before training: TRL's collator cannot cut a sequence inside its image
tokens (the processor refuses: image features and placeholders no longer match), and a long document's pages are
many (Qwen-VL at 1400 px: about 1.3k tokens a page), so each example's page images are capped here, with exact
token counts from the model's own processor, as the collator will encode the example.

The policy is compass.models.processors.fit_images, the one local generation and mmlongbench use: first every page
at a lower resolution (long side halving toward MIN_LONG_SIDE), then, if still too long, fewer pages, kept in
evidence order. Evidence order: the pages the answer's trace cites ("Page N:" in the assistant turn, the trace's
order, most relevant first), then the other pages in document order; a dropped page goes with its "Page N:" label.
Records without page labels keep their first images. An example fails with its id (raise max_length) when not one
of its pages fits at the lowest resolution: a document question shown no page would teach guessing.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path

from compass.data.sft_formats import IMAGE_MARK, SftExample
from compass.errors import CompassError

IMAGE_FIT_FILE = "image_fit.jsonl"  # in the SFT out dir: one line per example, what its pages cost and their cap
PAGE_LABEL = re.compile(r"Page (\d+):")  # how doc-traces labels each page image and cites it in the trace
LABEL_BEFORE_MARK = re.compile(r"Page (\d+):[ \t]*\n?$")  # a label right before an image mark


@dataclass(frozen=True)
class ExampleFit:
    """What one example's pages cost after the cap: exact tokens of the whole conversation (prompt, images, answer),
    tokens per shown page, and the cap (max_long_side None and every page kept: shown as given)."""

    id: str
    tokens: int
    pages: int  # images the record has
    pages_kept: int
    dropped_pages: list[int]  # page numbers (1-based labels; image positions + 1 where unlabelled) left out
    max_long_side: int | None  # px the pages were scaled to; None = as given
    tokens_per_page: float  # tokens a shown page adds to the example (its image and its "Page N:" label)
    capped: bool


@dataclass
class FittedExamples:
    examples: list[SftExample]  # dropped images left out; scaled ones replaced by their files in the image folder
    fits: list[ExampleFit]

    def metrics(self) -> dict:
        """The run's figures: examples capped, pages dropped, mean tokens per shown page (over all shown pages),
        the longest example in tokens."""
        shown = sum(f.pages_kept for f in self.fits)
        page_tokens = sum(f.tokens_per_page * f.pages_kept for f in self.fits)
        return {"capped_to_fit": sum(1 for f in self.fits if f.capped),
                "pages_dropped": sum(len(f.dropped_pages) for f in self.fits),
                "mean_tokens_per_page": page_tokens / shown if shown else 0.0,
                "max_example_tokens": max(f.tokens for f in self.fits)}

    def rows(self) -> list[dict]:
        return [asdict(f) for f in self.fits]


def record_fits(fitted: FittedExamples, out_dir: Path, max_length: int) -> None:
    """out_dir/image_fit.jsonl (every example: tokens, pages kept and dropped, the cap) and one log line."""
    from compass.io import write_jsonl
    from compass.logs import get as get_logger
    from compass.logs import number

    write_jsonl(Path(out_dir) / IMAGE_FIT_FILE, fitted.rows())
    m = fitted.metrics()
    get_logger("train").info(
        f"image fit: {m['capped_to_fit']} of {len(fitted.fits)} example(s) capped to max_length {max_length} "
        f"({m['pages_dropped']} page(s) dropped; {number(m['mean_tokens_per_page'])} tokens per shown page, "
        f"longest example {m['max_example_tokens']} tokens; per example in {IMAGE_FIT_FILE})")


def _user_pages(example: SftExample) -> list[int | None]:
    """The page number labelling each image (None where an image mark has no "Page N:" label, or no marks)."""
    labels: list[int | None] = []
    for message in example.messages:
        if message["role"] == "user":
            for before in message["content"].split(IMAGE_MARK)[:-1]:
                found = LABEL_BEFORE_MARK.search(before)
                labels.append(int(found.group(1)) if found else None)
    return labels if len(labels) == len(example.images) else [None] * len(example.images)


def evidence_order(example: SftExample) -> list[int]:
    """Image indices, the most important first: pages the assistant's trace cites, in the order it cites them,
    then the others in their order."""
    labels = _user_pages(example)
    cited: list[int] = []
    for message in example.messages:
        if message["role"] == "assistant":
            cited.extend(int(n) for n in PAGE_LABEL.findall(message["content"]) if int(n) not in cited)
    first = list(dict.fromkeys(labels.index(page) for page in cited if page in labels))
    return first + [i for i in range(len(example.images)) if i not in first]


def with_images(example: SftExample, kept: list[int]) -> SftExample:
    """The example showing only the images at `kept`, each dropped one leaving with its mark, its "Page N:" label
    and the blank after it."""
    if len(kept) == len(example.images):
        return example
    keep = set(kept)
    index = 0
    messages = []
    for message in example.messages:
        content = message["content"]
        if message["role"] == "user" and IMAGE_MARK in content:
            out, pos = [], 0
            for mark in re.finditer(re.escape(IMAGE_MARK), content):
                if index not in keep:
                    label = LABEL_BEFORE_MARK.search(content, pos, mark.start())
                    start = label.start() if label else mark.start()
                    end = mark.end() + re.match(r"[ \t]*\n?", content[mark.end():]).end()
                    out.append(content[pos:start])
                    pos = end
                index += 1
            content = "".join(out) + content[pos:]
        messages.append({**message, "content": content})
    return SftExample(id=example.id, messages=messages, images=[example.images[i] for i in sorted(keep)])


def fit_examples(processor, examples: list[SftExample], max_length: int, image_dir: Path) -> FittedExamples:
    """Every example's page images capped so that its whole conversation fits `max_length` tokens, counted as TRL's
    vision collator encodes it (the processor's chat template, no added special tokens). Scaled pages are written
    to `image_dir` as PNG (lossless: training sees the very pixels counted), named by their sha256, so the dataset
    holds paths and memory stays flat however many pages are scaled."""
    from compass.models.processors import fit_images, prompt_tokens
    from compass.train.data import vision_messages

    out_examples, fits = [], []
    for example in examples:
        vision_messages(example)  # a record whose marks and images disagree fails here, with its own message
        pages = [_open(path) for path in example.images]
        order = evidence_order(example)

        def conversation(n: int, example=example, order=order) -> str:
            shown = with_images(example, sorted(order[:n]))
            return processor.apply_chat_template(vision_messages(shown), tokenize=False)

        try:
            scaled, fit = fit_images(processor, conversation, pages, max_length, priority=order,
                                     add_special_tokens=False)
        except CompassError as err:  # only the budget can fail now: not even the text fits
            raise CompassError(f"record {example.id!r}: {err} (max_length); raise max_length") from None
        if pages and not fit.images_kept:  # a document question with no page to look at teaches guessing
            raise CompassError(f"record {example.id!r}: not one of its {len(pages)} pages fits max_length {max_length} "
                               f"{f'even at {fit.max_long_side} px' if fit.max_long_side else 'as given'} (the text alone "
                               f"is {fit.tokens} tokens); raise max_length")
        kept = sorted(order[:fit.images_kept])
        labels = _user_pages(example)
        dropped = [labels[i] if labels[i] is not None else i + 1 for i in range(len(pages)) if i not in kept]
        text_only = prompt_tokens(processor, conversation(0), [], add_special_tokens=False) if kept else fit.tokens
        fits.append(ExampleFit(example.id, fit.tokens, len(pages), fit.images_kept, dropped, fit.max_long_side,
                               (fit.tokens - text_only) / len(kept) if kept else 0.0,
                               fit.max_long_side is not None or len(kept) != len(pages)))
        shown = with_images(example, kept)
        if fit.max_long_side is not None:
            shown = SftExample(id=shown.id, messages=shown.messages, images=[_store(i, image_dir) for i in scaled])
        out_examples.append(shown)
    return FittedExamples(out_examples, fits)


def _store(image, image_dir: Path) -> Path:
    import hashlib
    import io

    from compass.io import atomic_open

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    data = buffer.getvalue()
    target = Path(image_dir) / f"{hashlib.sha256(data).hexdigest()}.png"
    if not target.is_file():  # every process of a multi-process run writes the same bytes; the rename is atomic
        with atomic_open(target, "wb", encoding=None) as fh:
            fh.write(data)
    return target


def _open(path: Path):
    from PIL import Image

    with Image.open(path) as image:
        return image.convert("RGB")
