"""Recording a finished stage run: bytes into the store, an MLflow run, and the index rows (lineage,
figures, full text), in that order. Idempotent by run id, so the runner also calls it on cached hits
to record runs made before the ledger existed or whose recording was interrupted. Also: notes and the
reproduction mark, the two changes made to a run after it was recorded.

The jobs around it live beside it: history.py (the trainer's metric history), lineage.py (parents and
ancestry), recipe_summary.py (the sources / pairs / hparams columns), search_text.py (what search sees)."""
from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

from compass.errors import CompassError
from compass.ledger.flat import as_number, as_text, flatten
from compass.ledger.history import read_history
from compass.ledger.index import Index, RunRow
from compass.ledger.lineage import ancestry_rows, find_parents
from compass.ledger.recipe_summary import build_summary
from compass.ledger.redact import Redactor
from compass.ledger.search_text import figures_of, meaning_text, search_body, text_sha, words_body
from compass.ledger.store import ContentStore
from compass.ledger.workspace import Workspace, ledger_lock
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from compass.manifest import Manifest

MAX_FILE_TAGS = 200  # per role; beyond that the manifest artifact lists every hash


def tracker_for(workspace: Workspace):
    """MLflow client per (store, experiment), kept for the process (the cache lives in compass.ledger.tracking,
    which also opens the live runs a recording adopts)."""
    from compass.ledger.tracking import tracker_for as cached_tracker

    return cached_tracker(workspace)


def embedder():
    from compass.ledger.embed import embedder as shared

    return shared()


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


# --- the recording -------------------------------------------------------------------------------------


def record_stage_run(manifest: Manifest, out_dir: str | Path, *, workspace: Workspace | None = None) -> str:
    """Record a completed stage run in the ledger (store + MLflow + index); returns its run id.
    Already-recorded runs are left as they are, so calling this again is cheap and safe."""
    workspace = workspace or Workspace.current()
    out_dir = Path(out_dir)
    index = _recording_index(workspace)
    if index.state(manifest.run_id) == "complete":
        return manifest.run_id
    tracker = tracker_for(workspace)  # outside the lock: the first use imports MLflow (seconds)
    embed = embedder()  # and loads the embedding model (most of a second)
    with ledger_lock(workspace):
        state = index.state(manifest.run_id)
        if state == "complete":
            return manifest.run_id
        # bytes first, under the lock too: a blob no complete run refers to is then surely a dead
        # recorder's, which `compass runs check --repair` may delete
        out_files, in_files = _store_files(workspace, manifest, out_dir)
        if state == "recording":
            rollback_recording(index, tracker, manifest.run_id)
        _record_locked(index, tracker, embed, manifest, out_dir, out_files, in_files)
        flush_mlflow_tags(index, tracker)
    return manifest.run_id


def flush_mlflow_tags(index: Index, tracker) -> int:
    """Set the MLflow tags queued by add_note(mlflow_now=False); returns how many. Call under the ledger lock."""
    pending = index.pending_mlflow_tags()
    for run_id, tag, value in pending:
        row = index.run(run_id)
        if row is not None and row.mlflow_run_id and row.tracking_uri == tracker.uri:
            tracker.set_tag(row.mlflow_run_id, tag, value)
        index.clear_mlflow_tag(run_id, tag, value)
    return len(pending)


_INDEXES: dict[tuple[str, int], Index] = {}


def _recording_index(workspace: Workspace) -> Index:
    """The index connection of this process, kept open: closing the last connection checkpoints the WAL
    (an fsync), which cost more than the rest of a recording. Keyed by pid: a forked child opens its own."""
    import os

    key = (str(workspace.index_db), os.getpid())
    if key not in _INDEXES or not workspace.index_db.is_file():
        _INDEXES[key] = Index(workspace.index_db)
    return _INDEXES[key]


def _store_files(workspace: Workspace, manifest: Manifest, out_dir: Path):
    """Put outputs (hard-linked) and inputs (copied) into the store; each blob lands by rename."""
    store = ContentStore(workspace.store_dir)
    stored: list[tuple[Path, str]] = []  # new blobs, remembered in the stat cache so `runs show` need not read them
    out_files: list[tuple[str, str, int]] = []
    for rel, sha in manifest.outputs.items():
        path = out_dir / rel
        if not path.is_file():
            raise CompassError(f"cannot record run {manifest.run_id[:8]}: output {path} is gone")
        if store.put(path, sha, link=True):
            stored.append((store.path(sha), sha))
        out_files.append((rel, sha, path.stat().st_size))
    in_files: list[tuple[str, str, str, int, bool]] = []
    for port, record in manifest.inputs.items():
        base = Path(record.path)
        is_file = base.is_file()
        for rel, sha in record.files.items():
            path = base if is_file else base / rel
            if not path.is_file():
                raise CompassError(f"cannot record run {manifest.run_id[:8]}: input {path} is gone")
            if store.put(path, sha, link=False):
                stored.append((store.path(sha), sha))
            in_files.append((port, rel, sha, path.stat().st_size, is_file))
    from compass.io import HASH_CACHE_NAME, HashCache

    cache = HashCache(workspace.root / HASH_CACHE_NAME)
    try:
        cache.remember(stored)
    finally:
        cache.close()
    return out_files, in_files


def rollback_recording(index: Index, tracker, run_id: str) -> None:
    """Undo a recording a killed process left half-done: its MLflow run (found by id or by tag) and its row."""
    interrupted, mlflow_id = index.recording_mlflow_run(run_id)
    if not interrupted:
        return
    mlflow_ids = {mlflow_id} if mlflow_id else set()
    found = tracker.client.search_runs([tracker.experiment_id], filter_string=f"tags.`compass.run_id` = '{run_id}'")
    mlflow_ids |= {run.info.run_id for run in found if run.info.status != "FINISHED"}
    for mlflow_id in sorted(mlflow_ids):
        tracker.delete(mlflow_id)
    index.delete_recording(run_id)


def _record_locked(index: Index, tracker, embed, manifest: Manifest, out_dir: Path, out_files, in_files) -> None:
    redactor = Redactor()
    data = redactor.value(manifest.model_dump(mode="json"))
    run_id = manifest.run_id
    history = read_history(out_dir)

    parents = find_parents(index, manifest)
    depths = ancestry_rows(index, run_id, parents)
    produced = index.producers_of(sorted({sha for _, _, sha, _, _ in in_files}))
    raw = [(str(Path(manifest.inputs[port].path) / rel) if not is_file else manifest.inputs[port].path, size)
           for port, rel, sha, size, is_file in in_files if sha not in produced]
    summary = build_summary(index, data, depths, [(redactor.text(p), s) for p, s in raw[:20]], parents)

    # phase 1: the row that says a recording is under way
    index.begin_recording({
        "run_id": run_id, "tracking_uri": redactor.text(tracker.uri), "name": data["name"], "stage": data["stage"],
        "recipe": data["recipe"], "started_at": data["started_at"], "recorded_at": now_iso(), "wall_time_s": data["wall_time_s"],
        "config_hash": data["config_hash"], "code_commit": data["code"]["commit"],
        "code_dirty": None if data["code"]["dirty"] is None else int(data["code"]["dirty"]), "out_dir": str(out_dir.resolve()),
        "manifest": json.dumps(data, ensure_ascii=False), "summary": json.dumps(summary, ensure_ascii=False)})

    # phase 2: MLflow
    tags = {
        "compass.run_id": run_id, "compass.stage": data["stage"], "compass.name": data["name"],
        "compass.config_hash": data["config_hash"], "compass.seed": str(data["seed"]),
        "compass.code.commit": data["code"]["commit"] or "unknown",
        "compass.code.dirty": "unknown" if data["code"]["dirty"] is None else str(data["code"]["dirty"]).lower(),
        "compass.out_dir": redactor.text(str(out_dir.resolve())),
        "compass.parents": ",".join(sorted({p for p, _ in parents})),
        "compass.recipe": data["recipe"] or "",
        "mlflow.source.name": f"compass {data['stage']}",
        "mlflow.source.type": "LOCAL",
    }
    if data["code"]["commit"]:
        tags["mlflow.source.git.commit"] = data["code"]["commit"]
    mlflow_id = tracker.start(data["name"], {"compass.run_id": run_id, "compass.stage": data["stage"]})
    index.set_mlflow_run(run_id, mlflow_id)
    tags.update({f"compass.data.{k}": v for k, v in summary.items() if v})
    tags.update({f"compass.version.{k}": v for k, v in data["versions"].items()})
    tags.update(_file_tags("compass.output", {"": {rel: sha for rel, sha, _ in out_files}}))
    tags.update(_file_tags("compass.input", {port: rec["files"] for port, rec in data["inputs"].items()}))
    params = {k: as_text(v) for k, v in flatten(data["config"]).items()}
    # booleans (lora: true, ...) are not measurements: they stay in manifest.json, not MLflow's metric charts
    metrics = {k: n for k, v in flatten(data["metrics"]).items() if not isinstance(v, bool) and (n := as_number(v)) is not None}
    metrics["wall_time_s"] = float(data["wall_time_s"])
    tracker.log(mlflow_id, params=params, tags=tags, metrics=metrics, history=history)
    tracker.log_artifacts(mlflow_id, data, data["config"])
    tracker.finish(mlflow_id)

    # phase 3: everything the ledger's own queries need, in one transaction
    body = search_body(data, summary, out_files)
    description = meaning_text(data["stage"], data["name"], "", summary, data["config"], data["metrics"])
    vector = embed.passages([description])[0]
    inputs = [(port, rec["path"], any(f[4] for f in in_files if f[0] == port)) for port, rec in data["inputs"].items()]
    index.complete_recording(run_id, out_dir=str(out_dir.resolve()), out_files=out_files, in_files=in_files, inputs=inputs,
                             parents=parents, depths=depths, figures=figures_of(data["config"], data["metrics"], history),
                             history=history, name=data["name"], body=body, words=words_body(data["name"], "", body),
                             stage=data["stage"], embedding=(text_sha(description), vector.tobytes()))


def _file_tags(prefix: str, groups: dict[str, dict[str, str]]) -> dict[str, str]:
    """One tag per file (full sha256), and a digest of each group's listing; huge trees keep only the digest."""
    tags = {}
    count = 0
    for port, files in groups.items():
        head = f"{prefix}.{port}" if port else prefix
        listing = "\n".join(f"{rel} {sha}" for rel, sha in sorted(files.items()))
        tags[f"{head}s.digest" if not port else f"{head}.digest"] = hashlib.sha256(listing.encode()).hexdigest()
        for rel, sha in sorted(files.items()):
            count += 1
            if count > MAX_FILE_TAGS:
                tags[f"{prefix}.truncated"] = "more files than tags; manifest.json lists every sha256"
                return tags
            tags[f"{head}/{rel}" if port else f"{head}/{rel}"] = sha
    return tags


# --- notes and tags after the fact ------------------------------------------------------------------------


def add_note(workspace: Workspace, run: RunRow, text: str, *, mlflow_now: bool = True) -> str:
    """Replace the run's note (shown by MLflow as the run description); the note is searchable at once.
    `mlflow_now=False` queues the MLflow description instead of importing MLflow (seconds) for it: the next
    recording in this workspace, or `compass runs check`, sets it (flush_mlflow_tags)."""
    text = Redactor().text(text.strip())
    description = meaning_text(run.stage, run.name, text, run.summary, run.config, run.metrics)
    vector = embedder().passages([description])[0]  # only this run is embedded again
    note_words = words_body("", text, "")[1]
    index = Index(workspace.index_db, create=False)
    try:
        with ledger_lock(workspace):
            if run.mlflow_run_id and run.tracking_uri == workspace.tracking_uri:
                if mlflow_now:
                    tracker_for(workspace).set_tag(run.mlflow_run_id, "mlflow.note.content", text)
                else:
                    index.queue_mlflow_tag(run.run_id, "mlflow.note.content", text)
            index.set_note(run.run_id, text, note_words, (text_sha(description), vector.tobytes()))
    finally:
        index.close()
    return text


def mark_reproduction(workspace: Workspace, new_run_id: str, original: RunRow) -> None:
    index = Index(workspace.index_db, create=False)
    try:
        new = index.run(new_run_id)
        if new is None:
            raise CompassError(f"reproduction {new_run_id} was not recorded")
        with ledger_lock(workspace):
            if new.mlflow_run_id and new.tracking_uri == workspace.tracking_uri:
                tracker_for(workspace).set_tag(new.mlflow_run_id, "compass.reproduces", original.run_id)
            index.set_reproduces(new_run_id, original.run_id)
    finally:
        index.close()


def config_yaml(config: dict[str, Any]) -> str:
    return yaml.safe_dump(config, allow_unicode=True, sort_keys=False)
