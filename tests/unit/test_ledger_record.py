"""Recording: every stage run becomes an MLflow run (params, tags, metric history, artifacts), its files
land in the content-addressed store once, and lineage links runs through file hashes."""
import json
import os

import pytest

from support import ledger_runs as ledger_support  # noqa: E402
from compass.errors import CompassError
from compass.io import sha256_file
from compass.ledger.index import Index
from compass.ledger.record import record_stage_run, tracker_for
from compass.ledger.store import ContentStore, detach_links
from compass.manifest import read_manifest
from compass.runner import execute_stage


@pytest.fixture
def ws(tmp_path, tmp_path_factory, monkeypatch):
    return ledger_support.workspace_for_test(tmp_path_factory, tmp_path / "home", monkeypatch)


def test_chain_is_recorded_in_mlflow_with_params_tags_history_and_artifacts(ws, tmp_path):
    chain = ledger_support.run_chain(tmp_path / "work")
    index = Index(ws.index_db)
    dpo = index.run(chain["dpo"].manifest.run_id)
    assert dpo.state == "complete" and index.count() == 5

    client = tracker_for(ws).client
    run = client.get_run(dpo.mlflow_run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "dpo"
    assert run.data.params["beta"] == "0.1" and run.data.params["learning_rate"] == "0.05"
    tags = run.data.tags
    manifest = chain["dpo"].manifest
    assert tags["compass.run_id"] == manifest.run_id
    assert tags["compass.code.commit"] == (manifest.code.commit or "unknown")
    assert tags["compass.code.dirty"] in ("true", "false", "unknown")
    # the full sha256 of every output and input file: one JSON artifact, not a tag each (issue 16)
    assert not [k for k in tags if k.startswith(("compass.output", "compass.input", "compass.version."))]
    files = json.loads(open(client.download_artifacts(dpo.mlflow_run_id, "files.json", str(tmp_path))).read())
    assert files["outputs"] == manifest.outputs and all(len(sha) == 64 for sha in files["outputs"].values())
    assert files["inputs"]["pairs"]["pairs.jsonl"] == manifest.inputs["pairs"].files["pairs.jsonl"]
    assert set(tags["compass.parents"].split(",")) == {chain["sft"].manifest.run_id, chain["pairs"].manifest.run_id}
    assert tags["compass.data.pairs"] == "training: omit_thinking 0.34, tamper_thinking_numbers 0.33, tamper_answer 0.33"
    assert tags["compass.data.training pairs"] == "omit_thinking 0.34, tamper_thinking_numbers 0.33, tamper_answer 0.33"
    assert "dpo.beta=0.1" in tags["compass.data.hparams"] and "sft.learning_rate=0.2" in tags["compass.data.hparams"]
    # metric history: every logged step of log_history.json
    loss = client.get_metric_history(dpo.mlflow_run_id, "train/loss")
    history = json.loads((tmp_path / "work" / "dpo" / "log_history.json").read_text())
    assert [(m.step, m.value) for m in loss] == [(h["step"], h["loss"]) for h in history]
    assert loss[-1].value < loss[0].value
    assert [m.value for m in client.get_metric_history(dpo.mlflow_run_id, "train/rewards/margins")][-1] == pytest.approx(0.2)
    assert run.data.metrics["rewards.margins"] == pytest.approx(0.2)
    # the manifest and config as artifacts
    names = {a.path for a in client.list_artifacts(dpo.mlflow_run_id)}
    assert names == {"manifest.json", "config.yaml", "files.json", "outputs"}
    assert {a.path for a in client.list_artifacts(dpo.mlflow_run_id, "outputs")} >= {"outputs/log_history.json"}
    local = client.download_artifacts(dpo.mlflow_run_id, "manifest.json", str(tmp_path))
    assert json.loads(open(local).read())["run_id"] == manifest.run_id
    index.close()


def test_outputs_stored_once_by_hash_and_hard_linked(ws, tmp_path):
    ledger_support.run_chain(tmp_path / "a")
    ledger_support.run_chain(tmp_path / "b")  # same configs in other directories: same bytes
    store = ContentStore(ws.store_dir)
    blobs = dict(store.iter_blobs())
    out = tmp_path / "a" / "sources" / "problems.jsonl"
    sha = sha256_file(out)
    assert sha in blobs and store.verify(sha)
    if os.geteuid() != 0:  # a hard link: no second copy of the bytes
        assert os.stat(blobs[sha]).st_ino == os.stat(out).st_ino
    else:  # root ignores the 0444 that guards a shared inode, so root's outputs are copied (ledger/store.py)
        assert os.stat(blobs[sha]).st_ino != os.stat(out).st_ino
    # inputs are copies (a user's own files may be edited in place later)
    index = Index(ws.index_db)
    shas = {sha for *_, sha, _ in index.db.execute("SELECT * FROM files").fetchall()}
    assert set(blobs) == shas
    assert len(blobs) == len(shas)  # 10 runs, each distinct byte string once
    index.close()


def test_damaged_blob_is_refused_on_read(ws, tmp_path):
    store = ContentStore(ws.store_dir)
    src = tmp_path / "x.txt"
    src.write_text("hello")
    sha = sha256_file(src)
    assert store.put(src, sha, link=False) and not store.put(src, sha, link=False)
    store.materialize(sha, tmp_path / "copy.txt")
    assert (tmp_path / "copy.txt").read_text() == "hello"
    os.chmod(store.path(sha), 0o644)
    store.path(sha).write_text("HELLO")
    with pytest.raises(CompassError, match="damaged"):
        store.materialize(sha, tmp_path / "copy2.txt")
    assert not (tmp_path / "copy2.txt").exists()
    with pytest.raises(CompassError, match="changed while it was recorded"):
        store.put(src, "0" * 64, link=False)


def test_cached_hit_makes_no_new_run_and_recording_is_idempotent(ws, tmp_path):
    chain = ledger_support.run_chain(tmp_path / "w")
    again = ledger_support.run_chain(tmp_path / "w")
    assert all(r.cached for r in again.values())
    index = Index(ws.index_db)
    assert index.count() == 5
    record_stage_run(chain["sft"].manifest, tmp_path / "w" / "sft")
    assert index.count() == 5
    assert len(tracker_for(ws).compass_runs()) == 5
    index.close()


def test_cached_hit_of_an_unrecorded_run_is_recorded(ws, tmp_path, tmp_path_factory, monkeypatch):
    """Runs made before the ledger existed (or whose recording failed) are recorded the next time they are used."""
    chain = ledger_support.run_chain(tmp_path / "w")
    other = ledger_support.workspace_for_test(tmp_path_factory, tmp_path / "other-home", monkeypatch)
    again = ledger_support.run_chain(tmp_path / "w")
    assert all(r.cached for r in again.values())
    index = Index(other.index_db)
    assert index.count() == 5 and index.run(chain["eval"].manifest.run_id) is not None
    index.close()


def test_lineage_links_inputs_to_the_runs_that_produced_them(ws, tmp_path):
    chain = ledger_support.run_chain(tmp_path / "w")
    ids = {k: r.manifest.run_id for k, r in chain.items()}
    index = Index(ws.index_db)
    assert index.parents(ids["eval"]) == [(ids["dpo"], "model")]
    assert sorted(index.parents(ids["dpo"])) == sorted([(ids["sft"], "model"), (ids["pairs"], "pairs")])
    assert index.parents(ids["sft"]) == [(ids["sources"], "data")]
    assert index.parents(ids["sources"]) == []
    assert dict(index.ancestors(ids["eval"])) == {ids["eval"]: 0, ids["dpo"]: 1, ids["sft"]: 2, ids["pairs"]: 2, ids["sources"]: 3}
    index.close()


def test_lineage_by_hash_when_inputs_are_copies_and_raw_sources_are_leaves(ws, tmp_path):
    raw = tmp_path / "raw.jsonl"
    raw.write_text('{"id": "r1", "pool": "raw", "x": 0.5, "y": 2.5}\n')
    chain = ledger_support.run_chain(tmp_path / "w", raw=raw)
    # a copy of the sft model elsewhere: its producer is found by the bytes
    copy = tmp_path / "elsewhere" / "model"
    copy.mkdir(parents=True)
    for f in (tmp_path / "w" / "sft" / "model").iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    result = execute_stage("eval", ledger_support.EvalConfig(), {"model": copy}, tmp_path / "eval2", name="eval-copy")
    index = Index(ws.index_db)
    assert index.parents(result.manifest.run_id) == [(chain["sft"].manifest.run_id, "model")]
    sources = index.run(chain["sources"].manifest.run_id)
    assert sources.summary["sources"] == "sources: gsm8k 12, math 8; raw.jsonl (48 B)"
    assert [(r, p) for r, p, *_ in index.files(sources.run_id, "in")] == [("in", "raw")]
    index.close()


def test_rerun_in_place_does_not_touch_stored_bytes(ws, tmp_path):
    """A hard-linked output is detached before the stage writes into its directory again."""
    src = tmp_path / "w" / "sources"
    execute_stage("sources", ledger_support.SourcesConfig(), {}, src)
    before = (src / "problems.jsonl").read_bytes()
    sha = sha256_file(src / "problems.jsonl")
    assert os.stat(src / "problems.jsonl").st_nlink == (1 if os.geteuid() == 0 else 2)  # root ignores 0444: a copy
    execute_stage("sources", ledger_support.SourcesConfig(noise=0.5), {}, src)  # open("w") in place
    assert (src / "problems.jsonl").read_bytes() != before
    assert ContentStore(ws.store_dir).verify(sha)
    assert detach_links(tmp_path / "nothing-here") == 0


def test_history_file_errors_name_the_file(ws, tmp_path):
    from compass.ledger.history import read_history

    (tmp_path / "log_history.json").write_text('{"oops": 1}')
    with pytest.raises(CompassError, match="log_history.json: expected a list"):
        read_history(tmp_path)
    (tmp_path / "log_history.json").write_text('[{"step": 1, "loss": 2.0, "epoch": 0.5}, {"loss": 1.0, "flag": true}]')
    assert read_history(tmp_path) == [("train/loss", 1, 2.0), ("train/epoch", 1, 0.5), ("train/loss", 1, 1.0)]
