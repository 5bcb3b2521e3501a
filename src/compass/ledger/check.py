"""`compass runs check`: is the ledger whole? The index (SQLite integrity, every complete run fully there),
the store (every referenced blob present and hashing to its name), and MLflow (every run there, finished).

Problems (exit 1): damage, missing bytes, runs MLflow lost. Leftovers of killed processes are no damage:
rows of interrupted recordings (readers skip them), MLflow runs they started, temp files; `--repair`
removes those and restores missing or damaged blobs from run directories that still hold the bytes.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from compass.errors import CompassError
from compass.ledger.index import Index
from compass.ledger.record import flush_mlflow_tags, rollback_recording, tracker_for
from compass.ledger.store import ContentStore, _hash_file
from compass.ledger.workspace import Workspace, ledger_lock


@dataclass
class CheckReport:
    checked_runs: int = 0
    checked_blobs: int = 0
    problems: list[str] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_ledger(workspace: Workspace, *, repair: bool = False, verify_bytes: bool = True, mlflow: bool = True) -> CheckReport:
    if not workspace.index_db.is_file():
        raise CompassError(f"no ledger at {workspace.root} (nothing recorded yet)")
    report = CheckReport()
    index = Index(workspace.index_db, create=False)
    store = ContentStore(workspace.store_dir)
    try:
        if repair:
            with ledger_lock(workspace):
                _check(workspace, index, store, report, repair=True, verify_bytes=verify_bytes, mlflow=mlflow)
        else:
            _check(workspace, index, store, report, repair=False, verify_bytes=verify_bytes, mlflow=mlflow)
    finally:
        index.close()
    return report


def _check(workspace: Workspace, index: Index, store: ContentStore, report: CheckReport, *, repair: bool,
           verify_bytes: bool, mlflow: bool) -> None:
    # 1. SQLite's own view of the file, and of the full-text index
    report.problems += index.integrity()

    # 2. every complete run has all its rows; interrupted recordings are leftovers
    complete = set(index.run_ids("complete"))
    recording = index.run_ids("recording")
    report.checked_runs = len(complete)
    in_fts, with_self, file_counts = index.row_presence()
    for run_id in sorted(complete):
        row = index.run(run_id)
        expected = len(row.manifest["outputs"]) + sum(len(rec["files"]) for rec in row.manifest["inputs"].values())
        missing = []
        if run_id not in in_fts:
            missing.append("full-text row")
        if run_id not in with_self:
            missing.append("lineage rows")
        if file_counts.get(run_id, 0) != expected:
            missing.append(f"file rows ({file_counts.get(run_id, 0)} of {expected})")
        if missing:
            report.problems.append(f"run {run_id[:8]}: index lacks {', '.join(missing)}")
    stray = (in_fts | set(file_counts)) - complete
    if stray:
        report.problems.append(f"index rows for {len(stray)} run(s) that are not complete: {', '.join(sorted(s[:8] for s in stray)[:5])}")
    for run_id in recording:
        report.leftovers.append(f"run {run_id[:8]}: recording interrupted (invisible to queries)")

    # 3. the store: referenced blobs present and intact; temp files of dead writers
    referenced = index.all_blob_refs()
    carried = {sha for sha in index.all_blob_refs(foreign=True) if store.has(sha)}  # imported runs' small artifacts
    damaged: list[str] = []
    for sha in sorted(referenced | carried):
        path = store.path(sha)
        if not path.is_file():
            damaged.append(sha)
            report.problems.append(f"store: blob {sha[:12]} is missing")
        elif verify_bytes and _hash_file(path) != sha:
            damaged.append(sha)
            report.problems.append(f"store: blob {sha[:12]} is damaged (its bytes no longer hash to its name)")
    report.checked_blobs = len(referenced | carried)
    unreferenced = [sha for sha, _ in store.iter_blobs() if sha not in referenced and sha not in carried]
    if unreferenced:
        report.leftovers.append(f"store: {len(unreferenced)} blob(s) no complete run refers to (an interrupted recording's)")
    dead_tmp = []
    for tmp in store.leftovers():
        parts = tmp.name.split(".")
        if len(parts) >= 3 and parts[1].isdigit() and _pid_alive(int(parts[1])):
            continue  # a live recorder is writing it
        dead_tmp.append(tmp)
    if dead_tmp:
        report.leftovers.append(f"store: {len(dead_tmp)} temp file(s) of writes that never finished")

    # 4. MLflow has every complete run, finished; runs of interrupted recordings are leftovers
    tracker = None
    if mlflow:
        tracker = tracker_for(workspace)
        with ledger_lock(workspace):  # MLflow is loaded now: set the descriptions `runs note` queued
            queued = flush_mlflow_tags(index, tracker)
        if queued:
            report.repaired.append(f"set {queued} queued MLflow note(s)")
        in_mlflow = tracker.compass_runs()
        ours = index.mlflow_runs(tracker.uri)
        for run_id, mlflow_id in sorted(ours.items()):
            found = in_mlflow.get(run_id)
            if found is None or found[0] != mlflow_id:
                report.problems.append(f"run {run_id[:8]}: MLflow run {mlflow_id} is missing from {tracker.uri}")
            elif found[1] != "FINISHED":
                report.problems.append(f"run {run_id[:8]}: MLflow run {mlflow_id} is {found[1]}, expected FINISHED")
        orphans = {rid: mid for rid, (mid, _) in in_mlflow.items() if rid not in complete}
        for run_id, mlflow_id in sorted(orphans.items()):
            report.leftovers.append(f"MLflow run {mlflow_id} (compass run {run_id[:8]}) was left by an interrupted recording")

    if not repair:
        return
    # --- repair: only leftovers and restorable bytes; damage that cannot be restored stays reported
    for run_id in recording:
        if tracker is None:
            tracker = tracker_for(workspace)
        rollback_recording(index, tracker, run_id)
        report.repaired.append(f"removed interrupted recording {run_id[:8]}")
    if mlflow:
        for run_id, mlflow_id in sorted(orphans.items()):
            if run_id not in recording:
                tracker.delete(mlflow_id)
                report.repaired.append(f"deleted MLflow run {mlflow_id} of an interrupted recording")
    for sha in unreferenced:  # we hold the ledger lock: no recorder is between storing and indexing
        store.path(sha).unlink(missing_ok=True)
    if unreferenced:
        report.repaired.append(f"removed {len(unreferenced)} blob(s) of interrupted recordings")
    for tmp in dead_tmp:
        tmp.unlink(missing_ok=True)
    if dead_tmp:
        report.repaired.append(f"removed {len(dead_tmp)} temp file(s)")
    for sha in damaged:
        source = _find_copy(index, sha)
        if source is None:
            continue
        store.path(sha).unlink(missing_ok=True)
        store.path(sha).parent.mkdir(parents=True, exist_ok=True)
        tmp = store.tmp / f"{sha}.{os.getpid()}.restore"
        store.tmp.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, tmp)
        if _hash_file(tmp) == sha:
            os.replace(tmp, store.path(sha))
            report.repaired.append(f"restored blob {sha[:12]} from {source}")
            report.problems = [p for p in report.problems if f"blob {sha[:12]}" not in p]
        else:
            tmp.unlink()


def _find_copy(index: Index, sha: str) -> Path | None:
    """A file in some run's output or input location that still holds these bytes."""
    for role, rel, out_dir, in_path, is_file in index.file_locations(sha):
        candidate = Path(out_dir) / rel if role == "out" else (Path(in_path) if is_file else Path(in_path) / rel)
        if candidate.is_file() and _hash_file(candidate) == sha:
            return candidate
    return None
