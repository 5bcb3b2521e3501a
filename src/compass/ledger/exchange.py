"""Runs in and out of a ledger: the export behind `compass runs publish`, and `compass runs import`.

An export directory holds
    runs.jsonl      one run per line, oldest first (parents before children): its manifest (config, metrics,
                    inputs/outputs by sha256, code commit, seed), data-recipe summary, note, parents, files,
                    training history and, for a run that was itself imported, its origin
    runs.parquet    the same runs as a table (JSON text in the nested columns): `datasets.load_dataset(
                    "parquet", data_files="DIR/runs.parquet")` or pandas read it
    artifacts/      the small files of those runs (metrics, summaries, configs), by sha256
Everything passes through the ledger's redactor once more on the way out, so no secret leaves.

Imported runs are foreign: they join the index (search, leaderboard, diff, lineage and ablation tables treat
them like one's own), carry `origin` in their manifest, are never sent to MLflow and cannot be reproduced
here (`runs reproduce` says where they came from). Importing the same export twice adds nothing.
"""
from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path
from typing import Any

from compass.errors import CompassError
from compass.ledger.index import Index, RunRow
from compass.ledger.redact import Redactor
from compass.ledger.store import ContentStore

EXPORT_VERSION = 1
RUNS_JSONL, RUNS_PARQUET, ARTIFACTS = "runs.jsonl", "runs.parquet", "artifacts"
DEFAULT_MAX_ARTIFACT_BYTES = 256 * 1024
FOREIGN_URI = "compass-export:"  # tracking_uri of an imported run: it has no MLflow run here


def origin_of(run: RunRow) -> dict[str, Any] | None:
    """Where an imported run came from ({name, imported_at, export}); None for the ledger's own runs."""
    return run.manifest.get("origin")  # only imported runs carry the key


def export_record(index: Index, run: RunRow) -> dict[str, Any]:
    files = [{"role": role, "port": port, "path": path, "sha256": sha, "size": size}
             for role, port, path, sha, size in index.files(run.run_id)]
    return {
        "export_version": EXPORT_VERSION,
        "run_id": run.run_id, "name": run.name, "stage": run.stage, "recipe": run.recipe,
        "started_at": run.started_at, "recorded_at": run.recorded_at, "wall_time_s": run.wall_time_s,
        "note": run.note, "manifest": run.manifest, "summary": run.summary, "reproduces": run.reproduces,
        "parents": [{"run_id": p, "port": port} for p, port in index.parents(run.run_id)],
        "inputs": [{"port": port, "path": path, "is_file": is_file} for port, path, is_file in index.inputs(run.run_id)],
        "files": files,
        "history": {key: [[s, v] for s, v in points] for key, points in index.history(run.run_id).items()},
    }


def write_export(index: Index, store: ContentStore, out_dir: Path, *, run_ids: set[str] | None = None,
                 max_artifact_bytes: int = DEFAULT_MAX_ARTIFACT_BYTES) -> list[dict[str, Any]]:
    """runs.jsonl, runs.parquet and artifacts/ in `out_dir`; returns the exported records."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from compass.io import atomic_open

    redactor = Redactor()
    runs = [r for r in index.runs(order="recorded_at ASC") if run_ids is None or r.run_id in run_ids]
    records = [redactor.value(export_record(index, run)) for run in runs]
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_open(out_dir / RUNS_JSONL) as fh:
        for record in records:
            fh.write(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n")
    table = pa.table({
        "run_id": [r["run_id"] for r in records], "name": [r["name"] for r in records],
        "stage": [r["stage"] for r in records], "recipe": [r["recipe"] for r in records],
        "recorded_at": [r["recorded_at"] for r in records], "note": [r["note"] for r in records],
        "origin": [(r["manifest"].get("origin") or {}).get("name") for r in records],
        **{column: [json.dumps(r["manifest"][column], ensure_ascii=False, sort_keys=True) for r in records]
           for column in ("config", "metrics")},
        "summary": [json.dumps(r["summary"], ensure_ascii=False, sort_keys=True) for r in records],
        "parents": [[p["run_id"] for p in r["parents"]] for r in records],
        "record": [json.dumps(r, ensure_ascii=False, sort_keys=True) for r in records],
    })
    pq.write_table(table, out_dir / RUNS_PARQUET)
    artifacts = out_dir / ARTIFACTS
    for record in records:
        for f in record["files"]:
            target = artifacts / f["sha256"]
            if f["size"] <= max_artifact_bytes and store.has(f["sha256"]) and not target.exists():
                artifacts.mkdir(exist_ok=True)
                shutil.copyfile(store.path(f["sha256"]), target)
    return records


def read_export(export_dir: Path) -> list[dict[str, Any]]:
    path = Path(export_dir) / RUNS_JSONL
    if not path.is_file():
        raise CompassError(f"{export_dir} is not a compass export (no {RUNS_JSONL}; `compass runs publish --out DIR` writes one)")
    records = []
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise CompassError(f"{path}:{number}: not JSON ({err.msg})") from None
            if record.get("export_version") != EXPORT_VERSION:  # a line of another format version
                raise CompassError(f"{path}:{number}: export_version {record.get('export_version')!r}, this compass "
                                   f"reads {EXPORT_VERSION}")
            records.append(record)
    return records


def import_export(index: Index, store: ContentStore, export_dir: Path, *, origin: str, embed) -> tuple[int, int]:
    """Add an export's runs to `index` as foreign runs from `origin`; returns (imported, already there)."""
    from compass.ledger.lineage import ancestry_rows
    from compass.ledger.search_text import figures_of, meaning_text, search_body, text_sha, words_body

    export_dir = Path(export_dir).resolve()
    records = read_export(export_dir)
    artifacts = export_dir / ARTIFACTS
    imported = skipped = 0
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")
    for record in records:
        run_id = record["run_id"]
        if index.state(run_id) == "complete":
            skipped += 1
            continue
        if index.state(run_id) == "recording":
            index.delete_recording(run_id)  # an import killed half-way
        data = dict(record["manifest"])
        # a run imported into the exporting ledger keeps its first origin
        data["origin"] = data.get("origin") or {"name": origin, "imported_at": now, "export": str(export_dir)}
        for f in record["files"]:
            blob = artifacts / f["sha256"]
            if blob.is_file():
                store.put(blob, f["sha256"], link=False)
        out_dir = f"{FOREIGN_URI}{data['origin']['name']}/{run_id}"
        index.begin_recording({
            "run_id": run_id, "tracking_uri": FOREIGN_URI + data["origin"]["name"], "name": record["name"],
            "stage": record["stage"], "recipe": record["recipe"], "started_at": record["started_at"],
            "recorded_at": record["recorded_at"], "wall_time_s": record["wall_time_s"], "config_hash": data["config_hash"],
            "code_commit": data["code"]["commit"], "code_dirty": None if data["code"]["dirty"] is None else int(data["code"]["dirty"]),
            "out_dir": out_dir, "manifest": json.dumps(data, ensure_ascii=False), "summary": json.dumps(record["summary"], ensure_ascii=False)})
        parents = [(p["run_id"], p["port"]) for p in record["parents"] if index.state(p["run_id"]) == "complete"]
        history = [(key, step, value) for key, points in record["history"].items() for step, value in points]
        out_files = [(f["path"], f["sha256"], f["size"]) for f in record["files"] if f["role"] == "out"]
        is_file = {i["port"]: i["is_file"] for i in record["inputs"]}
        in_files = [(f["port"], f["path"], f["sha256"], f["size"], is_file[f["port"]]) for f in record["files"] if f["role"] == "in"]
        body = search_body(data, record["summary"], out_files)
        description = meaning_text(data["stage"], data["name"], record["note"], record["summary"], data["config"], data["metrics"])
        vector = embed.passages([description])[0]
        index.complete_recording(
            run_id, out_dir=out_dir, out_files=out_files, in_files=in_files,
            inputs=[(i["port"], i["path"], i["is_file"]) for i in record["inputs"]], parents=parents,
            depths=ancestry_rows(index, run_id, parents), figures=figures_of(data["config"], data["metrics"], history),
            history=history, name=record["name"], body=body, words=words_body(record["name"], record["note"], body),
            stage=data["stage"], embedding=(text_sha(description), vector.tobytes()))
        if record["note"]:
            index.set_note(run_id, record["note"], words_body("", record["note"], "")[1], (text_sha(description), vector.tobytes()))
        imported += 1
    return imported, skipped
