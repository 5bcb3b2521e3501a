"""Distill against a real HTTP server that is down, then back: the first run fails on the reject rate and says
how to go on; rerunning the same command once the server is up asks again exactly the samples the outage
cost (transient rejects are not final) and finishes. A reply with a lone surrogate is one named reject, not a
crash on every rerun."""
from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import pytest
import yaml
from cli_cases import assert_one_line_error, ledger_run_count, run_cli
from support.scripted_server import ScriptedServer

from compass.io import read_jsonl, write_jsonl
from compass.manifest import read_manifest
from compass.records import Problem

QUESTIONS = {f"What is {i} + {i}?": str(2 * i) for i in range(1, 5)}


def reply(body: dict) -> str:
    question = body["messages"][-1]["content"]
    answer = QUESTIONS[question]
    thinking = "\ud800 broken" if question == "What is 3 + 3?" and body.get("surrogate") else f"{answer}"
    return f"<Problem>\n{question}\n</Problem>\n\n<Thinking>\n{thinking}\n</Thinking>\n\n<Answer>\n\\boxed{{{answer}}}\n</Answer>"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def setup(tmp_path: Path, port: int, **extra) -> list:
    problems = tmp_path / "problems.jsonl"
    write_jsonl(problems, [Problem(id=f"q{i}", source="toy", question=q, reference_answer=a)
                           for i, (q, a) in enumerate(QUESTIONS.items())])
    config = tmp_path / "distill.yaml"
    config.write_text(yaml.safe_dump({
        "backend": "openai", "max_reject_rate": 0.3,
        "openai": {"base_urls": [f"http://127.0.0.1:{port}/v1"], "model": "scripted", "max_retries": 1,
                   "backoff_base_s": 0.01, "backoff_max_s": 0.02, "timeout_s": 5, "concurrency": 2, **extra},
    }))
    return ["distill", "--problems", problems, "--config", config, "--out", tmp_path / "out"]


def test_outage_then_recovery_asks_again_only_what_the_outage_cost(tmp_path, capsys):
    port = free_port()
    argv = setup(tmp_path, port)
    runs = ledger_run_count()
    down = run_cli(argv, capsys)  # nothing listens on the port: every request fails after its retry
    assert_one_line_error(down, "distill: 4 of 4 samples rejected", "server_error",
                          "asked again when you rerun the same command")
    out = tmp_path / "out"
    assert [r["reason"] for r in read_jsonl(out / "rejects.jsonl")] == ["server_error"] * 4
    assert read_manifest(out) is None and ledger_run_count() == runs

    with ScriptedServer(reply, port=port) as server:
        up = run_cli(argv, capsys)
        assert up.code == 0, up.err
        assert server.completed == 4  # each sample the outage cost, once
    manifest = read_manifest(out)
    assert (manifest.metrics["traces"], manifest.metrics["rejects"], manifest.metrics["retried_transient"]) == (4, 0, 4)
    assert read_jsonl(out / "rejects.jsonl") == [] and ledger_run_count() == runs + 1
    assert sorted(t["id"] for t in read_jsonl(out / "traces")) == ["q0#0", "q1#0", "q2#0", "q3#0"]


def test_a_reply_with_a_lone_surrogate_is_one_named_reject(tmp_path, capsys):
    with ScriptedServer(reply) as server:
        argv = setup(tmp_path, server.port, extra_body={"surrogate": True})
        first = run_cli(argv, capsys)
        assert first.code == 0, first.err
        [reject] = read_jsonl(tmp_path / "out" / "rejects.jsonl")
        assert reject["id"] == "q2#0" and reject["reason"] == "bad_encoding"
        assert re.fullmatch(r"reply holds a lone UTF-16 surrogate '\\ud800' at character \d+ \(not valid Unicode text\)",
                            reject["detail"]), reject["detail"]
        assert "\\ud800 broken" in reject["record"]["raw_output"]
        assert read_manifest(tmp_path / "out").metrics["rejects_by_reason"] == {"bad_encoding": 1}
        # the rerun is cached; --force redoes it the same way (the reject is final, not a crash)
        assert "cached" in run_cli(argv, capsys).out
        again = run_cli([*argv, "--force"], capsys)
        assert again.code == 0, again.err
        assert [json.loads(line)["reason"] for line in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()] == ["bad_encoding"]
