"""The distill stage: reference teacher (exact bytes), a scripted OpenAI-compatible teacher over real HTTP
(every reject reason), n samples, resume from a torn partial run, the reject-rate limit, the tiny local LLM."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from compass.config import load_stage_config
from compass.errors import CompassError
from support.scripted_server import ScriptedServer
from compass.io import hash_tree, read_jsonl, sha256_file, write_jsonl
from compass.records import Problem, Reject, Trace
from compass.runner import execute_stage
from compass.stagekit import Journal, build_context, journal_path, run_stage
from compass.stages import distill

PROBLEMS = [
    Problem(id="toy/1", source="toy", question="What is 2+3?", reference_answer="5", reference_solution="2 + 3 = 5."),
    Problem(id="toy/2", source="toy", question="りんごが3個、みかんが4個あります。全部で何個？", reference_answer="7",
            reference_solution="3 + 4 = 7 なので 7 個です。", lang="ja"),
    Problem(id="toy/3", source="toy", question="Half of 1,000?", reference_answer="500", reference_solution="1000 / 2 = 500."),
    Problem(id="toy/4", source="toy", question="What is 1+1?", reference_answer="2"),  # no solution to render
]


def xml(problem: str, thinking: str, answer: str) -> str:
    return f"<Problem>\n{problem}\n</Problem>\n\n<Thinking>\n{thinking}\n</Thinking>\n\n<Answer>\n\\boxed{{{answer}}}\n</Answer>"


@pytest.fixture
def problems(tmp_path) -> Path:
    path = tmp_path / "problems.jsonl"
    write_jsonl(path, PROBLEMS)
    return path


def config(**kw) -> distill.Config:
    return distill.Config(**kw)


def traces_of(out: Path) -> list[dict]:
    return read_jsonl(out / "traces")


def rejects_of(out: Path) -> list[dict]:
    return read_jsonl(out / "rejects.jsonl")


# --- reference teacher ----------------------------------------------------------------------------------


def test_reference_teacher_writes_verified_traces_and_same_bytes_twice(tmp_path, problems):
    cfg = config(max_reject_rate=0.3)
    first = execute_stage("distill", cfg, {"problems": problems}, tmp_path / "a")
    second = execute_stage("distill", cfg, {"problems": problems}, tmp_path / "b")
    assert first.manifest.outputs == second.manifest.outputs  # a data stage: same input and seed, same bytes
    assert sorted(first.manifest.outputs) == ["rejects.jsonl", "traces/traces-00000.jsonl"]

    traces = [Trace.model_validate(t) for t in traces_of(tmp_path / "a")]
    assert [t.id for t in traces] == ["toy/1#0", "toy/2#0", "toy/3#0"]
    ja = traces[1]
    assert ja.messages[0].content == "あなたは高度な数学AIアシスタントです。与えられた数学問題をステップバイステップで解き、最終回答を提示してください。"
    assert ja.messages[1].content == PROBLEMS[1].question
    assert ja.messages[2].content == ja.raw_output == xml(PROBLEMS[1].question, "3 + 4 = 7 なので 7 個です。", "7")
    assert (ja.problem_part, ja.thinking, ja.answer_part, ja.extracted_answer) == (
        PROBLEMS[1].question, "3 + 4 = 7 なので 7 個です。", "\\boxed{7}", "7")
    assert ja.verified and ja.teacher == "reference" and ja.lang == "ja"
    assert traces[0].messages[0].content.startswith("You are an advanced mathematical AI assistant.")
    assert [Reject.model_validate(r).reason for r in rejects_of(tmp_path / "a")] == ["no_reference"]
    assert first.manifest.metrics == {
        "samples": 4, "traces": 3, "verified": 3, "rejects": 1, "rejects_by_reason": {"no_reference": 1},
        "acceptance_rate": 0.75, "reject_rate": 0.25, "traces_by_source": {"toy": 3}, "output_tokens": 0,
        "teacher": "reference", "backend": "reference", "generated_this_run": 4, "resumed_records": 0, "retried_transient": 0,
    }
    again = execute_stage("distill", cfg, {"problems": problems}, tmp_path / "a")
    assert again.cached


def test_reject_rate_over_the_limit_fails_with_the_numbers(tmp_path, problems):
    with pytest.raises(CompassError, match=r"1 of 4 samples rejected \(25.0% > max_reject_rate 10.0%\); "
                                           r"reasons \{'no_reference': 1\}"):
        execute_stage("distill", config(max_reject_rate=0.1), {"problems": problems}, tmp_path / "out")
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_bad_input_and_config_fail_fast(tmp_path):
    dup = tmp_path / "dup.jsonl"
    write_jsonl(dup, [PROBLEMS[0], PROBLEMS[0]])
    with pytest.raises(CompassError, match="duplicate problem id 'toy/1'"):
        run_stage(distill, config(), {"problems": dup}, tmp_path / "out")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x", "source": "s", "question": "q"}\n')
    with pytest.raises(CompassError, match=r"bad.jsonl:1: field 'reference_answer': Field required"):
        run_stage(distill, config(), {"problems": bad}, tmp_path / "out")
    with pytest.raises(CompassError, match="backend 'openai' needs openai.model"):
        load_stage_config(distill.Config, None, {"backend": "openai"})
    with pytest.raises(CompassError, match="n must be 1"):
        load_stage_config(distill.Config, None, {"n": 2})
    with pytest.raises(CompassError, match="temperature 0 would be identical"):
        load_stage_config(distill.Config, None, {"backend": "openai", "openai": {"model": "m"}, "n": 2, "temperature": 0})


# --- a scripted teacher over HTTP -------------------------------------------------------------------------

REPLIES = {
    "What is 2+3?": xml("What is 2+3?", "2 + 3 = 5", "5"),
    PROBLEMS[1].question: "<think>\nscratch\n</think>\n" + xml("りんごとみかん", "3 + 4 = 7", "7個"),
    "Half of 1,000?": xml("Half of 1,000?", "1000 / 2 = 250", "250"),          # wrong answer
    "What is 1+1?": "The answer is 2.",                                          # no tags
    "Blank?": "   ",                                                             # empty
    "Crash?": None,                                                              # the server fails every time
}


def scripted_reply(body: dict) -> str:
    text = REPLIES[body["messages"][-1]["content"]]
    if text is None:
        raise RuntimeError("scripted failure")
    return text


@pytest.fixture
def teacher_problems(tmp_path) -> Path:
    extra = [Problem(id="toy/5", source="other", question="Blank?", reference_answer="1"),
             Problem(id="toy/6", source="other", question="Crash?", reference_answer="1")]
    path = tmp_path / "teacher_problems.jsonl"
    write_jsonl(path, PROBLEMS + extra)
    return path


def openai_config(server: ScriptedServer, **kw) -> distill.Config:
    settings = {"base_urls": [server.base_url], "model": "teacher-x", "concurrency": 4, "max_retries": 1,
                "backoff_base_s": 0.01, "backoff_max_s": 0.02}
    return config(backend="openai", openai=settings, max_reject_rate=1.0, **kw)


def test_openai_teacher_every_reject_reason(tmp_path, teacher_problems):
    with ScriptedServer(scripted_reply) as server:
        metrics = run_stage(distill, openai_config(server, temperature=0.0, max_tokens=64), {"problems": teacher_problems}, tmp_path)
    traces = {t["id"]: t for t in traces_of(tmp_path)}
    rejects = {r["id"]: r for r in rejects_of(tmp_path)}
    assert sorted(traces) == ["toy/1#0", "toy/2#0"]
    assert {i: r["reason"] for i, r in rejects.items()} == {
        "toy/3#0": "wrong_answer", "toy/4#0": "bad_tags", "toy/5#0": "empty", "toy/6#0": "server_error"}
    # the <think> block is dropped from the SFT target but kept in raw_output; "7個" matches "7"
    ja = traces["toy/2#0"]
    assert ja["messages"][2]["content"] == xml("りんごとみかん", "3 + 4 = 7", "7個")
    assert ja["raw_output"].startswith("<think>") and ja["extracted_answer"] == "7個" and ja["verified"]
    assert ja["teacher"] == "openai:teacher-x"
    assert ja["sampling"] == {"max_tokens": 64, "temperature": 0.0, "top_p": 0.95, "n": 1,
                                   "seed": distill.sample_seed(42, "toy/2", 0), "sample_index": 0, "attempts": 1,
                                   "output_tokens": 16, "finish_reason": "stop"}
    assert rejects["toy/3#0"]["detail"] == "answer '250' does not match reference '500'"
    assert rejects["toy/3#0"]["record"]["thinking"] == "1000 / 2 = 250"
    assert rejects["toy/4#0"]["detail"].startswith("not in the <Problem>/<Thinking>/<Answer> format: missing <Problem>")
    assert rejects["toy/6#0"]["detail"].startswith("HTTP 500") and rejects["toy/6#0"]["record"]["attempts"] == 2
    assert metrics["rejects_by_reason"] == {"server_error": 1, "empty": 1, "bad_tags": 1, "wrong_answer": 1}
    assert (metrics["traces"], metrics["acceptance_rate"], metrics["traces_by_source"]) == (2, 0.3333, {"toy": 2})

    # what the teacher was sent: docs/method.md system prompt by language + the format instruction, then the question
    sent = {r["messages"][-1]["content"]: r for r in server.requests_seen}
    ja_sent = sent[PROBLEMS[1].question]["messages"][0]["content"]
    assert ja_sent.startswith("あなたは高度な数学AIアシスタントです。") and "<Thinking>" in ja_sent
    assert sent["What is 2+3?"]["seed"] == distill.sample_seed(42, "toy/1", 0)


def test_keep_parsed_keeps_wrong_answers_unverified(tmp_path, teacher_problems):
    with ScriptedServer(scripted_reply) as server:
        metrics = run_stage(distill, openai_config(server, keep="parsed"), {"problems": teacher_problems}, tmp_path)
    traces = {t["id"]: t["verified"] for t in traces_of(tmp_path)}
    assert traces == {"toy/1#0": True, "toy/2#0": True, "toy/3#0": False}
    assert (metrics["traces"], metrics["verified"], metrics["rejects"]) == (3, 2, 3)


def test_n_samples_have_their_own_ids_and_seeds_and_shards(tmp_path, problems):
    with ScriptedServer(lambda body: xml("q", "t", "5")) as server:
        metrics = run_stage(distill, openai_config(server, n=3, shard_size=4), {"problems": problems}, tmp_path)
    seeds = sorted(r["seed"] for r in server.requests_seen)
    assert len(server.requests_seen) == 12 and len(set(seeds)) == 12
    assert sorted(p.name for p in (tmp_path / "traces").iterdir()) == ["traces-00000.jsonl"]  # only toy/1 is right
    assert sorted(t["id"] for t in traces_of(tmp_path)) == ["toy/1#0", "toy/1#1", "toy/1#2"]
    assert metrics["rejects_by_reason"] == {"wrong_answer": 9}


# --- resume ---------------------------------------------------------------------------------------------


def test_resume_after_a_torn_journal_line_finishes_exactly_once(tmp_path, problems):
    cfg = config(max_reject_rate=0.5, shard_size=2)
    whole = tmp_path / "whole"
    run_stage(distill, cfg, {"problems": problems}, whole)
    outcome = {r["id"]: r for r in [*traces_of(whole), *rejects_of(whole)]}

    # a run killed after two samples (answered out of order), in the middle of journalling a third
    part = tmp_path / "part"
    part.mkdir()
    ctx = build_context("distill", cfg, {"problems": problems}, part, input_hashes={"problems": hash_tree(problems)},
                        stage_version=distill.VERSION)
    journal = Journal(journal_path(part, distill.JOURNAL_TAG), ctx.resume_key)
    journal.add(2, 0, "ok", outcome["toy/3#0"])
    journal.add(0, 0, "ok", outcome["toy/1#0"])
    journal.close()
    with open(journal.path, "ab") as fh:
        fh.write(b'{"i": 1, "a": 0, "k": "ok", "v": {"id": "toy/2#0", "probl')  # torn: no newline
    metrics = run_stage(distill, cfg, {"problems": problems}, part)

    assert metrics["resumed_records"] == 2 and metrics["generated_this_run"] == 2
    assert hash_tree(part) == hash_tree(whole)  # same files, same bytes: nothing lost, nothing twice, input order
    assert metrics["traces"] == 3 and metrics["rejects"] == 1
    assert not journal.path.exists()  # the outputs are final


def test_a_partial_run_with_other_settings_is_started_over(tmp_path, problems):
    out = tmp_path / "out"
    run_stage(distill, config(max_reject_rate=0.5), {"problems": problems}, out)
    before = sha256_file(out / "traces" / "traces-00000.jsonl")
    metrics = run_stage(distill, config(max_reject_rate=0.5, teacher="dataset-solutions"), {"problems": problems}, out)
    assert metrics["resumed_records"] == 0 and metrics["generated_this_run"] == 4
    assert {t["teacher"] for t in traces_of(out)} == {"dataset-solutions"}
    assert sha256_file(out / "traces" / "traces-00000.jsonl") != before
    assert len(traces_of(out)) == 3


# --- local transformers teacher ---------------------------------------------------------------------------


def test_transformers_teacher_on_the_tiny_llm(tmp_path, problems, tiny_models):
    cfg = config(backend="transformers", transformers={"model_dir": str(tiny_models.llm), "batch_size": 2},
                 max_tokens=8, temperature=0.0, max_reject_rate=1.0)
    metrics = run_stage(distill, cfg, {"problems": problems}, tmp_path)
    # an untrained model does not write the format: every sample is refused, and says why
    assert metrics["samples"] == 4 and metrics["traces"] == 0
    assert set(metrics["rejects_by_reason"]) <= {"bad_tags", "empty"} and metrics["rejects"] == 4
    assert {json.dumps(r["record"]["sampling"]["finish_reason"]) for r in rejects_of(tmp_path)} <= {'"length"', '"stop"'}
    assert metrics["teacher"] == f"transformers:{Path(tiny_models.llm).name}"
