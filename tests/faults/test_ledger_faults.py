"""Ledger faults: concurrent recorders lose nothing; a recorder SIGKILLed at any moment leaves the store,
the index and MLflow consistent (`compass runs check` says so), and `--repair` clears its leftovers."""
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support import ledger_runs as ledger_support  # noqa: E402
from support import ledger_worker  # noqa: E402

from compass.ledger.check import check_ledger  # noqa: E402
from compass.ledger.index import Index  # noqa: E402
from compass.ledger.record import tracker_for  # noqa: E402

WORKER = Path(__file__).parents[1] / "support" / "ledger_worker.py"


def start_worker(worker: int, count: int, workdir: Path, home: Path) -> subprocess.Popen:
    env = {**os.environ, "COMPASS_HOME": str(home)}
    return subprocess.Popen([sys.executable, str(WORKER), str(worker), str(count), str(workdir)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def complete_runs(home: Path) -> int:
    db = home / "index.db"
    if not db.is_file():
        return 0
    conn = sqlite3.connect(db, timeout=30)
    try:
        return conn.execute("SELECT count(*) FROM runs WHERE state='complete'").fetchone()[0]
    except sqlite3.OperationalError:  # schema not created yet
        return 0
    finally:
        conn.close()


# 40 each (was 100): every recording embeds its run (~0.3 s), and 4x40 interleave just as 4x100 did at 2.5x less time
RUNS_EACH = 40


def test_four_processes_recording_40_runs_each_lose_nothing(tmp_path, tmp_path_factory, monkeypatch):
    ws = ledger_support.workspace_for_test(tmp_path_factory, tmp_path / "home", monkeypatch)
    procs = [start_worker(w, RUNS_EACH, tmp_path / "work", ws.root) for w in range(4)]
    for proc in procs:
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out.decode()[-3000:]
    index = Index(ws.index_db)
    assert index.count() == 4 * RUNS_EACH and index.count("recording") == 0
    names = {r[0] for r in index.db.execute("SELECT name FROM runs")}
    assert names == {f"w{w}-{i}" for w in range(4) for i in range(RUNS_EACH)}
    # lineage inside each worker's chain survived the interleaving
    for w in range(4):
        row = index.db.execute("SELECT run_id FROM runs WHERE name = ?", (f"w{w}-{RUNS_EACH - 1}",)).fetchone()
        parent = index.parents(row[0])
        assert [index.run(p).name for p, _ in parent] == [f"w{w}-{RUNS_EACH - 2}"]
    # the shared bytes are stored once; every run's own bytes once each
    blobs = list((ws.store_dir / "sha256").rglob("*"))
    assert len([b for b in blobs if b.is_file()]) == 4 * RUNS_EACH + 1
    assert len(tracker_for(ws).compass_runs()) == 4 * RUNS_EACH
    report = check_ledger(ws)
    assert report.ok and report.checked_runs == 4 * RUNS_EACH and not report.leftovers, report
    index.close()


def test_sigkill_while_recording_leaves_everything_consistent(tmp_path, tmp_path_factory, monkeypatch):
    ws = ledger_support.workspace_for_test(tmp_path_factory, tmp_path / "home", monkeypatch)
    rng = random.Random(7)
    for attempt in range(3):
        before = complete_runs(ws.root)
        proc = start_worker(attempt, 0, tmp_path / f"work{attempt}", ws.root)
        deadline = time.monotonic() + 60
        while complete_runs(ws.root) < before + 2:  # recording is under way: imports done, runs landing
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            assert time.monotonic() < deadline, "worker recorded nothing in 60 s"
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 0.25))  # land somewhere inside a recording
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        report = check_ledger(ws)  # consistent right after the kill: leftovers at most, no problems
        assert report.ok, report.problems
    assert check_ledger(ws, repair=True).ok
    after = check_ledger(ws)
    assert after.ok and not after.leftovers, after.leftovers
    # the ledger goes on working: a new recorder adds runs, lineage and all
    proc = start_worker(9, 3, tmp_path / "work9", ws.root)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out.decode()[-3000:]
    final = check_ledger(ws)
    assert final.ok and not final.leftovers and final.checked_runs == complete_runs(ws.root)
    index = Index(ws.index_db)
    assert index.count("recording") == 0
    assert set(tracker_for(ws).compass_runs()) == {r[0] for r in index.db.execute("SELECT run_id FROM runs")}
    index.close()


@pytest.mark.parametrize("damage", ["blob", "index-row"])
def test_check_reports_damage(tmp_path, tmp_path_factory, monkeypatch, damage):
    ws = ledger_support.workspace_for_test(tmp_path_factory, tmp_path / "home", monkeypatch)
    ledger_worker.main(0, 2, tmp_path / "work")
    index = Index(ws.index_db)
    if damage == "blob":
        sha = index.db.execute("SELECT sha256 FROM files WHERE path = 'data.txt' LIMIT 1").fetchone()[0]
        blob = ws.store_dir / "sha256" / sha[:2] / sha[2:]
        os.chmod(blob, 0o644)
        with open(blob, "r+b") as fh:  # the damage a hard-linked output edited in place would do
            fh.write(b"X")
        expected = f"blob {sha[:12]} is damaged"
    else:
        with index.transaction() as db:
            db.execute("DELETE FROM fulltext WHERE rowid = (SELECT min(rowid) FROM fulltext)")
        expected = "index lacks full-text row"
    index.close()
    report = check_ledger(ws)
    assert not report.ok and any(expected in p for p in report.problems), report.problems
