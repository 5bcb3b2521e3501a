"""The stage kit's pure helpers: whole-run training figures after a resume."""
import pytest

from compass.errors import CompassError
from compass.stagekit import whole_run_training_figures


def test_a_resumed_run_reports_the_whole_runs_loss_mean_and_tokens():
    # 6 steps with per-step losses 6..1, logged every 2 steps; resumed from the checkpoint at step 4
    history = [{"step": 2, "loss": 5.5}, {"step": 4, "loss": 3.5}]
    figures = whole_run_training_figures(history, session_loss_mean=1.5, global_step=6, resume_step=4,
                                         tokens_seen=600, resume_tokens_seen=400, runtime_s=2.0)
    assert figures == {"train_tokens": 600, "train_tokens_this_run": 200, "train_tokens_per_s": 100.0,
                       "train_steps_this_run": 2, "train_loss_mean": pytest.approx(3.5)}


def test_an_unresumed_run_keeps_the_trainers_mean_and_a_gap_uses_the_last_log():
    assert whole_run_training_figures([], 2.0, 5, 0, 50, 0, 1.0)["train_loss_mean"] == 2.0
    # checkpoint at 3, last log at 2: step 3 counts at the last logged mean
    figures = whole_run_training_figures([{"step": 2, "loss": 4.0}], 1.0, 4, 3, 40, 30, 1.0)
    assert figures["train_loss_mean"] == pytest.approx((4.0 * 2 + 4.0 + 1.0) / 4)
    with pytest.raises(CompassError, match="no training loss before it"):
        whole_run_training_figures([{"step": 5, "loss": 1.0}], 1.0, 6, 3, 1, 0, 1.0)


def test_a_server_failure_in_the_resume_journal_is_asked_again_by_the_next_run(tmp_path):
    from compass.longdoc.streaming import NONE, OK, REJECT, TRANSIENT, Journal

    path = tmp_path / "j.jsonl"
    journal = Journal(path, "fp")
    journal.add(0, 0, "ok", {"x": 1})
    journal.add(1, 0, TRANSIENT, {"reason": "backend_error"})
    journal.add(2, 0, "reject", {"reason": "malformed"})
    assert list(journal.state) == [OK, REJECT, REJECT]  # in this run the failure is a reject ...
    with open(path, "rb") as fh:
        assert journal.read(1, fh) == ("reject", {"reason": "backend_error"})
    journal.close()
    again = Journal(path, "fp")
    assert list(again.state) == [OK, NONE, REJECT] and again.resumed == 2  # ... the next run sends it again
    assert again.needs(1, 0) and not again.needs(2, 0)
    again.add(1, 0, "ok", {"x": 2})
    again.close()
    third = Journal(path, "fp")
    assert list(third.state) == [OK, OK, REJECT]
    with open(path, "rb") as fh:
        assert third.read(1, fh) == ("ok", {"x": 2})
    third.close()


# --- the stage context: one definition of "same config and inputs" for resuming -------------------------


def test_the_resume_key_ignores_how_results_are_fetched_or_judged_and_nothing_else():
    from compass.stagekit import resume_key
    from compass.stages import doc_traces, evidence

    def key(config, inputs=None, version=1):
        return resume_key(config, inputs or {"pages": {"pages.jsonl": "a" * 64}}, version)

    base = evidence.Config(backend="openai", openai={"model": "m", "base_urls": ["http://h1:8000/v1"]})
    same = [base.model_copy(update={"max_reject_rate": 0.9}),
            evidence.Config(backend="openai", openai={"model": "m", "base_urls": ["http://h2:9/v1", "http://h3:9/v1"],
                                                      "concurrency": 7, "timeout_s": 3, "max_retries": 0})]
    assert {key(c) for c in same} == {key(base)}
    other = [base.model_copy(update={"seed": 43}),
             evidence.Config(backend="openai", openai={"model": "other", "base_urls": ["http://h1:8000/v1"]}),
             evidence.Config(backend="openai", openai={"model": "m", "base_urls": ["http://h1:8000/v1"],
                                                       "extra_body": {"top_k": 5}})]
    assert len({key(c) for c in [base, *other]}) == 4
    assert key(base, {"pages": {"pages.jsonl": "b" * 64}}) != key(base)  # other input bytes
    assert key(base, version=2) != key(base)  # the stage's code changed what it writes
    # workers (out of the cache key) is out of the resume key too; both endpoints of doc-traces are transport-neutral
    traces = doc_traces.Config(answerer="openai", vision_openai={"model": "v"}, text_openai={"model": "t"})
    moved = doc_traces.Config(answerer="openai", workers=3, vision_openai={"model": "v", "base_urls": ["http://x/v1"]},
                              text_openai={"model": "t", "concurrency": 2})
    assert key(traces) == key(moved)


def test_the_context_carries_shard_rank_and_hashes(tmp_path, monkeypatch):
    from compass.config import config_hash
    from compass.data.shards import Shard
    from compass.stagekit import build_context, resume_key
    from compass.stages import pairs

    config = pairs.Config(shard="1/3")
    hashes = {"traces": {"t.jsonl": "c" * 64}}
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "4")
    ctx = build_context("pairs", config, {"traces": tmp_path / "t.jsonl"}, tmp_path, input_hashes=hashes,
                        stage_version=pairs.VERSION)
    assert ctx.shard == Shard(index=1, count=3) and (ctx.rank, ctx.world_size, ctx.is_main) == (2, 4, False)
    assert ctx.config_hash == config_hash(config) and ctx.input_hashes == hashes
    assert ctx.resume_key == resume_key(config, hashes, pairs.VERSION)
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    plain = build_context("pairs", pairs.Config(), {}, tmp_path, input_hashes={}, stage_version=1)
    assert plain.shard is None and plain.is_main and plain.world_size == 1


# --- the record sink -----------------------------------------------------------------------------------------


def test_the_record_sink_writes_both_files_at_once_counts_reasons_and_gates(tmp_path):
    from compass.records import Reject
    from compass.stagekit import RecordSink

    with RecordSink("demo", tmp_path, "records.jsonl") as sink:
        sink.record({"id": "a"})
        sink.record('{"id": "b"}\n')  # a line serialised by a worker
        sink.reject(Reject(id="c", reason="bad", detail="why"))
        sink.reject({"id": "d", "method": "exact"}, reason="exact")
        assert not (tmp_path / "records.jsonl").exists()  # temp names until the block ends
        sink.check(0.5, what="items")  # 2 of 4: at the limit, passes
    assert (tmp_path / "records.jsonl").read_text() == '{"id": "a"}\n{"id": "b"}\n'
    assert [line.split(",")[0] for line in (tmp_path / "rejects.jsonl").read_text().splitlines()] == ['{"id": "c"', '{"id": "d"']
    assert (sink.kept, sink.rejected, sink.sorted_reasons()) == (2, 2, {"bad": 1, "exact": 1})

    out = tmp_path / "failed"
    with pytest.raises(CompassError, match=r"demo: 2 of 3 items rejected \(66.7% > max_reject_rate 50.0%\); reasons "
                                           r"\{'backend_error': 1, 'bad': 1\}; see .*failed/rejects.jsonl; the 1 transient"):
        with RecordSink("demo", out, "records.jsonl", transient=frozenset({"backend_error"})) as sink:
            sink.record({"id": "a"})
            sink.reject(Reject(id="b", reason="bad", detail=""))
            sink.reject(Reject(id="c", reason="backend_error", detail=""))
            sink.check(0.5, what="items")
    assert sorted(p.name for p in out.iterdir()) == ["rejects.jsonl"]  # the rejects the message names; no records

    with pytest.raises(ValueError):
        with RecordSink("demo", tmp_path / "error", "records.jsonl") as sink:
            sink.record({"id": "a"})
            raise ValueError("the stage failed")
    assert list((tmp_path / "error").iterdir()) == []  # neither file, no temp file


def test_one_per_record_seeding():
    from compass.data.pairs import record_rng as pairs_rng
    from compass.io import derived_bits, record_rng, record_seed
    from compass.stages import distill

    assert pairs_rng is record_rng and record_rng(42, "a").random() == record_rng(42, "a").random()
    assert record_rng(42, "a").random() != record_rng(42, "b").random() != record_rng(43, "a").random()
    assert distill.sample_seed(42, "p", 1) == record_seed(42, "p", 1) == derived_bits(42, "p", 1, nbytes=4) & 0x7FFFFFFF
