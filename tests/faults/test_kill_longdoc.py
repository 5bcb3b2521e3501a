"""SIGKILL of the journalled long-document stages (evidence, doc-questions, doc-traces) at a chosen point, then a
rerun of the same command: it asks the server only for what the journal did not hold at the kill, and its
output has the bytes of an uninterrupted run.

The kill point is a count of finished requests in the journal (its complete lines after the header), and the
figures are read from the journal after the kill, so nothing depends on how many more requests finished
between the check and the signal; the rerun's requests are counted from the moment the server has read every
request of the killed run."""
from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from cli_cases import run_cli
from support.scripted_server import ScriptedServer

from compass.io import sha256_file
from compass.manifest import read_manifest
from compass.stagekit import run_stage
from compass.stages import evidence, pages, pdf_fixtures

MAX_SIDE = 96


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Two generated reports (root/fx), their pages (root/pages) and lexical evidence (root/evidence)."""
    root = tmp_path_factory.mktemp("kill-longdoc")
    run_stage(pdf_fixtures, pdf_fixtures.Config(n_docs=2, min_extra_pages=0, max_extra_pages=1, seed=5), {}, root / "fx")
    run_stage(pages, pages.Config(max_long_side=MAX_SIDE, workers=1), {"pdfs": root / "fx" / "pdfs"}, root / "pages")
    run_stage(evidence, evidence.Config(), {"pages": root / "pages" / "pages.jsonl",
                                            "questions": root / "fx" / "questions.jsonl"}, root / "evidence")
    return root


def journal_entries(journals: list[Path]) -> int:
    """Finished requests the journals hold: complete lines after each one's header (a torn last line is not one)."""
    return sum(max(path.read_bytes().count(b"\n") - 1, 0) for path in journals if path.exists())


def kill_when_journalled(cmd: list[str], journals: list[Path], entries: int, timeout_s: float = 120) -> int:
    """Start `cmd`, SIGKILL it once its journals hold at least `entries` finished requests; returns how many they
    hold after the kill (what a rerun may skip)."""
    proc = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout_s
    while journal_entries(journals) < entries:
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (exit {proc.returncode}) before its journal held {entries} entries: "
                                 f"{proc.stderr.read().decode()[-2000:]}")
        assert time.monotonic() < deadline, f"the journal never held {entries} entries"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    return journal_entries(journals)


def settled_arrivals(server: ScriptedServer, quiet_s: float = 1.0, timeout_s: float = 30) -> int:
    """Requests the server has read, once no more have come for `quiet_s`: a killed run's last requests may still sit
    in the server's socket buffers (a loaded machine reads them late), and must not be counted as the rerun's."""
    deadline = time.monotonic() + timeout_s
    seen, since = len(server.requests_seen), time.monotonic()
    while time.monotonic() - since < quiet_s:
        assert time.monotonic() < deadline, "the server kept receiving requests after the kill"
        time.sleep(0.05)
        if len(server.requests_seen) != seen:
            seen, since = len(server.requests_seen), time.monotonic()
    return seen


class Brake:
    """A server latency that is `fast_s` for the first `after` requests, then `slow_s` until released: the run to be
    killed cannot finish before the test, however late a loaded machine schedules it, sees the journal fill."""

    def __init__(self, after: int, fast_s: float = 0.02, slow_s: float = 2.0):
        self.after, self.fast_s, self.slow_s = after, fast_s, slow_s
        self.server: ScriptedServer | None = None
        self.released = False

    def __call__(self, body: dict) -> float:
        return self.fast_s if self.released or len(self.server.requests_seen) <= self.after else self.slow_s

    def serve(self, reply, slots: int) -> ScriptedServer:
        self.server = ScriptedServer(reply, latency_s=self, slots=slots)
        return self.server


def cli_cmd(*args) -> list:
    return [sys.executable, "-m", "compass.cli", *args]


def pure_hash(body: dict) -> str:
    return hashlib.sha256(json.dumps(body["messages"], sort_keys=True).encode()).hexdigest()[:12]


def endpoint(server: ScriptedServer, concurrency: int) -> dict:
    return {"base_urls": [server.base_url], "model": "m", "concurrency": concurrency, "timeout_s": 30}


# --- evidence ---------------------------------------------------------------------------------------------------


def test_evidence_killed_after_60_pages_resumes_to_the_uninterrupted_bytes(corpus, tmp_path, capsys):
    def reply(body):  # a pure function of the prompt, so every run gets the same answers
        text = json.dumps(body["messages"], sort_keys=True)
        return json.dumps({"evidence": f"quote {pure_hash(body)}", "relevance_score": len(text) % 11})

    brake = Brake(after=64)
    with brake.serve(reply, slots=4) as server:
        config = tmp_path / "evidence.yaml"
        config.write_text(yaml.safe_dump({"backend": "openai", "openai": endpoint(server, 4)}))

        def argv(out: Path) -> list:
            return ["evidence", "--out", out, "--pages", corpus / "pages" / "pages.jsonl",
                    "--questions", corpus / "fx" / "questions.jsonl", "--config", config]

        killed = tmp_path / "killed"
        journal = killed / ".evidence-journal.jsonl"
        done = kill_when_journalled(cli_cmd(*argv(killed)), [journal], 60)
        assert done >= 60 and not (killed / "manifest.json").exists()
        brake.released = True
        before = settled_arrivals(server)
        assert run_cli(argv(killed), capsys).code == 0
        resent = len(server.requests_seen) - before
        assert run_cli(argv(tmp_path / "whole"), capsys).code == 0
    metrics = read_manifest(killed).metrics
    assert metrics["resumed_pages"] == done and metrics["requests_sent"] == resent
    assert resent + done == metrics["pages"] == read_manifest(tmp_path / "whole").metrics["pages"] > done
    assert sha256_file(killed / "evidence.jsonl") == sha256_file(tmp_path / "whole" / "evidence.jsonl")
    assert not journal.exists()  # gone once the outputs are final


# --- doc-questions ---------------------------------------------------------------------------------------------


def test_doc_questions_killed_mid_run_resumes_to_the_uninterrupted_bytes(corpus, tmp_path, capsys):
    def reply(body):  # the question names its seed pages: a pure function of the prompt
        parts = body["messages"][0]["content"]
        labels = [p["text"] for p in parts if p["type"] == "text" and p["text"].startswith("Page ")]
        return json.dumps({"question": f"What do {', '.join(labels)} say ({pure_hash(body)})?",
                           "answer": str(len(labels)), "answer_format": "Int"})

    n_per_doc = 10
    brake = Brake(after=8)
    with brake.serve(reply, slots=2) as server:
        config = tmp_path / "questions.yaml"
        config.write_text(yaml.safe_dump({"openai": endpoint(server, 2), "n_per_doc": n_per_doc, "max_seed_pages": 4,
                                          "seed": 3}))

        def argv(out: Path) -> list:
            return ["doc-questions", "--out", out, "--pages", corpus / "pages" / "pages.jsonl", "--config", config]

        killed = tmp_path / "killed"
        journal = killed / ".synth-journal.jsonl"
        done = kill_when_journalled(cli_cmd(*argv(killed)), [journal], 6)
        assert not (killed / "manifest.json").exists()
        brake.released = True
        before = settled_arrivals(server)
        assert run_cli(argv(killed), capsys).code == 0
        resent = len(server.requests_seen) - before
        assert run_cli(argv(tmp_path / "whole"), capsys).code == 0
    total = 2 * n_per_doc
    assert 6 <= done < total and resent == total - done
    assert read_manifest(killed).metrics["questions"] == total
    assert sha256_file(killed / "questions.jsonl") == sha256_file(tmp_path / "whole" / "questions.jsonl")
    assert not journal.exists()


# --- doc-traces ------------------------------------------------------------------------------------------------


def test_doc_traces_killed_mid_run_resumes_to_the_uninterrupted_bytes(corpus, tmp_path, capsys):
    def reply(body):  # both branches: an answer that is a pure function of the prompt
        branch = "text" if body["messages"][0]["role"] == "system" else "vision"
        return f"<think>scratch</think>{branch} answer {pure_hash(body)}"

    brake = Brake(after=8)
    with brake.serve(reply, slots=2) as server:
        config = tmp_path / "traces.yaml"
        config.write_text(yaml.safe_dump({"answerer": "openai", "top_k": 4, "workers": 1,
                                          "vision_openai": endpoint(server, 1), "text_openai": endpoint(server, 1)}))

        def argv(out: Path) -> list:
            return ["doc-traces", "--out", out, "--evidence", corpus / "evidence" / "evidence.jsonl",
                    "--questions", corpus / "fx" / "questions.jsonl", "--pages", corpus / "pages" / "pages.jsonl",
                    "--config", config]

        killed = tmp_path / "killed"
        journals = [killed / ".answers-vision-journal.jsonl", killed / ".answers-text-journal.jsonl"]
        done = kill_when_journalled(cli_cmd(*argv(killed)), journals, 6)
        assert not (killed / "manifest.json").exists()
        brake.released = True
        before = settled_arrivals(server)
        assert run_cli(argv(killed), capsys).code == 0
        resent = len(server.requests_seen) - before
        assert run_cli(argv(tmp_path / "whole"), capsys).code == 0
    questions = read_manifest(tmp_path / "whole").metrics["questions"]
    assert 6 <= done < questions and resent == questions - done
    assert read_manifest(killed).metrics["answer_rejects"] == 0
    assert sha256_file(killed / "examples.jsonl") == sha256_file(tmp_path / "whole" / "examples.jsonl")
    assert not any(path.exists() for path in journals)
