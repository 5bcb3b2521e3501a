"""Output directories and locks, through the CLI as a user meets them: compass writes only into new, empty or
compass-made directories, never deletes what it did not write, refuses an --out that overlaps an input, and
one run at a time holds a workdir or an --out (a second one refuses naming the holder; a dead holder's lock
is taken over)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from cli_cases import assert_one_line_error, ledger_run_count, run_cli, tree
from support import echo_stage

from compass import stages
from compass.stagekit import LOCK_NAME, MARKER_NAME


@pytest.fixture(autouse=True)
def test_stages(monkeypatch):
    monkeypatch.setitem(stages.STAGES, "echo", "support.echo_stage")
    monkeypatch.setitem(stages.STAGES, "gate", "support.gate_stage")
    echo_stage.CALLS.clear()


@pytest.fixture
def text(tmp_path) -> Path:
    path = tmp_path / "inputs" / "in.txt"
    path.parent.mkdir()
    path.write_text("hello")
    return path


def test_out_with_a_users_files_is_refused_and_left_alone(tmp_path, text, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    runs = ledger_run_count()
    result = run_cli(["echo", "--text", text, "--out", out], capsys)
    assert_one_line_error(result, str(out), "compass did not write (thesis.tex)", "choose another output directory")
    assert tree(out) == {"thesis.tex": b"years of work"} and echo_stage.CALLS == [] and ledger_run_count() == runs


def test_empty_and_new_directories_are_taken_and_marked(tmp_path, text, capsys):
    (tmp_path / "empty").mkdir()
    for out in (tmp_path / "empty", tmp_path / "new" / "deep"):
        assert run_cli(["echo", "--text", text, "--out", out], capsys).code == 0
        assert (out / MARKER_NAME).is_file() and (out / "out.txt").read_text() == "hello!"


def test_a_rerun_never_deletes_a_file_put_beside_the_outputs(tmp_path, text, capsys):
    out = tmp_path / "out"
    assert run_cli(["echo", "--text", text, "--out", out], capsys).code == 0
    (out / "my-notes.md").write_text("keep me")
    result = run_cli(["echo", "--text", text, "--out", out, "--repeat", "2"], capsys)
    assert_one_line_error(result, "my-notes.md", "does not delete files it did not write")
    assert (out / "my-notes.md").read_text() == "keep me" and (out / "out.txt").read_text() == "hello!"
    (out / "my-notes.md").unlink()
    assert run_cli(["echo", "--text", text, "--out", out, "--repeat", "2"], capsys).code == 0
    assert (out / "out.txt").read_text() == "hello!!"


@pytest.mark.parametrize("where, relation", [
    ("input-dir", "is the input"), ("inside-input", "is inside input"), ("holds-input", "holds input"),
])
def test_out_overlapping_an_input_is_refused_before_anything_runs(tmp_path, text, capsys, where, relation):
    out = {"input-dir": text.parent, "inside-input": text.parent / "sub", "holds-input": tmp_path}[where]
    given = text.parent if where != "input-dir" else text.parent
    before = tree(tmp_path)
    result = run_cli(["echo", "--text", given if where != "input-dir" else text.parent, "--out", out], capsys) \
        if where != "input-dir" else run_cli(["echo", "--text", text.parent, "--out", out], capsys)
    assert_one_line_error(result, relation, "'text'")
    assert tree(tmp_path) == before and not (text.parent / "sub").exists() and echo_stage.CALLS == []


def test_out_that_is_the_working_area_is_refused(tmp_path, text, capsys, monkeypatch):
    work = tmp_path / "project" / "sub"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    for out in (".", "..", "/"):
        result = run_cli(["echo", "--text", text, "--out", out], capsys)
        assert_one_line_error(result, "refusing to write into the filesystem root, the home directory, or the current directory")
    assert sorted(os.listdir(work)) == []


def test_out_outside_the_current_directory_is_allowed(tmp_path, text, capsys, monkeypatch):
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    assert run_cli(["echo", "--text", text, "--out", "../../elsewhere"], capsys).code == 0
    assert (tmp_path / "elsewhere" / "out.txt").read_text() == "hello!"


def test_a_failed_run_in_a_new_directory_leaves_nothing(tmp_path, text, capsys):
    out = tmp_path / "out"
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    # echo writes 1 char then fails: body[:1] of "" + suffix -> "!" ... use an empty suffix to get an empty file
    result = run_cli(["echo", "--text", empty, "--out", out, "--suffix", "", "--fail-after-partial"], capsys)
    assert_one_line_error(result, "simulated interruption")
    assert not out.exists()


def test_a_failed_run_keeps_partial_output_and_force_clears_it(tmp_path, text, capsys):
    out = tmp_path / "out"
    result = run_cli(["echo", "--text", text, "--out", out, "--fail-after-partial"], capsys)
    # the error says what to do with the state it leaves
    assert_one_line_error(result, "simulated interruption", f"the partial run in {out} is kept: rerun the same "
                          "command to resume it, or add --force to start over")
    assert (out / "out.txt").read_text() == "h" and not (out / "manifest.json").exists()
    (out / ".out.txt.abc123.tmp").write_text("orphan of a kill")
    assert run_cli(["echo", "--text", text, "--out", out, "--force"], capsys).code == 0
    assert sorted(tree(out)) == sorted([MARKER_NAME, "manifest.json", "out.txt"])


def gate_args(tmp_path: Path, text: Path, out: Path) -> list:
    return ["gate", "--text", text, "--out", out, "--gate", tmp_path / "open", "--started", tmp_path / "started"]


def _in_thread(argv, capsys_unused=None) -> tuple[threading.Thread, dict]:
    from compass.cli import main

    box: dict = {}
    thread = threading.Thread(target=lambda: box.setdefault("code", main([str(a) for a in argv])), daemon=True)
    thread.start()
    return thread, box


def _wait_for(path: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def test_two_stage_runs_on_one_out_dir_the_second_refuses_naming_the_holder(tmp_path, text, capsys):
    out = tmp_path / "out"
    first, box = _in_thread(gate_args(tmp_path, text, out))
    _wait_for(tmp_path / "started")
    result = run_cli(["echo", "--text", text, "--out", out], capsys)
    assert_one_line_error(result, f"output directory {out} is in use by compass pid {os.getpid()} on host "
                                  f"{socket.gethostname()}", "wait for that run to finish")
    (tmp_path / "open").touch()
    first.join(30)
    assert box["code"] == 0 and (out / "out.txt").read_text() == "hello" and echo_stage.CALLS == []


def test_two_recipe_runs_on_one_workdir_the_second_refuses(tmp_path, text, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(textwrap.dedent(f"""\
        name: gated
        stages:
          - name: g
            stage: gate
            inputs: {{text: {text}}}
            config: {{gate: {tmp_path / 'open'}, started: {tmp_path / 'started'}}}
          - name: e
            stage: echo
            inputs: {{text: g.text}}
        """))
    first, box = _in_thread(["run", recipe, "--workdir", tmp_path / "work"])
    _wait_for(tmp_path / "started")
    result = run_cli(["run", recipe, "--workdir", tmp_path / "work"], capsys)
    assert_one_line_error(result, f"workdir {tmp_path / 'work'} is in use by compass pid {os.getpid()}")
    # a single stage run into a stage directory of that workdir meets the stage's own lock
    result = run_cli(["echo", "--text", text, "--out", tmp_path / "work" / "g"], capsys)
    assert_one_line_error(result, "output directory", "is in use by compass pid")
    (tmp_path / "open").touch()
    first.join(30)
    assert box["code"] == 0 and (tmp_path / "work" / "e" / "out.txt").read_text() == "hello!"


HOLD_LOCK = """
import sys, time
from pathlib import Path
from compass.stagekit import DirLock
lock = DirLock(Path(sys.argv[1]), "output directory")
lock.acquire()
print("locked", flush=True)
time.sleep(600)
"""


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path, text, capsys):
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        result = run_cli(["echo", "--text", text, "--out", out], capsys)
        assert_one_line_error(result, f"is in use by compass pid {holder.pid} on host {socket.gethostname()}")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (out / LOCK_NAME).is_file()  # the killed holder's file is still there ...
    assert run_cli(["echo", "--text", text, "--out", out], capsys).code == 0  # ... and its lock is free
    assert not (out / LOCK_NAME).exists()  # a run that ends removes its lock file
    assert (out / "out.txt").read_text() == "hello!"
