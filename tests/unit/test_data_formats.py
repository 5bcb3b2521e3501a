"""SFT and preference data in the published datasets' formats: conversion, detection, malformed rows, weighted mixes."""
from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from compass.data.preference import read_preference_pairs, take_for_ratio
from compass.data.sft_formats import DataSource, load_mix, weighted_take
from compass.errors import CompassError
from compass.train.data import read_pairs, read_sft_examples
from support import data_formats as F
from support.shards import gather_shards
from support.traces import synthetic_trace
from compass.io import sha256_file, write_jsonl


def conv(example) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in example.messages]


def test_trl_messages(tmp_path):
    examples = read_sft_examples(F.write_rows(tmp_path / "m.jsonl", F.messages_rows(2)))
    assert [e.id for e in examples] == ["m/0", "m/1"]
    assert conv(examples[1]) == [("system", "Answer briefly."), ("user", "What is 1 + 1?"), ("assistant", "1 + 1 = 2.")]


def test_trl_prompt_completion_standard_and_conversational(tmp_path):
    standard = read_sft_examples(F.write_rows(tmp_path / "pc.jsonl", F.prompt_completion_rows()))
    assert conv(standard[2]) == [("user", "Count to 3:"), ("assistant", " 1 2 3")]
    conversational = read_sft_examples(F.write_rows(tmp_path / "cpc.jsonl", F.conversational_prompt_completion_rows()))
    assert conv(conversational[1]) == [("user", "Double 1."), ("assistant", "It is 2.")]


def test_sharegpt_openhermes_shape(tmp_path):
    examples = read_sft_examples(F.write_rows(tmp_path / "sg.jsonl", F.sharegpt_rows()))
    assert conv(examples[1]) == [("system", "You are a careful assistant."), ("user", "Is 1 even?"), ("assistant", "no")]


def test_alpaca_input_joins_the_instruction(tmp_path):
    examples = read_sft_examples(F.write_rows(tmp_path / "a.jsonl", F.alpaca_rows()))
    assert conv(examples[0]) == [("user", "Give three colours."), ("assistant", "Red, green, blue.")]
    assert conv(examples[1]) == [("user", "Translate to French.\n\ngood morning"), ("assistant", "bonjour")]


def test_trace_records_keep_working(tmp_path):
    path = tmp_path / "traces.jsonl"
    write_jsonl(path, [synthetic_trace(i) for i in range(3)])
    examples = read_sft_examples(path)
    assert [e.id for e in examples] == [synthetic_trace(i).id for i in range(3)]
    assert examples[0].messages == [m.model_dump() for m in synthetic_trace(0).messages]


def test_vlm_messages_with_image_paths_and_parquet_bytes(tmp_path):
    from PIL import Image

    for k in range(2):
        Image.new("RGB", (20, 20), (100 * k, 0, 0)).save(tmp_path / f"img{k}.png")
    examples = read_sft_examples(F.write_rows(tmp_path / "v.jsonl", F.vlm_messages_rows(["img0.png", "img1.png"])))
    assert examples[1].images == [tmp_path / "img1.png"]
    assert conv(examples[1])[0] == ("user", "<image>What colour is this?")
    # the hub/parquet form: images as {"bytes", "path"} structs, written once by hash into the image folder
    buffer = io.BytesIO()
    Image.new("RGB", (20, 20), (0, 0, 200)).save(buffer, format="PNG")
    rows = F.vlm_messages_rows(["x"])
    rows[0]["images"] = [{"bytes": buffer.getvalue(), "path": None}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "v.parquet")
    (parquet_example,) = read_sft_examples(tmp_path / "v.parquet", image_dir=tmp_path / "imgs")
    assert parquet_example.images[0].parent == tmp_path / "imgs" and parquet_example.images[0].read_bytes() == buffer.getvalue()


@pytest.mark.parametrize("fmt, row, message", [
    ("messages", {"messages": [{"role": "user", "content": "q"}, {"role": "tool", "content": "x"}]}, "messages[1].role is 'tool'"),
    ("messages", {"messages": [{"role": "user", "content": "q"}]}, "no assistant turn to train on"),
    ("prompt_completion", {"prompt": "q", "completion": [{"role": "assistant", "content": "a"}]}, "must both be strings or both message lists"),
    ("sharegpt", {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt"}]}, "conversations[1] must be {from, value}"),
    ("alpaca", {"instruction": "q", "input": "", "output": 3}, "output must be a string, got int"),
])
def test_a_malformed_row_is_one_line_with_its_row_and_the_expected_shape(tmp_path, fmt, row, message):
    good = {"messages": F.messages_rows(1)[0], "prompt_completion": F.prompt_completion_rows(1)[0],
            "sharegpt": F.sharegpt_rows(1)[0], "alpaca": F.alpaca_rows()[0]}[fmt]
    path = F.write_rows(tmp_path / "bad.jsonl", [good, row])
    with pytest.raises(CompassError) as err:
        read_sft_examples(path)
    text = str(err.value)
    assert "\n" not in text and text.startswith(f"{path}:2: ") and message in text and "expected" in text, text


def test_a_malformed_trace_record_names_its_line_and_field(tmp_path):
    path = tmp_path / "traces.jsonl"
    good = synthetic_trace(0).model_dump(mode="json")
    bad = {**synthetic_trace(1).model_dump(mode="json"), "verified": "maybe"}
    F.write_rows(path, [good, bad])
    with pytest.raises(CompassError, match=r"traces.jsonl:2: field 'verified': .*expected a Trace record"):
        read_sft_examples(path)


def test_a_row_fitting_no_format_names_every_expected_one(tmp_path):
    path = F.write_rows(tmp_path / "odd.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(CompassError, match=r"odd.jsonl:1: the row fits no SFT format; expected .*messages.*ShareGPT.*alpaca"):
        read_sft_examples(path)


def test_format_given_overrides_detection(tmp_path):
    path = F.write_rows(tmp_path / "m.jsonl", F.messages_rows(1))
    with pytest.raises(CompassError, match="m.jsonl:1: missing 'instruction'"):
        read_sft_examples(path, "alpaca")


def test_weighted_mix_counts_and_draws_are_seeded(tmp_path):
    F.write_rows(tmp_path / "m.jsonl", F.messages_rows(10))
    F.write_rows(tmp_path / "a.jsonl", F.alpaca_rows())
    sources = [DataSource(path="m.jsonl", weight=0.5), DataSource(path="a.jsonl", weight=2, name="alpaca")]
    examples, reports = load_mix(sources, tmp_path, seed=42, image_dir=None)
    assert reports["m.jsonl"]["taken"] == 5 and reports["alpaca"]["taken"] == 4 and len(examples) == 9
    assert reports["alpaca"]["format"] == "alpaca" and reports["m.jsonl"]["format"] == "messages"
    assert sorted(e.id for e in examples[5:]) == ["alpaca/0", "alpaca/0#copy2", "alpaca/1", "alpaca/1#copy2"]
    assert reports["m.jsonl"]["files"] == {(tmp_path / "m.jsonl").as_posix(): sha256_file(tmp_path / "m.jsonl")}
    again, _ = load_mix(sources, tmp_path, seed=42, image_dir=None)
    assert [e.id for e in again] == [e.id for e in examples]
    assert weighted_take(10, 0.5, 42, "m.jsonl") != weighted_take(10, 0.5, 43, "m.jsonl")
    with pytest.raises(CompassError, match="must be relative to the stage's `data` input"):
        load_mix([DataSource(path=str(tmp_path / "m.jsonl"))], tmp_path, 42, None)


# --- preference -------------------------------------------------------------------------------------------


def pairs_of(tmp_path, name, rows):
    return read_preference_pairs(F.write_rows(tmp_path / name, rows))


def test_plain_and_conversational_preference(tmp_path):
    pairs, report = pairs_of(tmp_path, "p.jsonl", F.preference_rows())
    assert report["format"] == "preference"
    assert (pairs[1].prompt[0].content, pairs[1].chosen, pairs[1].rejected) == ("1 + 1 =", " 2", " 3")
    assert pairs[1].strategy == "preference" and pairs[1].source_id == "p.jsonl#1"
    pairs, _ = pairs_of(tmp_path, "c.jsonl", F.conversational_preference_rows())
    assert [m.content for m in pairs[2].prompt] == ["What is 2 times 3?"] and (pairs[2].chosen, pairs[2].rejected) == ("6", "7")


def test_ultrafeedback_binarized_prompt_turns_inside_chosen(tmp_path):
    pairs, report = pairs_of(tmp_path, "ufb.jsonl", F.ultrafeedback_binarized_rows())
    assert report["format"] == "preference" and len(pairs) == 3
    assert [(m.role, m.content) for m in pairs[1].prompt] == [("user", "Name a prime larger than 10.")]
    assert (pairs[1].chosen, pairs[1].rejected) == ("11 is prime.", "14 is prime.")


def test_ultrafeedback_best_and_worst_by_rating_ties_dropped_and_counted(tmp_path):
    pairs, report = pairs_of(tmp_path, "uf.jsonl", F.ultrafeedback_rows())
    assert report == {"format": "ultrafeedback", "dropped": {"fewer_than_two_rated": 1, "tie": 1}}
    assert [(p.prompt[0].content, p.chosen, p.rejected) for p in pairs] == [
        ("What is 7 * 6?", "42", "13"), ("Is 9 prime?", "No, 9 = 3 x 3.", "Yes.")]
    assert [p.source_id for p in pairs] == ["uf.jsonl#0", "uf.jsonl#3"]


def test_hh_split_at_the_common_prefix(tmp_path):
    pairs, report = pairs_of(tmp_path, "hh.jsonl", F.hh_rows())
    assert report["format"] == "implicit"
    assert [(m.role, m.content) for m in pairs[0].prompt] == [
        ("user", "What is the capital of Japan?"), ("assistant", "Tokyo."), ("user", "And its population?")]
    assert (pairs[0].chosen, pairs[0].rejected) == ("About 14 million in the city proper.", "About 2 people.")
    assert (pairs[1].prompt[-1].content, pairs[1].chosen, pairs[1].rejected) == ("Add 2 and 3.", "5", "6")


@pytest.mark.parametrize("rows, message", [
    (F.preference_rows(1) + [{"prompt": "q", "chosen": "a"}], "p.jsonl:2: the row fits no|missing 'rejected'"),
    (F.ultrafeedback_rows()[:1] + [{"instruction": "q", "completions": [{"response": "a"}]}], "must have 'response' and 'overall_score'"),
    (F.conversational_preference_rows(1) + [{"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "bot", "content": "a"}],
                                             "rejected": [{"role": "assistant", "content": "b"}]}], r"chosen\[0\] must be"),
    (F.hh_rows()[:1] + [{"chosen": "yes", "rejected": "no"}], "chosen and rejected share no prompt"),
    (F.preference_rows(1) + [{"prompt": "q", "chosen": "a", "rejected": ["b"]}],
     "must both be strings or both message lists"),
])
def test_malformed_preference_rows(tmp_path, rows, message):
    path = F.write_rows(tmp_path / "p.jsonl", rows)
    with pytest.raises(CompassError, match=message) as err:
        read_pairs(path)
    assert ":2: " in str(err.value) and "\n" not in str(err.value)


def test_ratio_arithmetic():
    assert take_for_ratio(90, 50, 0.1) == 10 and take_for_ratio(90, 50, 0.0) == 0
    with pytest.raises(CompassError, match="needs 90 preference pairs, but the input has 50; at most 0.3571"):
        take_for_ratio(90, 50, 0.5)


@pytest.mark.slow  # a whole stage run (seconds): not in make test-fast
def test_pairs_stage_mixes_real_preference_pairs_at_the_ratio(tmp_path):
    from compass.runner import execute_stage
    from compass.stages import pairs as pairs_stage

    traces = tmp_path / "traces.jsonl"
    write_jsonl(traces, [synthetic_trace(i) for i in range(30)])
    uf = F.write_rows(tmp_path / "uf.jsonl", F.ultrafeedback_rows() * 5)
    result = execute_stage("pairs", pairs_stage.Config(preference_ratio=0.2), {"traces": traces, "preference": uf}, tmp_path / "out")
    m = result.manifest.metrics
    lines = [json.loads(line) for line in (tmp_path / "out" / "pairs.jsonl").read_text().splitlines()]
    assert m["pairs"] + m["preference_pairs"] == len(lines) and m["preference_available"] == 10
    assert m["preference_pairs"] == round(m["pairs"] * 0.2 / 0.8) and m["preference_dropped"] == {"fewer_than_two_rated": 5, "tie": 5}
    assert sum(line["strategy"] == "preference" for line in lines) == m["preference_pairs"]
    assert all(line["source_id"].startswith("uf.jsonl#") for line in lines if line["strategy"] == "preference")
    with pytest.raises(CompassError, match="needs the `preference` input"):
        execute_stage("pairs", pairs_stage.Config(preference_ratio=0.2), {"traces": traces}, tmp_path / "out2")


# --- the sources-style stages ----------------------------------------------------------------------------


def eval_problems(path, questions):
    from compass.records import Problem

    write_jsonl(path, [Problem(id=f"ev/{i}", source="ev", question=q, reference_answer="0") for i, q in enumerate(questions)])
    return path


def test_sft_sources_mixes_decontaminates_and_records_hashes(tmp_path):
    from compass.io import read_jsonl, sha256_file
    from compass.ledger.index import Index
    from compass.ledger.workspace import Workspace
    from compass.runner import execute_stage
    from compass.stages import sft_sources

    data = tmp_path / "data"
    F.write_rows(data / "m.jsonl", F.messages_rows(6))
    F.write_rows(data / "sg.jsonl", F.sharegpt_rows(3))
    evals = eval_problems(tmp_path / "eval.jsonl", ["What is 4 + 4?"])  # the same question as m.jsonl row 4
    config = sft_sources.Config(datasets=[DataSource(path="m.jsonl"), DataSource(path="sg.jsonl", weight=2, name="sharegpt")])
    result = execute_stage("sft-sources", config, {"data": data, "eval": evals}, tmp_path / "out")
    m = result.manifest.metrics
    assert m["per_source"] == {"m.jsonl": 5, "sharegpt": 6} and m["decontaminated"] == 1 and m["examples"] == 11
    dropped = read_jsonl(tmp_path / "out" / "dropped.jsonl")
    assert [(d["id"], d["eval_id"], d["method"]) for d in dropped] == [("m.jsonl/4", "ev/0", "ngram")]
    assert m["sources"]["m.jsonl"]["files"] == {(data / "m.jsonl").as_posix(): sha256_file(data / "m.jsonl")}
    # the output reads back as SFT data (TRL messages rows with ids), and the ledger holds its bytes by hash
    examples = read_sft_examples(tmp_path / "out" / "examples.jsonl")
    assert len(examples) == 11 and examples[0].id == "m.jsonl/0"
    index = Index(Workspace.current().index_db)
    outs = {path: sha for _, _, path, sha, _ in index.files(result.manifest.run_id, "out")}
    assert outs["examples.jsonl"] == sha256_file(tmp_path / "out" / "examples.jsonl")


def test_preference_sources_ultrafeedback_and_hh(tmp_path):
    from compass.runner import execute_stage
    from compass.stages import preference_sources

    data = tmp_path / "data"
    F.write_rows(data / "uf.jsonl", F.ultrafeedback_rows())
    F.write_rows(data / "hh.jsonl", F.hh_rows())
    evals = eval_problems(tmp_path / "eval.jsonl", ["Is 9 prime?"])
    config = preference_sources.Config(datasets=[DataSource(path="uf.jsonl"), DataSource(path="hh.jsonl")], max_drop_rate=0.5)
    result = execute_stage("preference-sources", config, {"data": data, "eval": evals}, tmp_path / "out")
    m = result.manifest.metrics
    assert m["per_source"] == {"uf.jsonl": 1, "hh.jsonl": 2} and m["decontaminated"] == 1
    assert m["sources"]["uf.jsonl"]["dropped"] == {"fewer_than_two_rated": 1, "tie": 1}
    assert m["sources"]["uf.jsonl"]["format"] == "ultrafeedback" and m["sources"]["hh.jsonl"]["format"] == "implicit"
    assert [p.source_id for p in read_pairs(tmp_path / "out" / "pairs.jsonl")] == ["uf.jsonl#0", "hh.jsonl#0", "hh.jsonl#1"]


def test_a_directory_of_jsonl_and_parquet_shards(tmp_path):
    F.write_rows(tmp_path / "shards" / "a.jsonl", F.messages_rows(2))
    pq.write_table(pa.Table.from_pylist(F.messages_rows(3)), tmp_path / "shards" / "b.parquet")
    examples = read_sft_examples(tmp_path / "shards")
    assert [e.id for e in examples] == ["a/0", "a/1", "b/0", "b/1", "b/2"]
    pq.write_table(pa.Table.from_pylist(F.ultrafeedback_binarized_rows(2)), tmp_path / "prefs.parquet")
    assert [p.source_id for p in read_pairs(tmp_path / "prefs.parquet")] == ["prefs.parquet#0", "prefs.parquet#1"]


def test_sft_sources_copies_images_in_by_hash_and_the_output_reads_back(tmp_path):
    from PIL import Image

    from compass.runner import execute_stage
    from compass.stages import sft_sources

    data = tmp_path / "data"
    data.mkdir()
    for k in range(2):
        Image.new("RGB", (20, 20), (120 * k, 30, 0)).save(data / f"img{k}.png")
    F.write_rows(data / "v.jsonl", F.vlm_messages_rows(["img0.png", "img1.png"]))
    config = sft_sources.Config(datasets=[DataSource(path="v.jsonl", name="vlm")])
    result = execute_stage("sft-sources", config, {"data": data}, tmp_path / "out")
    names = {f"images/{sha256_file(data / f'img{k}.png')}.png" for k in range(2)}
    assert names <= set(result.manifest.outputs)
    examples = read_sft_examples(tmp_path / "out" / "examples.jsonl")
    assert [e.images[0].read_bytes() for e in examples] == [(data / f"img{k}.png").read_bytes() for k in range(2)]
    assert examples[0].messages[0]["content"] == "<image>What colour is this?"


def test_sft_and_preference_sources_shards_gather_to_the_unsharded_bytes(tmp_path, capsys):
    """3 shards of each (a dropped example in one shard, images every shard copies in by hash) joined by `compass
    gather`: every output file's sha256 and the metrics equal an unsharded run's; the drop rate is the whole's."""
    from PIL import Image

    from compass.io import hash_tree
    from compass.manifest import read_manifest
    from compass.runner import execute_stage
    from compass.stages import preference_sources, sft_sources

    data = tmp_path / "data"
    data.mkdir()
    for k in range(2):
        Image.new("RGB", (20, 20), (120 * k, 30, 0)).save(data / f"img{k}.png")
    F.write_rows(data / "m.jsonl", F.messages_rows(7))
    F.write_rows(data / "v.jsonl", F.vlm_messages_rows(["img0.png", "img1.png", "img0.png"]))
    F.write_rows(data / "uf.jsonl", F.ultrafeedback_rows())
    F.write_rows(data / "hh.jsonl", F.hh_rows())
    evals = eval_problems(tmp_path / "eval.jsonl", ["What is 4 + 4?", "Is 9 prime?"])
    inputs = {"data": data, "eval": evals}
    cases = [("sft-sources", sft_sources.Config(datasets=[DataSource(path="m.jsonl"), DataSource(path="v.jsonl", name="vlm")])),
             ("preference-sources", preference_sources.Config(datasets=[DataSource(path="uf.jsonl"), DataSource(path="hh.jsonl")],
                                                              max_drop_rate=0.5))]
    for kind, config in cases:
        whole = execute_stage(kind, config, inputs, tmp_path / kind / "whole")
        assert whole.manifest.metrics["decontaminated"] == 1
        code, joined = gather_shards(kind, config, inputs, tmp_path / kind, 3)
        assert code == 0
        assert hash_tree(joined, exclude=["manifest.json"]) == whole.manifest.outputs, kind
        assert read_manifest(joined).metrics == whole.manifest.metrics, kind
    # the drop rate is checked over the whole at gather: 1 of 10 passes 0.2 (1 of its shard's 3 would not), not 0.05
    strict = cases[0][1].model_copy(update={"max_drop_rate": 0.2})
    assert gather_shards("sft-sources", strict, inputs, tmp_path / "strict", 3)[0] == 0
    capsys.readouterr()
    code, joined = gather_shards("sft-sources", strict.model_copy(update={"max_drop_rate": 0.05}), inputs, tmp_path / "stricter", 3)
    assert code == 2 and not (joined / "manifest.json").exists()
    assert "sft-sources: 1 of 10 examples (10%) overlap the evaluation sets, more than max_drop_rate 5%" in capsys.readouterr().err
