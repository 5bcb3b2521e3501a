"""Failed `pages` and `evidence` runs, through the CLI: a bad PDF, the reject-rate gate, a teacher that is down
or answers garbage, a missing page image, a SIGKILL. Each leaves no empty output file, no orphan temp file
(`.<name>.<random>.tmp`), no lock and, when the run made the directory and wrote nothing worth keeping, no
directory; what it keeps (rejects, the resume journal) lets a rerun resume, and `--force` clears it."""
from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from cli_cases import assert_one_line_error, ledger_run_count, run_cli, tree
from support.scripted_server import ScriptedServer

from compass.io import read_jsonl, sha256_file
from compass.manifest import read_manifest
from compass.stagekit import ATOMIC_TEMP, LOCK_NAME, MARKER_NAME, run_stage
from compass.stages import pages, pdf_fixtures

MAX_SIDE = "48"  # tiny renders: what is tested is what a failure leaves, not the pixels


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """One generated report (root/fx/pdfs, root/fx/questions.jsonl), its pages (root/pages), and the first two
    of its questions (root/two-questions.jsonl: 2 x its page count evidence requests)."""
    root = tmp_path_factory.mktemp("leftovers")
    run_stage(pdf_fixtures, pdf_fixtures.Config(n_docs=1, min_extra_pages=0, max_extra_pages=0, seed=3), {}, root / "fx")
    run_stage(pages, pages.Config(max_long_side=int(MAX_SIDE), workers=1), {"pdfs": root / "fx" / "pdfs"}, root / "pages")
    lines = (root / "fx" / "questions.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    (root / "two-questions.jsonl").write_text("".join(lines[:2]), encoding="utf-8")
    return root


def assert_no_leftovers(out: Path) -> None:
    """No empty file, no temp file of an atomic write, no lock, no empty directory under `out`."""
    for path in out.rglob("*"):
        assert not ATOMIC_TEMP.match(path.name), f"orphan temp file {path}"
        assert path.name != LOCK_NAME, f"lock left behind: {path}"
        if path.is_file():
            assert path.stat().st_size > 0, f"empty output left behind: {path}"
        elif path.is_dir():
            assert any(path.iterdir()), f"empty directory left behind: {path}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- pages ----------------------------------------------------------------------------------------------------


def bad_pdfs(root: Path) -> Path:
    pdfs = root / "bad-pdfs"
    pdfs.mkdir()
    (pdfs / "broken.pdf").write_bytes(b"%PDF-1.4\nthis is not a PDF body\n%%EOF\n")
    (pdfs / "empty.pdf").write_bytes(b"")
    return pdfs


def test_pages_failing_its_gate_keeps_only_the_rejects_and_force_clears_them(tmp_path, corpus, capsys):
    pdfs = bad_pdfs(tmp_path)
    out = tmp_path / "out"
    argv = ["pages", "--pdfs", pdfs, "--out", out, "--max-long-side", MAX_SIDE, "--workers", "1"]
    runs = ledger_run_count()
    failed = run_cli(argv, capsys)
    assert_one_line_error(failed, "pages: 2 of 2 PDFs rejected", f"see {out / 'rejects.jsonl'}",
                          "rerun with --force")
    # pages.jsonl was empty and images/ held nothing: both gone; the rejects the message points at stay
    assert sorted(tree(out)) == [MARKER_NAME, "rejects.jsonl"]
    assert sorted((r["id"], r["reason"]) for r in read_jsonl(out / "rejects.jsonl")) == [
        ("broken", "corrupt"), ("empty", "empty")]
    assert_no_leftovers(out)
    assert read_manifest(out) is None and ledger_run_count() == runs

    # the same command fails the same way (nothing stale is taken as output), then the input is fixed
    assert run_cli(argv, capsys).code == 2 and sorted(tree(out)) == [MARKER_NAME, "rejects.jsonl"]
    for pdf in pdfs.iterdir():
        pdf.unlink()
    (pdfs / "report.pdf").write_bytes((corpus / "fx" / "pdfs" / "report-0000.pdf").read_bytes())
    assert run_cli(argv + ["--force"], capsys).code == 0
    assert read_jsonl(out / "rejects.jsonl") == [] and ledger_run_count() == runs + 1
    records = read_jsonl(out / "pages.jsonl")
    assert len(records) == len(read_jsonl(corpus / "pages" / "pages.jsonl")) and records[0]["doc_id"] == "report"
    assert not any(ATOMIC_TEMP.match(p.name) for p in out.rglob("*"))


def test_pages_without_any_pdf_leaves_no_directory(tmp_path, capsys):
    pdfs = tmp_path / "notes"
    pdfs.mkdir()
    (pdfs / "readme.txt").write_text("no PDFs here")
    out = tmp_path / "new" / "pages"
    assert_one_line_error(run_cli(["pages", "--pdfs", pdfs, "--out", out], capsys), "no .pdf files under")
    assert not out.exists()


def test_a_killed_pages_run_reruns_to_the_uninterrupted_bytes(tmp_path, corpus):
    """SIGKILL once the first page image is written: its temp files stay (nothing ran to tidy); the rerun drops
    them and writes what an uninterrupted run writes."""
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "compass.cli", "pages", "--pdfs", str(corpus / "fx" / "pdfs"), "--out", str(out),
           "--max-long-side", "400", "--workers", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = out / "images" / "report-0000" / "page-0000.png"
    deadline = time.monotonic() + 120
    while not first.exists() and proc.poll() is None:
        assert time.monotonic() < deadline, "the pages run never wrote its first image"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "manifest.json").exists()
    (out / ".pages.jsonl.killed01.tmp").write_text("what a killed atomic write leaves")  # whatever the kill hit
    rerun = subprocess.run(cmd, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    whole = tmp_path / "whole"
    run_stage(pages, pages.Config(max_long_side=400, workers=1), {"pdfs": corpus / "fx" / "pdfs"}, whole)
    produced = {k: v for k, v in tree(out).items() if k not in (MARKER_NAME, "manifest.json")}
    assert produced == tree(whole)
    assert not [p for p in out.rglob("*") if ATOMIC_TEMP.match(p.name) or p.name == LOCK_NAME]


# --- evidence -------------------------------------------------------------------------------------------------


def evidence_reply(body: dict) -> str:
    """A pure function of the prompt, so every run gets the same answers."""
    text = json.dumps(body["messages"], sort_keys=True)
    return json.dumps({"evidence": f"quote {len(text)}", "relevance_score": len(text) % 11})


def evidence_argv(corpus: Path, out: Path, config: Path) -> list:
    return ["evidence", "--pages", corpus / "pages" / "pages.jsonl", "--questions", corpus / "two-questions.jsonl",
            "--out", out, "--config", config]


def openai_config(tmp_path: Path, port: int, **fields) -> Path:
    config = tmp_path / "evidence.yaml"
    config.write_text(yaml.safe_dump({
        "backend": "openai", "parse_retries": 0, **fields,
        "openai": {"base_urls": [f"http://127.0.0.1:{port}/v1"], "model": "scripted", "max_retries": 0,
                   "timeout_s": 5, "concurrency": 4}}))
    return config


def test_evidence_with_the_teacher_down_keeps_its_journal_and_resumes_when_it_is_back(tmp_path, corpus, capsys):
    port = free_port()
    out = tmp_path / "out"
    argv = evidence_argv(corpus, out, openai_config(tmp_path, port))
    runs = ledger_run_count()
    down = run_cli(argv, capsys)  # nothing listens on the port
    assert_one_line_error(down, "evidence:", "pages rejected", "backend_error",
                          "asked again when you rerun the same command")
    # evidence.jsonl was empty: gone; the rejects and the journal of what was asked stay
    kept = sorted(tree(out))
    assert kept == sorted([MARKER_NAME, "rejects.jsonl", ".evidence-journal.jsonl"]), kept
    assert {r["reason"] for r in read_jsonl(out / "rejects.jsonl")} == {"backend_error"}
    assert_no_leftovers(out)
    assert read_manifest(out) is None and ledger_run_count() == runs

    with ScriptedServer(evidence_reply, port=port) as server:
        assert run_cli(argv, capsys).code == 0
        asked = server.completed
        whole = tmp_path / "whole"
        assert run_cli(evidence_argv(corpus, whole, tmp_path / "evidence.yaml"), capsys).code == 0
    metrics = read_manifest(out).metrics
    assert metrics["rejected_pages"] == 0 and metrics["resumed_pages"] == 0  # transient rejects are asked again
    assert asked == metrics["requests_sent"] == metrics["pages"] > 0
    assert sha256_file(out / "evidence.jsonl") == sha256_file(whole / "evidence.jsonl")
    assert sorted(tree(out)) == sorted([MARKER_NAME, "evidence.jsonl", "manifest.json", "rejects.jsonl"])
    assert ledger_run_count() == runs + 2


def test_evidence_failing_its_gate_on_garbage_replies_resumes_without_asking_again(tmp_path, corpus, capsys):
    port = free_port()
    out = tmp_path / "out"
    argv = evidence_argv(corpus, out, openai_config(tmp_path, port))
    with ScriptedServer(lambda body: "not json at all", port=port) as server:
        failed = run_cli(argv, capsys)
        assert_one_line_error(failed, "evidence:", "malformed_json", "rerun with a higher --max-reject-rate")
        assert_no_leftovers(out)
        assert not (out / "evidence.jsonl").exists() and (out / ".evidence-journal.jsonl").is_file()
        asked = server.completed
        # the gate is not part of the journal's fingerprint: a higher limit takes the journalled answers as they are
        accepted = run_cli(argv + ["--max-reject-rate", "1"], capsys)
        assert accepted.code == 0, accepted.err
        assert server.completed == asked
    metrics = read_manifest(out).metrics
    assert metrics["requests_sent"] == 0 and metrics["resumed_pages"] == asked == metrics["rejected_pages"]
    assert metrics["pages"] == 0 and (out / "evidence.jsonl").read_bytes() == b""  # accepted: every page rejected
    assert not (out / ".evidence-journal.jsonl").exists()

    # --force on a finished run's directory starts over (and asks again)
    with ScriptedServer(evidence_reply, port=port) as server:
        assert run_cli(argv + ["--force"], capsys).code == 0
        assert server.completed == asked
    assert read_manifest(out).metrics["rejected_pages"] == 0


def test_evidence_with_a_missing_page_image_leaves_no_directory(tmp_path, corpus, capsys):
    pages_dir = tmp_path / "pages"
    pages_dir.mkdir()
    (pages_dir / "pages.jsonl").write_bytes((corpus / "pages" / "pages.jsonl").read_bytes())  # images not copied
    port = free_port()
    out = tmp_path / "new" / "evidence"
    argv = ["evidence", "--pages", pages_dir / "pages.jsonl", "--questions", corpus / "two-questions.jsonl",
            "--out", out, "--config", openai_config(tmp_path, port)]
    with ScriptedServer(evidence_reply, port=port) as server:
        result = run_cli(argv, capsys)
        assert server.completed == 0
    assert_one_line_error(result, "page-0000.png does not exist", code=2)
    assert not out.exists()


def test_a_page_image_of_another_type_is_one_line_naming_it(tmp_path):
    from compass.errors import CompassError
    from compass.longdoc.evidence import image_data_url

    gif = tmp_path / "page-0000.gif"
    gif.write_bytes(b"GIF89a")
    with pytest.raises(CompassError, match=r"page-0000.gif: unsupported type '.gif'; pages must be .jpeg, .jpg, .png"):
        image_data_url(gif)
