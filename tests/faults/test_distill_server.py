"""Generation against real servers on 127.0.0.1: `transformers serve` on the tiny LLM behind a fault-injecting
proxy (500, 429, dropped connections, slow answers), and a kill -9 of `compass distill` mid-run, then resume."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.fault_proxy import FaultProxy

from compass.errors import CompassError
from compass.generate import GenRequest, OpenAIBackend
from support.scripted_server import ScriptedServer
from compass.io import hash_tree, read_jsonl, write_jsonl
from compass.records import Problem
from compass.stagekit import run_stage
from compass.stages import distill

PROMPTS = ["What is 2+3?", "Name a prime.", "りんごは何個？"]


def requests(max_tokens: int = 12) -> list[GenRequest]:
    return [GenRequest(f"r{i}", [{"role": "system", "content": "math"}, {"role": "user", "content": p}],
                       max_tokens=max_tokens, temperature=0.0) for i, p in enumerate(PROMPTS)]


def backend(url: str, model: str, **kw) -> OpenAIBackend:
    settings = dict(concurrency=3, backoff_base_s=0.02, backoff_max_s=0.1, timeout_s=30.0, max_retries=5)
    settings.update(kw)
    return OpenAIBackend([url], model, **settings)


def test_retries_through_a_faulty_proxy_give_the_servers_own_answers(served_tiny_llm):
    # greedy decoding: the answer of a request is fixed, so a retried request must bring back the same text
    direct = {r.id: r for r in backend(served_tiny_llm.base_url, served_tiny_llm.model).generate(requests())}
    assert all(r.ok and r.attempts == 1 and r.output_tokens == 12 and r.text for r in direct.values())

    faults = {1: "500", 2: "429", 3: "drop", 4: "slow"}
    with FaultProxy(served_tiny_llm.root, faults, retry_after_s=0.05, slow_s=3.0) as proxy:
        via_proxy = {r.id: r for r in backend(proxy.base_url, served_tiny_llm.model, timeout_s=1.0).generate(requests())}
    assert {i: (r.text, r.error, r.attempts) for i, r in via_proxy.items()} == {
        i: (r.text, None, 5) for i, r in direct.items()
    }
    assert dict(proxy.injected) == {"500": 3, "429": 3, "drop": 3, "slow": 3}


def test_a_refused_request_is_not_retried(served_tiny_llm):
    # the server refuses a model it does not serve with a 4xx: retrying cannot help
    [result] = list(backend(served_tiny_llm.base_url, "no-such-model").generate(requests()[:1]))
    assert result.text is None and result.attempts == 1
    assert result.error.startswith("HTTP 400 from ") and "no-such-model" in result.error


def test_distill_against_transformers_serve_rejects_untrained_output(served_tiny_llm, tmp_path):
    problems = tmp_path / "problems.jsonl"
    write_jsonl(problems, [Problem(id=f"p{i}", source="toy", question=q, reference_answer="5") for i, q in enumerate(PROMPTS)])
    settings = {"base_urls": [served_tiny_llm.base_url], "model": served_tiny_llm.model, "concurrency": 2}
    cfg = distill.Config(backend="openai", openai=settings, max_tokens=16)
    with pytest.raises(CompassError, match=r"distill: 3 of 3 samples rejected \(100.0% > max_reject_rate 50.0%\)"):
        run_stage(distill, cfg, {"problems": problems}, tmp_path / "out")
    rejects = read_jsonl(tmp_path / "out" / "rejects.jsonl")
    assert sorted(r["id"] for r in rejects) == ["p0#0", "p1#0", "p2#0"]
    assert {r["reason"] for r in rejects} <= {"bad_tags", "empty"}
    assert {r["record"]["teacher"] for r in rejects} == {f"openai:{served_tiny_llm.model}"}
    # a looser limit reuses the finished samples instead of asking again
    metrics = run_stage(distill, cfg.model_copy(update={"max_reject_rate": 1.0}), {"problems": problems}, tmp_path / "out")
    assert (metrics["generated_this_run"], metrics["resumed_records"], metrics["rejects"]) == (0, 3, 3)


# --- kill -9 mid-run, then resume ------------------------------------------------------------------------

N_PROBLEMS = 60


def answer_of(i: int) -> str:
    return str(i + 1)


def kill_reply(body: dict) -> str:
    question = body["messages"][-1]["content"]
    i = int(question.split()[2])
    if i % 7 == 3:
        return "no tags here"
    answer = str(i + 2) if i % 5 == 1 else answer_of(i)  # every fifth is wrong
    return f"<Problem>\n{question}\n</Problem>\n\n<Thinking>\n{i} + 1\n</Thinking>\n\n<Answer>\n\\boxed{{{answer}}}\n</Answer>"


def lines_in(out: Path) -> int:
    """Samples finished so far: the lines of distill's resume journal after its header."""
    journal = out / f".{distill.JOURNAL_TAG}-journal.jsonl"
    return max(0, journal.read_bytes().count(b"\n") - 1) if journal.is_file() else 0


def test_kill_and_resume_gives_exactly_the_uninterrupted_output(tmp_path):
    problems = tmp_path / "problems.jsonl"
    write_jsonl(problems, [Problem(id=f"k{i:03d}", source="toy", question=f"What is {i} + 1?", reference_answer=answer_of(i))
                           for i in range(N_PROBLEMS)])
    with ScriptedServer(kill_reply, latency_s=0.04, slots=2) as server:
        openai = f"{{base_urls: [{server.base_url}], model: scripted, concurrency: 4}}"
        args = [sys.executable, "-m", "compass.cli", "distill", "--problems", str(problems), "--backend", "openai",
                "--openai", openai, "--max-reject-rate", "1.0", "--shard-size", "16"]
        env = {**os.environ, "TQDM_DISABLE": "1"}
        out = tmp_path / "killed"
        proc = subprocess.Popen([*args, "--out", str(out)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while lines_in(out) < 20:
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "distill made no progress"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        partial = lines_in(out)
        assert 20 <= partial < N_PROBLEMS and not (out / "manifest.json").exists()

        resumed = subprocess.run([*args, "--out", str(out)], env=env, capture_output=True, text=True, timeout=120)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr

        whole = tmp_path / "whole"
        run_stage(distill, distill.Config(backend="openai", openai={"base_urls": [server.base_url], "model": "scripted"},
                                   max_reject_rate=1.0, shard_size=16), {"problems": problems}, whole)

    def records(root: Path) -> dict[str, list[dict]]:
        return {"traces": read_jsonl(root / "traces"), "rejects": read_jsonl(root / "rejects.jsonl")}

    got, want = records(out), records(whole)
    for kind in ("traces", "rejects"):
        ids = [r["id"] for r in got[kind]]
        assert len(ids) == len(set(ids)), f"duplicate {kind}"
        assert got[kind] == want[kind]  # written from the journal in input order, whatever order the answers came in
    expected_ids = {f"k{i:03d}#0" for i in range(N_PROBLEMS)}
    assert {r["id"] for r in got["traces"]} | {r["id"] for r in got["rejects"]} == expected_ids
    assert hash_tree(out, exclude=["manifest.json"]) == hash_tree(whole)  # the resumed run's bytes are the uninterrupted run's
    reasons = sorted(r["reason"] for r in got["rejects"])
    assert reasons.count("bad_tags") == sum(1 for i in range(N_PROBLEMS) if i % 7 == 3)
    assert reasons.count("wrong_answer") == sum(1 for i in range(N_PROBLEMS) if i % 5 == 1 and i % 7 != 3)
    assert "resumed_records" in resumed.stdout
