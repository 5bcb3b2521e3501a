"""Data stages past one process: `workers: N` gives the bytes of `workers: 1`, and `--shard I/N` runs joined
by `compass gather` give the bytes of the unsharded run (compared by sha256 of every output file), for pages
(real PDFs through pypdfium2), pairs, decontaminate and sources."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from support.traces import synthetic_trace
from compass.cli import main
from compass.config import config_hash
from compass.data.shards import Shard, ordered_map, parse_shard
from compass.errors import CompassError
from compass.io import hash_tree, read_jsonl, write_jsonl
from compass.manifest import read_manifest
from compass.records import Problem
from compass.runner import execute_stage
from compass.stagekit import run_stage
from support.shards import run_sharded
from compass.stages import decontaminate, pages, pairs, pdf_fixtures, sources

MAX_SIDE = 120


def outputs(folder: Path) -> dict[str, str]:
    return hash_tree(folder, exclude=["manifest.json"])


def _square(x: int) -> int:
    return x * x


def test_shard_bounds_cover_every_unit_once_in_order():
    for n in (0, 1, 5, 7, 100):
        for count in (1, 2, 3, 8):
            taken = [i for index in range(count) for i in range(*Shard(index=index, count=count).bounds(n))]
            assert taken == list(range(n))
    assert str(parse_shard("2/5")) == "2/5"
    for bad in ("5/5", "1", "a/2", "-1/2", "0/0"):
        with pytest.raises(ValueError):
            parse_shard(bad)


def _pid(_) -> int:
    return os.getpid()


def test_ordered_map_keeps_input_order_across_processes():
    assert list(ordered_map(_square, range(50), 2, batch=3)) == [x * x for x in range(50)]
    assert list(ordered_map(_square, range(5), 1)) == [0, 1, 4, 9, 16]
    assert os.getpid() not in set(ordered_map(_pid, range(20), 2))  # the work ran in the pool's processes
    assert set(ordered_map(_pid, range(3), 2, batch=3)) == {os.getpid()}  # one task: no pool is started


def test_workers_are_not_in_the_cache_key():
    assert config_hash(pairs.Config(workers=1)) == config_hash(pairs.Config(workers=8)) == config_hash(pairs.Config())
    assert config_hash(pairs.Config(shard="0/2")) != config_hash(pairs.Config())


# --- pairs ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def traces(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("traces") / "traces.jsonl"
    records = [synthetic_trace(i) for i in range(600)]
    records[17] = records[17].model_copy(update={"verified": False})  # a reject, so rejects.jsonl has bytes
    write_jsonl(path, records)
    return path


def test_pairs_workers_and_shards_give_the_single_process_bytes(traces, tmp_path):
    one = execute_stage("pairs", pairs.Config(workers=1), {"traces": traces}, tmp_path / "one")
    two = execute_stage("pairs", pairs.Config(workers=2), {"traces": traces}, tmp_path / "two")
    assert outputs(tmp_path / "one") == outputs(tmp_path / "two") == one.manifest.outputs
    assert one.manifest.metrics == two.manifest.metrics
    assert one.manifest.metrics["rejects"] == 1
    joined = run_sharded("pairs", pairs.Config(workers=2), {"traces": traces}, tmp_path / "sharded", 3)
    assert outputs(joined) == one.manifest.outputs
    assert read_manifest(joined).metrics == one.manifest.metrics
    # the joined run has the unsharded run's cache key: an unsharded check into it is a cache hit
    assert execute_stage("pairs", pairs.Config(workers=1), {"traces": traces}, joined).cached
    assert len(read_jsonl(joined / "pairs.jsonl")) == 599


def test_shard_reruns_are_cached_and_gather_refuses_a_missing_or_foreign_shard(traces, tmp_path):
    first = execute_stage("pairs", pairs.Config(shard="0/2"), {"traces": traces}, tmp_path / "s0")
    assert execute_stage("pairs", pairs.Config(shard="0/2"), {"traces": traces}, tmp_path / "s0").cached  # resumable
    with pytest.raises(CompassError, match=r"missing \[1\]"):
        execute_stage("pairs", pairs.Config(), {"traces": traces}, tmp_path / "j", gather_from=[tmp_path / "s0"])
    execute_stage("pairs", pairs.Config(shard="1/2", seed=7), {"traces": traces}, tmp_path / "s1")
    with pytest.raises(CompassError, match="another config"):
        execute_stage("pairs", pairs.Config(), {"traces": traces}, tmp_path / "j", gather_from=[tmp_path / "s0", tmp_path / "s1"])
    assert first.manifest.metrics["traces"] == 300


def test_gather_applies_the_reject_rate_to_the_whole(tmp_path):
    """Rejects all in shard 1: each shard alone is not checked, the whole is, and nothing is written."""
    records = [synthetic_trace(i) for i in range(20)]
    records = records[:10] + [r.model_copy(update={"verified": False}) for r in records[10:13]] + records[13:]
    write_jsonl(tmp_path / "t.jsonl", records)
    cfg = pairs.Config(max_reject_rate=0.1)
    for index in range(2):
        execute_stage("pairs", cfg.model_copy(update={"shard": f"{index}/2"}), {"traces": tmp_path / "t.jsonl"}, tmp_path / f"s{index}")
    with pytest.raises(CompassError, match=r"3 of 20 records rejected"):
        execute_stage("pairs", cfg, {"traces": tmp_path / "t.jsonl"}, tmp_path / "j", gather_from=[tmp_path / "s0", tmp_path / "s1"])
    assert not (tmp_path / "j" / "pairs.jsonl").exists()


# --- pages ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pdfs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pdfs")
    run_stage(pdf_fixtures, pdf_fixtures.Config(n_docs=5, min_extra_pages=0, max_extra_pages=2, seed=3), {}, root / "fx")
    folder = root / "fx" / "pdfs"
    (folder / "broken.pdf").write_bytes(b"%PDF-1.4 not really")  # one reject among them
    return folder


def test_pages_workers_and_shards_give_the_single_process_bytes(pdfs, tmp_path):
    cfg = pages.Config(max_long_side=MAX_SIDE, max_reject_rate=0.5)
    one = execute_stage("pages", cfg.model_copy(update={"workers": 1}), {"pdfs": pdfs}, tmp_path / "one")
    two = execute_stage("pages", cfg.model_copy(update={"workers": 2}), {"pdfs": pdfs}, tmp_path / "two")
    assert outputs(tmp_path / "one") == outputs(tmp_path / "two") == one.manifest.outputs
    assert one.manifest.metrics == two.manifest.metrics
    assert one.manifest.metrics["rejected"] == 1 and one.manifest.metrics["documents"] == 5
    assert any(name.startswith("images/") for name in one.manifest.outputs)
    joined = run_sharded("pages", cfg, {"pdfs": pdfs}, tmp_path / "sharded", 4)
    assert outputs(joined) == one.manifest.outputs
    assert read_manifest(joined).metrics == one.manifest.metrics


# --- decontaminate -----------------------------------------------------------------------------------------


def problem(i: int, question: str, **meta) -> Problem:
    return Problem(id=f"p{i}", source="test", question=question, reference_answer=str(i), meta=meta)


def test_decontaminate_workers_and_shards_give_the_single_process_bytes(tmp_path):
    evals = [problem(1000 + i, f"Evaluation item {i}: a train leaves at {i} and travels {i * 3} miles, how far?",
                     gsm8k_test_index=i) for i in range(40)]
    train = []
    for i in range(300):
        if i % 10 == 3:  # an n-gram copy of an eval item
            train.append(problem(i, evals[i % 40].question + " Answer quickly."))
        elif i % 10 == 7:  # a link key (a translation of an eval item)
            train.append(problem(i, f"列車は{i}時に出発します。", gsm8k_test_index=i % 40))
        else:
            train.append(problem(i, f"Problem {i}: Tom has {i} apples and gives {i % 7} away; how many are left?"))
    write_jsonl(tmp_path / "train.jsonl", train)
    write_jsonl(tmp_path / "eval.jsonl", evals)
    inputs = {"problems": tmp_path / "train.jsonl", "eval": tmp_path / "eval.jsonl"}
    one = execute_stage("decontaminate", decontaminate.Config(workers=1), inputs, tmp_path / "one")
    two = execute_stage("decontaminate", decontaminate.Config(workers=2), inputs, tmp_path / "two")
    assert outputs(tmp_path / "one") == outputs(tmp_path / "two") == one.manifest.outputs
    assert one.manifest.metrics == two.manifest.metrics
    assert one.manifest.metrics["dropped_by_method"] == {"link:gsm8k_test_index": 30, "ngram": 30}
    joined = run_sharded("decontaminate", decontaminate.Config(), inputs, tmp_path / "sharded", 3)
    assert outputs(joined) == one.manifest.outputs
    assert read_manifest(joined).metrics == one.manifest.metrics


# --- sources -----------------------------------------------------------------------------------------------


def test_sources_workers_and_shards_give_the_single_process_bytes(tmp_path):
    data = tmp_path / "data"
    rows = [{"question": f"What is {i} + {i}?", "answer": f"{i} + {i} = {2 * i}\n#### {2 * i}"} for i in range(30)]
    rows += [{"question": "What is 3 + 3?", "answer": "#### 6"}]  # a duplicate question of row 3
    write_jsonl(data / "gsm8k_train.jsonl", rows)
    cfg = sources.Config(
        datasets=[{"name": "gsm8k", "path": "gsm8k_train.jsonl"}],
        reasoning_gym=[{"generator": "basic_arithmetic", "size": 20}, {"generator": "basic_arithmetic", "size": 10, "seed": 9}],
    )
    one = execute_stage("sources", cfg.model_copy(update={"workers": 1}), {"data": data}, tmp_path / "one")
    two = execute_stage("sources", cfg.model_copy(update={"workers": 2}), {"data": data}, tmp_path / "two")
    assert outputs(tmp_path / "one") == outputs(tmp_path / "two") == one.manifest.outputs
    assert one.manifest.metrics == two.manifest.metrics
    assert one.manifest.metrics["duplicates_dropped"] >= 1
    joined = run_sharded("sources", cfg, {"data": data}, tmp_path / "sharded", 3)
    assert outputs(joined) == one.manifest.outputs
    assert read_manifest(joined).metrics == one.manifest.metrics


# --- doc-traces ----------------------------------------------------------------------------------------------


def test_doc_traces_workers_and_shards_give_the_single_process_bytes(pdfs, tmp_path):
    from compass.stages import doc_traces, evidence

    fx = pdfs.parent
    run_stage(pages, pages.Config(max_long_side=MAX_SIDE, max_reject_rate=0.5, workers=1), {"pdfs": pdfs}, tmp_path / "pages")
    run_stage(evidence, evidence.Config(), {"pages": tmp_path / "pages" / "pages.jsonl", "questions": fx / "questions.jsonl"},
                 tmp_path / "evidence")
    inputs = {"evidence": tmp_path / "evidence" / "evidence.jsonl", "questions": fx / "questions.jsonl",
              "pages": tmp_path / "pages" / "pages.jsonl"}
    cfg = doc_traces.Config(top_k=2, threshold=0.5, no_cot_extra_fraction=0.5)
    # image paths are relative to the output directory: every run here writes into a sibling of the others
    root = tmp_path / "runs"
    one = execute_stage("doc-traces", cfg.model_copy(update={"workers": 1}), inputs, root / "one")
    two = execute_stage("doc-traces", cfg.model_copy(update={"workers": 2}), inputs, root / "two")
    assert outputs(root / "one") == outputs(root / "two") == one.manifest.outputs
    assert one.manifest.metrics == two.manifest.metrics and one.manifest.metrics["questions"] >= 3
    joined = run_sharded("doc-traces", cfg, inputs, root, 3)
    assert outputs(joined) == one.manifest.outputs
    assert read_manifest(joined).metrics == one.manifest.metrics
    with pytest.raises(CompassError, match="beside the output"):
        execute_stage("doc-traces", cfg, inputs, tmp_path / "elsewhere" / "deeper",
                      gather_from=[root / f"shard-{i}" for i in range(3)])
