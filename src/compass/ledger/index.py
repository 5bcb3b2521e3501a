"""The ledger's own index (index.db, SQLite in WAL mode beside the MLflow store).

It answers the questions MLflow cannot answer quickly or at all: which run produced a file with this
sha256 (lineage), figures of a run's ancestors (`dpo.beta` on an eval run), full text with the trigram
tokenizer (Japanese substrings), embeddings for meaning search, and OR in figure filters.

A recording is two-phase: a `runs` row in state 'recording' first, everything else in one transaction
that flips it to 'complete'. Readers only see complete runs, so a process killed half-way leaves the
index consistent; `compass runs check` lists such leftovers and `--repair` removes them.
"""
from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compass.errors import CompassError

SCHEMA_VERSION = "1"

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs(
    run_id TEXT PRIMARY KEY,
    state TEXT NOT NULL CHECK (state IN ('recording', 'complete')),
    mlflow_run_id TEXT,
    tracking_uri TEXT NOT NULL,
    name TEXT NOT NULL,
    stage TEXT NOT NULL,
    recipe TEXT,
    started_at TEXT NOT NULL,
    recorded_at TEXT NOT NULL,
    wall_time_s REAL NOT NULL,
    config_hash TEXT NOT NULL,
    code_commit TEXT,
    code_dirty INTEGER,
    out_dir TEXT NOT NULL,
    note TEXT NOT NULL DEFAULT '',
    manifest TEXT NOT NULL,
    summary TEXT NOT NULL DEFAULT '{}',
    reproduces TEXT
);
CREATE INDEX IF NOT EXISTS runs_recorded ON runs(recorded_at);
CREATE TABLE IF NOT EXISTS files(
    run_id TEXT NOT NULL, role TEXT NOT NULL CHECK (role IN ('in', 'out')), port TEXT NOT NULL,
    path TEXT NOT NULL, sha256 TEXT NOT NULL, size INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS files_sha ON files(sha256, role);
CREATE INDEX IF NOT EXISTS files_run ON files(run_id);
CREATE TABLE IF NOT EXISTS inputs(
    run_id TEXT NOT NULL, port TEXT NOT NULL, path TEXT NOT NULL, is_file INTEGER NOT NULL,
    PRIMARY KEY (run_id, port)
);
CREATE TABLE IF NOT EXISTS parents(
    run_id TEXT NOT NULL, parent_id TEXT NOT NULL, port TEXT NOT NULL,
    PRIMARY KEY (run_id, parent_id, port)
);
CREATE INDEX IF NOT EXISTS parents_parent ON parents(parent_id);
CREATE TABLE IF NOT EXISTS ancestry(
    run_id TEXT NOT NULL, ancestor_id TEXT NOT NULL, depth INTEGER NOT NULL,
    PRIMARY KEY (run_id, ancestor_id)
);
CREATE INDEX IF NOT EXISTS ancestry_ancestor ON ancestry(ancestor_id);
CREATE TABLE IF NOT EXISTS figures(
    run_id TEXT NOT NULL, key TEXT NOT NULL, num REAL, text TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('config', 'metric'))
);
CREATE INDEX IF NOT EXISTS figures_key_num ON figures(key, num);
CREATE INDEX IF NOT EXISTS figures_key_text ON figures(key, text);
CREATE INDEX IF NOT EXISTS figures_run ON figures(run_id, key);
CREATE TABLE IF NOT EXISTS history(
    run_id TEXT NOT NULL, key TEXT NOT NULL, step INTEGER NOT NULL, value REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS history_run ON history(run_id, key, step);
CREATE VIRTUAL TABLE IF NOT EXISTS fulltext USING fts5(run_id UNINDEXED, name, note, body, tokenize='trigram');
CREATE TABLE IF NOT EXISTS embeddings(run_id TEXT PRIMARY KEY, text_sha TEXT NOT NULL, vec BLOB NOT NULL);
"""


@dataclass
class RunRow:
    run_id: str
    state: str
    mlflow_run_id: str | None
    tracking_uri: str
    name: str
    stage: str
    recipe: str | None
    started_at: str
    recorded_at: str
    wall_time_s: float
    config_hash: str
    code_commit: str | None
    code_dirty: bool | None
    out_dir: str
    note: str
    manifest: dict[str, Any]
    summary: dict[str, str]
    reproduces: str | None

    @property
    def short(self) -> str:
        return self.run_id[:8]

    @property
    def config(self) -> dict[str, Any]:
        return self.manifest["config"]

    @property
    def metrics(self) -> dict[str, Any]:
        return self.manifest["metrics"]


RUN_COLUMNS = ("run_id, state, mlflow_run_id, tracking_uri, name, stage, recipe, started_at, recorded_at, wall_time_s, "
               "config_hash, code_commit, code_dirty, out_dir, note, manifest, summary, reproduces")


def _row(values: tuple) -> RunRow:
    row = RunRow(*values)
    row.manifest = json.loads(values[15])
    row.summary = json.loads(values[16])
    row.code_dirty = None if values[12] is None else bool(values[12])
    return row


class Index:
    """One connection to index.db. Writes take `with index.transaction():` (BEGIN IMMEDIATE ... COMMIT)."""

    def __init__(self, path: Path, *, create: bool = True):
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise CompassError(f"no ledger index at {self.path}: no run has been recorded in this workspace "
                               f"(set COMPASS_HOME or pass --home to use another)")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # autocommit mode; transactions are explicit. 60 s busy timeout: writers wait for each other.
        self.db = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA busy_timeout = 60000")
        if self.db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            self.db.execute("PRAGMA journal_mode = WAL")
        self.db.execute("PRAGMA synchronous = NORMAL")  # with WAL: atomic and consistent after a crash
        version = self._version()
        if version is None:
            # one script, one transaction; IF NOT EXISTS makes a concurrent first use harmless
            self.db.executescript(f"BEGIN IMMEDIATE;{SCHEMA}INSERT OR REPLACE INTO meta VALUES ('schema_version', '{SCHEMA_VERSION}');COMMIT;")
        elif version != SCHEMA_VERSION:
            raise CompassError(f"{self.path}: index schema {version}, this compass reads {SCHEMA_VERSION}")

    def _version(self) -> str | None:
        has_meta = self.db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'").fetchone()
        if not has_meta:
            return None
        row = self.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        return row[0] if row else None

    def close(self) -> None:
        self.db.close()

    def transaction(self):
        return _Transaction(self.db)

    # --- reading runs -------------------------------------------------------------------------------

    def run(self, run_id: str) -> RunRow | None:
        values = self.db.execute(f"SELECT {RUN_COLUMNS} FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return _row(values) if values else None

    def state(self, run_id: str) -> str | None:
        row = self.db.execute("SELECT state FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return row[0] if row else None

    def resolve(self, ref: str) -> RunRow:
        """A complete run by full id, unique id prefix (>= 4 hex digits) or MLflow run id."""
        ref = ref.strip()
        if len(ref) < 4:
            raise CompassError(f"run reference {ref!r} is too short: give at least 4 characters of the run id")
        rows = self.db.execute(
            f"SELECT {RUN_COLUMNS} FROM runs WHERE state='complete' AND (run_id LIKE ? || '%' OR mlflow_run_id = ?)",
            (ref.lower(), ref),
        ).fetchall()
        if not rows:
            raise CompassError(f"no run {ref!r} in the ledger at {self.path.parent} (see `compass runs list`)")
        if len(rows) > 1:
            ids = ", ".join(sorted(r[0][:12] for r in rows)[:5])
            raise CompassError(f"run reference {ref!r} is ambiguous: {ids}; give more characters")
        return _row(rows[0])

    def runs(self, where_sql: str = "", params: tuple = (), *, limit: int | None = None, order: str = "recorded_at DESC") -> list[RunRow]:
        sql = f"SELECT {RUN_COLUMNS} FROM runs r WHERE state='complete'"
        if where_sql:
            sql += f" AND ({where_sql})"
        sql += f" ORDER BY {order}"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [_row(v) for v in self.db.execute(sql, params).fetchall()]

    def runs_by_ids(self, run_ids: list[str]) -> dict[str, RunRow]:
        out: dict[str, RunRow] = {}
        for start in range(0, len(run_ids), 500):
            chunk = run_ids[start:start + 500]
            marks = ",".join("?" * len(chunk))
            for values in self.db.execute(f"SELECT {RUN_COLUMNS} FROM runs WHERE run_id IN ({marks})", chunk):
                out[values[0]] = _row(values)
        return out

    def count(self, state: str = "complete") -> int:
        return self.db.execute("SELECT count(*) FROM runs WHERE state = ?", (state,)).fetchone()[0]

    def files(self, run_id: str, role: str | None = None) -> list[tuple[str, str, str, str, int]]:
        """(role, port, path, sha256, size) of a run's recorded files."""
        sql = "SELECT role, port, path, sha256, size FROM files WHERE run_id = ?"
        params: tuple = (run_id,)
        if role:
            sql += " AND role = ?"
            params += (role,)
        return self.db.execute(sql + " ORDER BY role, port, path", params).fetchall()

    def inputs(self, run_id: str) -> list[tuple[str, str, bool]]:
        return [(p, path, bool(f)) for p, path, f in
                self.db.execute("SELECT port, path, is_file FROM inputs WHERE run_id = ? ORDER BY port", (run_id,))]

    def parents(self, run_id: str) -> list[tuple[str, str]]:
        """(parent run id, input port) pairs."""
        return self.db.execute("SELECT parent_id, port FROM parents WHERE run_id = ? ORDER BY port, parent_id", (run_id,)).fetchall()

    def children(self, run_id: str) -> list[str]:
        rows = self.db.execute(
            "SELECT DISTINCT p.run_id FROM parents p JOIN runs r ON r.run_id = p.run_id "
            "WHERE p.parent_id = ? AND r.state='complete' ORDER BY r.recorded_at", (run_id,))
        return [r[0] for r in rows]

    def ancestors(self, run_id: str) -> list[tuple[str, int]]:
        return self.db.execute("SELECT ancestor_id, depth FROM ancestry WHERE run_id = ? ORDER BY depth, ancestor_id", (run_id,)).fetchall()

    def history(self, run_id: str) -> dict[str, list[tuple[int, float]]]:
        out: dict[str, list[tuple[int, float]]] = {}
        for key, step, value in self.db.execute("SELECT key, step, value FROM history WHERE run_id = ? ORDER BY key, step", (run_id,)):
            out.setdefault(key, []).append((step, value))
        return out

    def figure_keys(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT DISTINCT key FROM figures ORDER BY key")]

    def producers_of(self, shas: list[str]) -> dict[str, list[tuple[str, str]]]:
        """sha256 -> [(run id, recorded_at)] of complete runs that output those bytes, newest first."""
        out: dict[str, list[tuple[str, str]]] = {}
        for start in range(0, len(shas), 500):
            chunk = shas[start:start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self.db.execute(
                f"SELECT f.sha256, f.run_id, r.recorded_at FROM files f JOIN runs r ON r.run_id = f.run_id "
                f"WHERE f.role='out' AND r.state='complete' AND f.sha256 IN ({marks}) ORDER BY r.recorded_at DESC", chunk)
            for sha, run_id, recorded in rows:
                out.setdefault(sha, []).append((run_id, recorded))
        return out

    def runs_with_out_dir_containing(self, path: str) -> list[tuple[str, str]]:
        """(run id, out_dir) of complete runs whose output directory is `path` or contains it, newest first."""
        return self.db.execute(
            "SELECT run_id, out_dir FROM runs WHERE state='complete' AND (out_dir = ? OR substr(?, 1, length(out_dir) + 1) = out_dir || '/') "
            "ORDER BY recorded_at DESC", (path, path)).fetchall()

    def all_blob_refs(self) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT DISTINCT f.sha256 FROM files f JOIN runs r ON r.run_id = f.run_id WHERE r.state='complete'")}


class _Transaction:
    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self):
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, kind, value, tb):
        if kind is None:
            self.db.execute("COMMIT")
        else:
            self.db.execute("ROLLBACK")
        return False
