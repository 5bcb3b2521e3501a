"""SFT on DocExamples whose pages do not fit max_length as given (compass.train.image_fit): on tiny Qwen3-VL (page
tokens grow with the resolution), LLaVA-OneVision and SmolVLM (their tiny processors shrink every page to 56-112 px
anyway, so only pages drop) the pages are capped, the figures are the exact counts TRL's collator then encodes, and
the capped examples train."""
from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from PIL import Image

from compass.data.sft_formats import SftExample
from compass.errors import CompassError
from compass.io import write_jsonl
from compass.longdoc.traces import example_messages
from compass.models.processors import MIN_LONG_SIDE, prompt_tokens
from compass.records import DocExample
from compass.train.data import vision_messages

torch.set_num_threads(1)

PAGE = (300, 420)  # px, wider than MIN_LONG_SIDE: the cap scales these to 160 x 224
QUESTION = "What were net sales?"
# doc id -> (pages, pages the trace cites in its order); c's one page is small and fits as given
DOCS = {"a": (4, [4, 2]), "b": (6, [6, 3]), "c": (1, [1])}


@dataclass
class Case:
    model_dir: Path
    data: Path
    folder: Path
    processor: object
    max_length: int
    expected: dict  # doc id -> (pages shown, 0-based; long side they were scaled to or None)


def trace_of(doc: str) -> str:
    return "\n\n".join(f"Page {p}: net sales were {10 * p} million yen." for p in DOCS[doc][1])


def page_size(doc: str) -> tuple[int, int]:
    return (36, 30) if doc == "c" else PAGE


def write_docs(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for doc, (n_pages, _) in DOCS.items():
        names = []
        for page in range(n_pages):
            names.append(f"{doc}{page}.png")
            Image.new("RGB", page_size(doc), (30 * page, 90, 150)).save(folder / names[-1])
        records.append(DocExample(
            id=f"{doc}/q0", question_id=f"{doc}/q0", doc_id=doc, images=names,
            messages=example_messages(QUESTION, list(range(n_pages)), "system", trace_of(doc), "\\boxed{40}"),
            cot_placement="system", branch="vision", has_trace=True))
    write_jsonl(folder / "examples.jsonl", records)
    return folder / "examples.jsonl"


def tokens_shown(case_processor, folder: Path, doc: str, shown: list[int], side: int | None) -> int:
    """The conversation doc-traces itself writes for just these pages (example_messages), counted by the processor
    with the pages scaled to `side`: the independent expectation of what the cap produces."""
    messages = [m.model_dump() for m in example_messages(QUESTION, shown, "system", trace_of(doc), "\\boxed{40}")]
    example = SftExample(id=doc, messages=messages, images=[folder / f"{doc}{p}.png" for p in shown])
    text = case_processor.apply_chat_template(vision_messages(example), tokenize=False)
    images = []
    for path in example.images:
        image = Image.open(path).convert("RGB")
        if side is not None and max(image.size) > side:
            scale = side / max(image.size)
            image = image.resize((round(image.width * scale), round(image.height * scale)))
        images.append(image)
    return prompt_tokens(case_processor, text, images, add_special_tokens=False)


def make_case(tiny_families, family: str, root: Path) -> Case:
    from compass.train import model as M

    model_dir = root / family
    shutil.copytree(tiny_families(family), model_dir)
    if family == "qwen3_vl":  # let a page be as large as it is given, so its resolution sets its token count
        config = json.loads((model_dir / "processor_config.json").read_text())
        config["image_processor"]["size"]["longest_edge"] = 420 * 420
        (model_dir / "processor_config.json").write_text(json.dumps(config))
    folder = root / "docs"
    data = write_docs(folder)
    processor, _ = M.load_for_training(model_dir, "vlm")  # the processor and training template sft uses
    # room for 4 pages at 224 px (b keeps its cited pages 6 and 3, then pages 1 and 2), not for a fifth
    b_kept = [0, 1, 2, 5]
    max_length = max(tokens_shown(processor, folder, "a", [0, 1, 2, 3], MIN_LONG_SIDE),
                     tokens_shown(processor, folder, "b", b_kept, MIN_LONG_SIDE))
    assert tokens_shown(processor, folder, "b", [0, 1, 2, 3, 5], MIN_LONG_SIDE) > max_length
    a_full = tokens_shown(processor, folder, "a", [0, 1, 2, 3], None)
    a_side = None if a_full <= max_length else MIN_LONG_SIDE
    if family == "qwen3_vl":
        assert a_side == MIN_LONG_SIDE  # a fits only at the lower resolution, with all its pages
    else:
        assert a_side is None  # OneVision's tiny tiles: the resolution changes nothing, a fits as given
    expected = {"a": ([0, 1, 2, 3], a_side), "b": (b_kept, MIN_LONG_SIDE), "c": ([0], None)}
    return Case(model_dir, data, folder, processor, max_length, expected)


def expected_figures(case: Case) -> tuple[list[dict], dict]:
    rows = []
    for doc, (shown, side) in case.expected.items():
        tokens = tokens_shown(case.processor, case.folder, doc, shown, side)
        no_pages = tokens_shown(case.processor, case.folder, doc, [], None)
        n_pages = DOCS[doc][0]
        rows.append({"id": f"{doc}/q0", "tokens": tokens, "pages": n_pages, "pages_kept": len(shown),
                     "dropped_pages": [p + 1 for p in range(n_pages) if p not in shown], "max_long_side": side,
                     "tokens_per_page": (tokens - no_pages) / len(shown),
                     "capped": side is not None or len(shown) != n_pages})
    shown_pages = sum(r["pages_kept"] for r in rows)
    metrics = {"capped_to_fit": sum(r["capped"] for r in rows),
               "pages_dropped": sum(len(r["dropped_pages"]) for r in rows),
               "mean_tokens_per_page": sum(r["tokens_per_page"] * r["pages_kept"] for r in rows) / shown_pages,
               "max_example_tokens": max(r["tokens"] for r in rows)}
    return rows, metrics


@pytest.fixture(scope="module", params=["qwen3_vl", "llava_onevision", "smolvlm"])
def case(request, tiny_families, tmp_path_factory):
    return make_case(tiny_families, request.param, tmp_path_factory.mktemp(request.param))


def test_pages_are_capped_in_evidence_order_to_exactly_what_the_collator_encodes(case, tmp_path):
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    from compass.train.data import read_sft_examples, vision_sft_dataset
    from compass.train.image_fit import fit_examples

    examples = read_sft_examples(case.data)
    fitted = fit_examples(case.processor, examples, case.max_length, tmp_path / "fitted")
    rows, metrics = expected_figures(case)
    assert fitted.rows() == rows
    assert fitted.metrics() == metrics
    assert metrics["capped_to_fit"] == (2 if case.expected["a"][1] else 1) and metrics["pages_dropped"] == 2
    a, b, c = fitted.examples
    kept_b = [case.folder / f"b{p}.png" for p in (0, 1, 2, 5)]
    if case.expected["b"][1] is None:
        assert b.images == kept_b
    else:  # scaled pages are files of the image folder, named by their hash, exactly the scaled pixels
        assert all(p.parent == tmp_path / "fitted" for p in b.images)
        assert [Image.open(p).size for p in b.images] == [(160, 224)] * 4
        assert [Image.open(p).tobytes() for p in b.images] == [
            Image.open(p).convert("RGB").resize((160, 224)).tobytes() for p in kept_b]
    assert c.images == [case.folder / "c0.png"]  # as given: the record's own file
    assert "Page 4:" not in b.messages[1]["content"] and "Page 6:\n<image>\n" in b.messages[1]["content"]
    # what TRL's collator makes of each capped example: exactly the counted tokens, nothing cut, answer labelled
    dataset = vision_sft_dataset(fitted.examples)
    collator = DataCollatorForVisionLanguageModeling(case.processor, max_length=case.max_length, assistant_only_loss=True)
    for index, row in enumerate(rows):
        batch = collator([dataset[index]])
        assert batch["input_ids"].shape[1] == row["tokens"] <= case.max_length
        assert (batch["labels"] != -100).any()


def test_an_example_that_fits_no_page_fails_with_its_id(case, tmp_path):
    from compass.train.data import read_sft_examples
    from compass.train.image_fit import fit_examples

    examples = read_sft_examples(case.data)[:1]
    text_alone = tokens_shown(case.processor, case.folder, "a", [], None)
    with pytest.raises(CompassError, match=rf"^record 'a/q0': not one of its 4 pages fits max_length {text_alone} "
                                           rf"even at 224 px \(the text alone is {text_alone} tokens\); raise max_length$"):
        fit_examples(case.processor, examples, text_alone, tmp_path)
    with pytest.raises(CompassError, match=rf"^record 'a/q0': the prompt alone is {text_alone} tokens, over the budget "
                                           rf"of {text_alone - 1} \(max_length\); raise max_length$"):
        fit_examples(case.processor, examples, text_alone - 1, tmp_path)


@pytest.mark.slow
def test_sft_trains_on_capped_examples_and_records_the_cap(case, tmp_path):
    from compass.runner import execute_stage
    from compass.stages import sft

    config = sft.Config(max_steps=2, global_batch_size=2, micro_batch_size=1, lora_r=4, lora_alpha=8,
                        learning_rate=1e-2, max_length=case.max_length, logging_steps=1, warmup_ratio=0.0, train="both")
    result = execute_stage("sft", config, {"model": case.model_dir, "data": case.data}, tmp_path / "sft")
    m = result.manifest.metrics
    rows, metrics = expected_figures(case)
    assert {key: m[key] for key in metrics} == metrics
    assert math.isfinite(m["first_loss"]) and math.isfinite(m["last_loss"]) and m["steps"] == 2
    written = [json.loads(line) for line in (result.out_dir / "image_fit.jsonl").read_text().splitlines()]
    assert written == rows
    # one file per distinct scaled page: page p of a and of b are the same pixels (write_docs colours by p)
    distinct = {p for doc, (shown, side) in case.expected.items() if side is not None for p in shown}
    assert len(list((result.out_dir / "fitted_images").glob("*.png"))) == len(distinct)
