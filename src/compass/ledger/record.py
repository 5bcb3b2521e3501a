"""Recording a finished stage run: bytes into the store, an MLflow run, and the index rows (lineage,
figures, full text), in that order. Idempotent by run id, so the runner also calls it on cached hits
to record runs made before the ledger existed or whose recording was interrupted."""
from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from compass.errors import CompassError
from compass.ledger.flat import as_number, as_text, flatten, format_number
from compass.ledger.index import Index, RunRow
from compass.ledger.redact import Redactor
from compass.ledger.store import ContentStore
from compass.ledger.workspace import Workspace, ledger_lock
from compass.manifest import Manifest

# Metric history of a training stage: a JSON list of the trainer's log entries ({"step": 3, "loss": ...}),
# written by the SFT/DPO stages as log_history.json; a transformers trainer_state.json works too.
HISTORY_FILES = ("log_history.json", "trainer_state.json")
HISTORY_PREFIX = "train/"
MAX_FILE_TAGS = 200  # per role; beyond that the manifest artifact lists every hash

# Leaf names of config fields shown as a run's key hyperparameters (leaderboard, report, tags).
HPARAM_LEAVES = {
    "learning_rate", "lr", "num_train_epochs", "epochs", "max_steps", "beta", "loss_type", "r", "lora_r",
    "lora_alpha", "alpha", "per_device_train_batch_size", "micro_batch_size", "batch_size", "global_batch_size",
    "gradient_accumulation_steps", "max_length", "max_seq_length", "warmup_ratio", "scale", "weight", "top_k",
    "threshold", "temperature",
}
HPARAM_STAGES = ("sft", "dpo", "merge", "evidence", "doc-traces", "distill")
SOURCE_STAGES = ("sources", "pdf-fixtures")
PAIR_STAGES = ("pairs",)
MAX_PER_KIND = 4  # summary columns name at most this many runs of one kind (the nearest)


_TRACKERS: dict[tuple[str, str, str], Any] = {}


def tracker_for(workspace: Workspace):
    """MLflow client per (store, experiment), kept for the process: its setup costs a query or two."""
    from compass.ledger.tracking import Tracker, experiment_name

    key = (str(workspace.root), workspace.tracking_uri, experiment_name())
    if key not in _TRACKERS:
        _TRACKERS[key] = Tracker(workspace)
    return _TRACKERS[key]


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


# --- metric history ------------------------------------------------------------------------------------


def read_history(out_dir: Path) -> list[tuple[str, int, float]]:
    """(metric, step, value) from the stage's trainer log; entries without a step count by position."""
    for name in HISTORY_FILES:
        path = out_dir / name
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise CompassError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None
        entries = data["log_history"] if isinstance(data, dict) and "log_history" in data else data
        if not isinstance(entries, list):
            raise CompassError(f"{path}: expected a list of log entries, got {type(entries).__name__}")
        points: list[tuple[str, int, float]] = []
        for position, entry in enumerate(entries):
            if not isinstance(entry, dict):
                raise CompassError(f"{path}: entry {position} is {type(entry).__name__}, expected an object")
            step = entry["step"] if isinstance(entry.get("step"), int) else position
            for key, value in entry.items():
                number = as_number(value)
                if key != "step" and number is not None and not isinstance(value, bool):
                    points.append((HISTORY_PREFIX + key, step, number))
        return points
    return []


# --- lineage -------------------------------------------------------------------------------------------


def find_parents(index: Index, manifest: Manifest) -> list[tuple[str, str]]:
    """(parent run id, port): for each input, the run whose output directory holds it with the same bytes;
    else the fewest runs that produced its bytes (newest first). Bytes no run produced are raw sources."""
    found: list[tuple[str, str]] = []
    for port, record in manifest.inputs.items():
        remaining = dict(record.files)
        for run_id, _ in index.runs_with_out_dir_containing(record.path):
            outs = {sha for *_, sha, _ in index.files(run_id, "out")}
            if any(sha in outs for sha in remaining.values()):
                found.append((run_id, port))
                remaining = {rel: sha for rel, sha in remaining.items() if sha not in outs}
                break
        producers = index.producers_of(sorted(set(remaining.values())))
        while remaining:
            cover: Counter[str] = Counter()
            newest: dict[str, str] = {}
            for sha in remaining.values():
                for run_id, recorded in producers.get(sha, []):
                    cover[run_id] += 1
                    newest[run_id] = recorded
            if not cover:
                break
            best = max(cover, key=lambda r: (cover[r], newest[r]))
            found.append((best, port))
            remaining = {rel: sha for rel, sha in remaining.items()
                         if best not in {r for r, _ in producers.get(sha, [])}}
    return sorted(set(found), key=lambda item: (item[1], item[0]))


def ancestry_rows(index: Index, run_id: str, parents: list[tuple[str, str]]) -> dict[str, int]:
    depths = {run_id: 0}
    for parent_id, _ in parents:
        for ancestor, depth in index.ancestors(parent_id):
            depths[ancestor] = min(depths.get(ancestor, depth + 1), depth + 1)
    return depths


# --- the data recipe of a run, from its lineage ---------------------------------------------------------


def _human_size(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _describe_weights(config: dict[str, Any]) -> list[str]:
    """Numeric sub-mappings (strategy weights) as 'name 0.34', zero weights as 'name dropped'."""
    parts = []
    for key, value in config.items():
        if isinstance(value, dict) and value and all(as_number(v) is not None for v in value.values()):
            parts += [f"{k} dropped" if as_number(v) == 0 else f"{k} {as_text(v)}" for k, v in value.items()]
    return parts


COUNT_MAPPINGS = ("per_source", "counts", "sources")  # metrics a sources stage reports its pools' sizes under


def _describe_counts(metrics: dict[str, Any]) -> list[str]:
    """Record counts of a sources run: its per-source sizes ('gsm8k 7473') when it reports them, else every
    integer metric ('n_pairs=100', 'counts.gsm8k=50')."""
    for key in COUNT_MAPPINGS:
        if key in metrics and isinstance(metrics[key], dict) and metrics[key]:
            return [f"{name} {as_text(value)}" for name, value in metrics[key].items()]
    parts = []
    for key, value in flatten(metrics).items():
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            parts.append(f"{key}={value}")
    return parts


def build_summary(index: Index, run: dict[str, Any], depths: dict[str, int], raw_inputs: list[tuple[str, int]]) -> dict[str, str]:
    """sources / pairs / hparams columns: from the nearest run of each kind in the run's lineage (itself included)."""
    lineage: list[tuple[int, str, str, dict, dict]] = [(0, run["stage"], run["name"], run["config"], run["metrics"])]
    # only the ancestors that can speak: the nearest few of each kind the columns read (lineages can be long)
    wanted = SOURCE_STAGES + PAIR_STAGES + HPARAM_STAGES
    kinds: dict[str, str] = {}
    ancestor_ids = [r for r in depths if r != run["run_id"]]
    for start in range(0, len(ancestor_ids), 500):
        chunk = ancestor_ids[start:start + 500]
        marks = ",".join("?" * len(chunk))
        kinds.update(index.db.execute(f"SELECT run_id, stage FROM runs WHERE run_id IN ({marks}) AND stage IN ({','.join('?' * len(wanted))})",
                                      (*chunk, *wanted)).fetchall())
    per_kind: Counter[str] = Counter()
    chosen = []
    for run_id in sorted(kinds, key=lambda r: (depths[r], r)):
        per_kind[kinds[run_id]] += 1
        if per_kind[kinds[run_id]] <= MAX_PER_KIND:
            chosen.append(run_id)
    for run_id, row in index.runs_by_ids(chosen).items():
        lineage.append((depths[run_id], row.stage, row.name, row.config, row.metrics))
    lineage.sort(key=lambda item: (item[0], item[1], item[2]))

    sources = []
    for _, stage, name, config, metrics in lineage:
        if stage in SOURCE_STAGES:
            counts = _describe_counts(metrics)
            sources.append(f"{name}: {', '.join(counts[:8]) if counts else 'no counts'}")
    sources += [f"{Path(path).name} ({_human_size(size)})" for path, size in raw_inputs]

    pairs = []
    for _, stage, name, config, metrics in lineage:
        if stage in PAIR_STAGES:
            pairs.append(", ".join(_describe_weights(config)) or name)

    hparams = []
    seen_stage: set[str] = set()
    for _, stage, name, config, _ in lineage:
        if stage not in HPARAM_STAGES or stage in seen_stage:
            continue  # the nearest run of each kind speaks for it
        seen_stage.add(stage)
        for key, value in flatten(config).items():
            if key.split(".")[-1] in HPARAM_LEAVES and value is not None:
                hparams.append(f"{stage}.{key}={as_text(value)}")
    return {"sources": "; ".join(sources), "pairs": "; ".join(pairs), "hparams": " ".join(hparams)}


# --- figures and text ----------------------------------------------------------------------------------


def figures_of(config: dict[str, Any], metrics: dict[str, Any], history: list[tuple[str, int, float]]) -> list[tuple[str, float | None, str, str]]:
    rows = [(k, as_number(v), as_text(v), "config") for k, v in flatten(config).items()]
    metric_flat = flatten(metrics)
    rows += [(k, as_number(v), as_text(v), "metric") for k, v in metric_flat.items()]
    last: dict[str, float] = {}
    for key, step, value in sorted(history, key=lambda p: p[1]):
        last[key] = value
    rows += [(k, v, as_text(v), "metric") for k, v in last.items() if k not in metric_flat]
    return rows


def search_body(manifest: dict[str, Any], summary: dict[str, str], out_files: list[tuple[str, str, int]]) -> str:
    """The text full-text search sees for a run (name and note are separate columns)."""
    lines = [f"stage {manifest['stage']}"]
    if manifest["recipe"]:
        lines.append(f"recipe {manifest['recipe']}")
    lines += [f"{k} {v}" for k, v in summary.items() if v]
    lines.append("config " + " ".join(f"{k}={as_text(v)}" for k, v in flatten(manifest["config"]).items()))
    lines.append("metrics " + " ".join(f"{k}={as_text(v)}" for k, v in flatten(manifest["metrics"]).items()))
    lines.append("inputs " + " ".join(f"{port}={rec['path']}" for port, rec in manifest["inputs"].items()))
    lines.append("outputs " + " ".join(rel for rel, _, _ in out_files[:200]))
    if manifest["code"]["commit"]:
        lines.append(f"commit {manifest['code']['commit']}")
    return "\n".join(lines)


def meaning_text(row: RunRow) -> str:
    """A short description for the embedding model (it reads about 256 word pieces): the note and the
    data recipe first, then the config and metrics."""
    parts = [f"{row.stage} run {row.name}."]
    if row.note:
        parts.append(row.note)
    for key, value in row.summary.items():
        if value:
            parts.append(f"{key}: {value}.")
    parts.append("config: " + ", ".join(f"{k.replace('_', ' ')} {as_text(v)}" for k, v in flatten(row.config).items()) + ".")
    numbers = [f"{k.replace('_', ' ')} {format_number(as_number(v))}" for k, v in flatten(row.metrics).items() if as_number(v) is not None]
    if numbers:
        parts.append("metrics: " + ", ".join(numbers) + ".")
    return " ".join(parts)


def text_sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


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
    with ledger_lock(workspace):
        state = index.state(manifest.run_id)
        if state == "complete":
            return manifest.run_id
        # bytes first, under the lock too: a blob no complete run refers to is then surely a dead
        # recorder's, which `compass runs check --repair` may delete
        out_files, in_files = _store_files(workspace, manifest, out_dir)
        if state == "recording":
            rollback_recording(index, tracker, manifest.run_id)
        _record_locked(index, tracker, manifest, out_dir, out_files, in_files)
    return manifest.run_id


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
    out_files: list[tuple[str, str, int]] = []
    for rel, sha in manifest.outputs.items():
        path = out_dir / rel
        if not path.is_file():
            raise CompassError(f"cannot record run {manifest.run_id[:8]}: output {path} is gone")
        store.put(path, sha, link=True)
        out_files.append((rel, sha, path.stat().st_size))
    in_files: list[tuple[str, str, str, int, bool]] = []
    for port, record in manifest.inputs.items():
        base = Path(record.path)
        is_file = base.is_file()
        for rel, sha in record.files.items():
            path = base if is_file else base / rel
            if not path.is_file():
                raise CompassError(f"cannot record run {manifest.run_id[:8]}: input {path} is gone")
            store.put(path, sha, link=False)
            in_files.append((port, rel, sha, path.stat().st_size, is_file))
    return out_files, in_files


def rollback_recording(index: Index, tracker, run_id: str) -> None:
    """Undo a recording a killed process left half-done: its MLflow run (found by id or by tag) and its row."""
    row = index.db.execute("SELECT mlflow_run_id FROM runs WHERE run_id = ? AND state = 'recording'", (run_id,)).fetchone()
    if row is None:
        return
    mlflow_ids = {row[0]} if row[0] else set()
    found = tracker.client.search_runs([tracker.experiment_id], filter_string=f"tags.`compass.run_id` = '{run_id}'")
    mlflow_ids |= {run.info.run_id for run in found if run.info.status != "FINISHED"}
    for mlflow_id in sorted(mlflow_ids):
        tracker.delete(mlflow_id)
    with index.transaction() as db:
        db.execute("DELETE FROM runs WHERE run_id = ? AND state = 'recording'", (run_id,))


def _record_locked(index: Index, tracker, manifest: Manifest, out_dir: Path, out_files, in_files) -> None:
    redactor = Redactor()
    data = redactor.value(manifest.model_dump(mode="json"))
    run_id = manifest.run_id
    history = read_history(out_dir)

    parents = find_parents(index, manifest)
    depths = ancestry_rows(index, run_id, parents)
    produced = index.producers_of(sorted({sha for _, _, sha, _, _ in in_files}))
    raw = [(str(Path(manifest.inputs[port].path) / rel) if not is_file else manifest.inputs[port].path, size)
           for port, rel, sha, size, is_file in in_files if sha not in produced]
    summary = build_summary(index, data, depths, [(redactor.text(p), s) for p, s in raw[:20]])

    # phase 1: the row that says a recording is under way
    with index.transaction() as db:
        db.execute(
            "INSERT INTO runs (run_id, state, tracking_uri, name, stage, recipe, started_at, recorded_at, wall_time_s, "
            "config_hash, code_commit, code_dirty, out_dir, manifest, summary) VALUES (?, 'recording', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (run_id, redactor.text(tracker.uri), data["name"], data["stage"], data["recipe"], data["started_at"], now_iso(),
             data["wall_time_s"], data["config_hash"], data["code"]["commit"],
             None if data["code"]["dirty"] is None else int(data["code"]["dirty"]), str(out_dir.resolve()),
             json.dumps(data, ensure_ascii=False), json.dumps(summary, ensure_ascii=False)))

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
    with index.transaction() as db:
        db.execute("UPDATE runs SET mlflow_run_id = ? WHERE run_id = ?", (mlflow_id, run_id))
    tags.update({f"compass.data.{k}": v for k, v in summary.items() if v})
    tags.update({f"compass.version.{k}": v for k, v in data["versions"].items()})
    tags.update(_file_tags("compass.output", {"": {rel: sha for rel, sha, _ in out_files}}))
    tags.update(_file_tags("compass.input", {port: rec["files"] for port, rec in data["inputs"].items()}))
    params = {k: as_text(v) for k, v in flatten(data["config"]).items()}
    metrics = {k: n for k, v in flatten(data["metrics"]).items() if (n := as_number(v)) is not None}
    metrics["wall_time_s"] = float(data["wall_time_s"])
    tracker.log(mlflow_id, params=params, tags=tags, metrics=metrics, history=history)
    tracker.log_artifacts(mlflow_id, data, data["config"])
    tracker.finish(mlflow_id)

    # phase 3: everything the ledger's own queries need, in one transaction
    out_dir_text = str(out_dir.resolve())
    body = search_body(data, summary, out_files)
    with index.transaction() as db:
        db.executemany("INSERT INTO files VALUES (?, 'out', '', ?, ?, ?)", [(run_id, rel, sha, size) for rel, sha, size in out_files])
        db.executemany("INSERT INTO files VALUES (?, 'in', ?, ?, ?, ?)", [(run_id, port, rel, sha, size) for port, rel, sha, size, _ in in_files])
        db.executemany("INSERT INTO inputs VALUES (?, ?, ?, ?)",
                       [(run_id, port, rec["path"], int(any(f[4] for f in in_files if f[0] == port)))
                        for port, rec in data["inputs"].items()])
        db.executemany("INSERT INTO parents VALUES (?, ?, ?)", [(run_id, p, port) for p, port in parents])
        db.executemany("INSERT INTO ancestry VALUES (?, ?, ?)", [(run_id, a, d) for a, d in depths.items()])
        db.executemany("INSERT INTO figures VALUES (?, ?, ?, ?, ?)",
                       [(run_id, *row) for row in figures_of(data["config"], data["metrics"], history)])
        db.executemany("INSERT INTO history VALUES (?, ?, ?, ?)", [(run_id, k, s, v) for k, s, v in history])
        db.execute("INSERT INTO fulltext (run_id, name, note, body) VALUES (?, ?, '', ?)", (run_id, data["name"], body))
        db.execute("UPDATE runs SET state = 'complete', out_dir = ? WHERE run_id = ?", (out_dir_text, run_id))


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


def add_note(workspace: Workspace, run: RunRow, text: str) -> str:
    """Replace the run's note (shown by MLflow as the run description); the note is searchable."""
    text = Redactor().text(text.strip())
    index = Index(workspace.index_db, create=False)
    try:
        with ledger_lock(workspace):
            if run.mlflow_run_id and run.tracking_uri == workspace.tracking_uri:
                tracker_for(workspace).set_tag(run.mlflow_run_id, "mlflow.note.content", text)
            with index.transaction() as db:
                db.execute("UPDATE runs SET note = ? WHERE run_id = ?", (text, run.run_id))
                db.execute("UPDATE fulltext SET note = ? WHERE run_id = ?", (text, run.run_id))
                db.execute("DELETE FROM embeddings WHERE run_id = ?", (run.run_id,))  # re-embedded with the note
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
            with index.transaction() as db:
                db.execute("UPDATE runs SET reproduces = ? WHERE run_id = ?", (original.run_id, new_run_id))
    finally:
        index.close()


def config_yaml(config: dict[str, Any]) -> str:
    return yaml.safe_dump(config, allow_unicode=True, sort_keys=False)
