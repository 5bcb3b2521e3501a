"""Which pages a capped SFT example keeps (compass.train.image_fit), without a model: evidence order from the trace,
a dropped page leaving with its label, records without labels keeping their first images."""
from __future__ import annotations

from pathlib import Path

from compass.data.sft_formats import SftExample
from compass.longdoc.traces import example_messages
from compass.train.image_fit import evidence_order, with_images


def doc_example(n_pages: int, trace: str | None) -> SftExample:
    placement = "user_prepend" if trace else "none"
    messages = [m.model_dump() for m in example_messages("Net sales?", list(range(n_pages)), placement, trace, "12")]
    return SftExample(id="d/q", messages=messages, images=[Path(f"p{i}.png") for i in range(n_pages)])


def test_trace_pages_come_first_in_the_traces_order_then_the_rest_in_page_order():
    example = doc_example(5, "Page 4: sales 12.\n\nPage 2: year 2020.\n\nPage 4: again.")
    assert evidence_order(example) == [3, 1, 0, 2, 4]
    assert evidence_order(doc_example(3, None)) == [0, 1, 2]  # no trace (placement none): page order


def test_a_dropped_page_leaves_with_its_label_and_the_user_turn_reads_as_doc_traces_writes_it():
    example = doc_example(5, "Page 4: sales 12.")
    kept = with_images(example, [0, 3])
    expected = [m.model_dump() for m in example_messages("Net sales?", [0, 3], "user_prepend", "Page 4: sales 12.", "12")]
    assert kept.messages == expected
    assert kept.images == [Path("p0.png"), Path("p3.png")]
    assert with_images(example, [0, 1, 2, 3, 4]) is example


def test_records_without_page_labels_keep_their_first_images():
    marked = SftExample(id="m", messages=[{"role": "user", "content": "<image> and <image> and <image>: which?"},
                                          {"role": "assistant", "content": "the first"}],
                        images=[Path("a.png"), Path("b.png"), Path("c.png")])
    assert evidence_order(marked) == [0, 1, 2]
    assert with_images(marked, [0, 1]).messages[0]["content"] == "<image> and <image> and : which?"
    unmarked = SftExample(id="u", messages=[{"role": "user", "content": "Which page?"},
                                            {"role": "assistant", "content": "Page 2: this one"}],
                          images=[Path("a.png"), Path("b.png")])
    assert evidence_order(unmarked) == [0, 1]  # no labels: the answer's "Page 2:" names no image
    shown = with_images(unmarked, [0])
    assert shown.messages == unmarked.messages and shown.images == [Path("a.png")]
