"""`compass runs show` checks the bytes it lists: a store blob that no longer hashes to its name (an output edited
in place while the store shared it by hard link) is named DAMAGED, a gone one MISSING, with the command that
restores them; `compass runs check --repair` restores it from the run directory and `show` says ok again."""
from __future__ import annotations

import json
import os

from cli_cases import run_cli

from compass.ledger.store import ContentStore
from compass.ledger.workspace import Workspace
from compass.manifest import read_manifest


def artifact_line(text: str, rel: str) -> str:
    return next(line for line in text.splitlines() if line.strip().startswith("out") and f" {rel} " in line)


def test_runs_show_names_a_damaged_blob_and_repair_restores_it(tmp_path, capsys):
    out = tmp_path / "fx"
    assert run_cli(["pdf-fixtures", "--n-docs", "1", "--min-extra-pages", "0", "--max-extra-pages", "0",
                    "--out", out], capsys).code == 0
    manifest = read_manifest(out)
    sha = manifest.outputs["questions.jsonl"]
    blob = ContentStore(Workspace.current().store_dir).path(sha)

    shown = run_cli(["runs", "show", manifest.run_id[:8]], capsys)
    assert shown.code == 0 and artifact_line(shown.out, "questions.jsonl").endswith(f"{sha}  ok")
    assert "not intact" not in shown.out

    # the store's copy edited in place (a new inode, so the run directory keeps the recorded bytes)
    damaged = blob.read_bytes().replace(b'"answer"', b'"ANSWER"', 1)
    blob.unlink()
    blob.write_bytes(damaged)
    assert damaged != (out / "questions.jsonl").read_bytes()
    os.utime(blob, ns=(1, 1))  # even with an old mtime, a changed blob is read again (its stat changed)
    shown = run_cli(["runs", "show", manifest.run_id[:8]], capsys)
    assert artifact_line(shown.out, "questions.jsonl").endswith(f"{sha}  DAMAGED")
    hint = next(line for line in shown.out.splitlines() if "not intact" in line)
    assert "out questions.jsonl (damaged)" in hint and "`compass runs check --repair` restores them" in hint
    assert [line for line in shown.out.splitlines() if line.strip().startswith("out") and line.endswith("ok")]

    assert run_cli(["runs", "check", "--repair"], capsys).code == 0
    assert blob.read_bytes() == (out / "questions.jsonl").read_bytes()
    shown = run_cli(["runs", "show", manifest.run_id[:8]], capsys)
    assert artifact_line(shown.out, "questions.jsonl").endswith(f"{sha}  ok") and "not intact" not in shown.out

    pdf_sha = manifest.outputs["pdfs/report-0000.pdf"]
    pdf_blob = ContentStore(Workspace.current().store_dir).path(pdf_sha)
    pdf_blob.unlink()
    shown = run_cli(["runs", "show", manifest.run_id[:8], "--json"], capsys)
    assert json.loads(shown.out)["run_id"] == manifest.run_id  # --json prints the manifest as it was recorded
    shown = run_cli(["runs", "show", manifest.run_id[:8]], capsys)
    assert artifact_line(shown.out, "pdfs/report-0000.pdf").endswith(f"{pdf_sha}  MISSING")
    assert "out pdfs/report-0000.pdf (missing)" in shown.out


def test_first_show_of_a_fresh_run_reads_no_blob(tmp_path, capsys, monkeypatch):
    """The store remembers each blob it writes in the stat cache, so `runs show` right after a run (a checkpoint of
    16 GB, say) reads none of it; a blob whose stat changes afterwards is read (the test above)."""
    import compass.io

    out = tmp_path / "fx"
    assert run_cli(["pdf-fixtures", "--n-docs", "2", "--min-extra-pages", "0", "--max-extra-pages", "0",
                    "--out", out], capsys).code == 0
    read = []
    real = compass.io.sha256_file
    monkeypatch.setattr(compass.io, "sha256_file", lambda path: read.append(path) or real(path))
    shown = run_cli(["runs", "show", read_manifest(out).run_id[:8]], capsys)
    assert shown.code == 0 and "not intact" not in shown.out
    assert read == []
