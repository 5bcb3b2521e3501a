"""The ledger's own index (index.db, SQLite in WAL mode beside the MLflow store).

It answers the questions MLflow cannot answer quickly or at all: which run produced a file with this
sha256 (lineage), figures of a run's ancestors (`dpo.beta` on an eval run), full text with the trigram
tokenizer (Japanese substrings), embeddings for meaning search, and OR in figure filters.

Every SQL statement of the ledger lives in this module (the other modules call Index methods), so the
schema and the queries that depend on it change together.

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
from compass.ledger.where import BoolOp, Cmp, Not, comparisons, name_forms

SCHEMA_VERSION = "2"  # 2: the word index, figure keys per stage, list elements as figures, e5 embeddings

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
CREATE TABLE IF NOT EXISTS figures(
    run_id TEXT NOT NULL, key TEXT NOT NULL, num REAL, text TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('config', 'metric'))
);
CREATE INDEX IF NOT EXISTS figures_key_text ON figures(key, text);
CREATE INDEX IF NOT EXISTS figures_run ON figures(run_id, key);
CREATE TABLE IF NOT EXISTS history(
    run_id TEXT NOT NULL, key TEXT NOT NULL, step INTEGER NOT NULL, value REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS history_run ON history(run_id, key, step);
CREATE VIRTUAL TABLE IF NOT EXISTS fulltext USING fts5(run_id UNINDEXED, name, note, body, tokenize='trigram');
CREATE TABLE IF NOT EXISTS embeddings(run_id TEXT PRIMARY KEY, text_sha TEXT NOT NULL, vec BLOB NOT NULL);
"""
# schema 2: words segmented at record time (compass.ledger.text_terms: Japanese by morphological analysis),
# searched with bm25; tokens keep '_', '.', '/' and '-' so identifiers and numbers stay whole. And which
# figure keys each stage kind has (query understanding reads it instead of scanning every figure).
SCHEMA_2 = """
CREATE VIRTUAL TABLE IF NOT EXISTS words USING fts5(run_id UNINDEXED, name, note, body, tokenize="unicode61 tokenchars '_./-+'");
CREATE TABLE IF NOT EXISTS figure_keys(stage TEXT NOT NULL, key TEXT NOT NULL, kind TEXT NOT NULL, numeric INTEGER NOT NULL,
    PRIMARY KEY (stage, key, kind));
"""
# covering indexes for what search and --where look up: a run's state, stage and name; the runs with a figure in a
# range; an ancestor's descendants. Each query then reads a narrow index instead of the wide rows (a run's manifest
# and summary), 2-10x faster at 10k runs. They supersede the narrower figures_key_num(key, num) and
# ancestry_ancestor(ancestor_id) of older ledgers, which Index.__init__ brings up to date when it opens one.
LOOKUP_INDEXES = (
    "CREATE INDEX IF NOT EXISTS runs_lookup ON runs(run_id, state, stage, name)",
    "CREATE INDEX IF NOT EXISTS figures_key_num_run ON figures(key, num, run_id)",
    "CREATE INDEX IF NOT EXISTS ancestry_ancestor_run ON ancestry(ancestor_id, run_id)",
)
SUPERSEDED_INDEXES = ("figures_key_num", "ancestry_ancestor")


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
            self.db.executescript(f"BEGIN IMMEDIATE;{SCHEMA}{SCHEMA_2}{';'.join(LOOKUP_INDEXES)};INSERT OR REPLACE INTO meta VALUES ('schema_version', '{SCHEMA_VERSION}');COMMIT;")
        elif version == "1":
            self._migrate_from_1()
        elif version != SCHEMA_VERSION:
            raise CompassError(f"{self.path}: index schema {version}, this compass reads {SCHEMA_VERSION}")
        indexes = {row[0] for row in self.db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        if {sql.split()[5] for sql in LOOKUP_INDEXES} - indexes or indexes & set(SUPERSEDED_INDEXES):
            with self.transaction() as db:
                for sql in LOOKUP_INDEXES:
                    db.execute(sql)
                for name in SUPERSEDED_INDEXES:
                    db.execute(f"DROP INDEX IF EXISTS {name}")

    def _version(self) -> str | None:
        has_meta = self.db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'").fetchone()
        if not has_meta:
            return None
        row = self.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        return row[0] if row else None

    def close(self) -> None:
        self.db.close()

    def _migrate_from_1(self) -> None:
        """Schema 1 -> 2: derive the word index, figure keys and list-element figures from each run's stored
        manifest and history; drop the English-model embeddings (the next meaning search embeds again)."""
        from compass.ledger.search_text import figures_of, words_body

        with self.transaction() as db:
            if db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] != "1":
                return  # another process migrated it while this one waited
            for statement in SCHEMA_2.split(";\n"):
                if statement.strip():
                    db.execute(statement)
            db.execute("DELETE FROM embeddings")
            rows = db.execute(f"SELECT {RUN_COLUMNS} FROM runs WHERE state='complete'").fetchall()
            for values in rows:
                run = _row(values)
                history = [(k, step, v) for k, step, v in db.execute("SELECT key, step, value FROM history WHERE run_id = ?", (run.run_id,))]
                figures = figures_of(run.config, run.metrics, history)
                db.execute("DELETE FROM figures WHERE run_id = ?", (run.run_id,))
                db.executemany("INSERT INTO figures VALUES (?, ?, ?, ?, ?)", [(run.run_id, *f) for f in figures])
                db.executemany("INSERT OR IGNORE INTO figure_keys VALUES (?, ?, ?, ?)",
                               [(run.stage, key, kind, int(num is not None)) for key, num, _, kind in figures])
                body = db.execute("SELECT body FROM fulltext WHERE run_id = ?", (run.run_id,)).fetchone()
                name, note, text = words_body(run.name, run.note, body[0] if body else "")
                db.execute("INSERT INTO words (run_id, name, note, body) VALUES (?, ?, ?, ?)", (run.run_id, name, note, text))
            db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (SCHEMA_VERSION,))

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
            f"SELECT {RUN_COLUMNS} FROM runs WHERE state='complete' AND (run_id LIKE ? ESCAPE '\\' OR mlflow_run_id = ?)",
            (like_literal(ref.lower()) + "%", ref),
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

    def sweep_names(self) -> list[str]:
        """Names of the sweeps whose runs are recorded, most recent first."""
        return [row[0] for row in self.db.execute(
            "SELECT json_extract(manifest, '$.sweep.name') AS s FROM runs WHERE state='complete' AND s IS NOT NULL "
            "GROUP BY s ORDER BY max(recorded_at) DESC")]

    def sweep_runs(self, sweep: str | None) -> tuple[str, list[RunRow]]:
        """The runs `compass sweep` made under this sweep name (None: the most recently recorded sweep)."""
        if sweep is None:
            row = self.db.execute("SELECT json_extract(manifest, '$.sweep.name') FROM runs WHERE state='complete' AND "
                                  "json_extract(manifest, '$.sweep.name') IS NOT NULL ORDER BY recorded_at DESC LIMIT 1").fetchone()
            if row is None:
                raise CompassError("no sweep runs in this ledger (compass sweep RECIPE records them)")
            sweep = row[0]
        return sweep, self.runs("json_extract(r.manifest, '$.sweep.name') = ?", (sweep,), order="recorded_at")

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

    def parent_edges(self, run_ids: list[str]) -> list[tuple[str, str, str]]:
        """(run id, parent id, port) of the given runs' input edges."""
        out: list[tuple[str, str, str]] = []
        for start in range(0, len(run_ids), 500):
            chunk = run_ids[start:start + 500]
            out += self.db.execute(f"SELECT run_id, parent_id, port FROM parents WHERE run_id IN ({_marks(chunk)})", chunk).fetchall()
        return out

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

    def all_blob_refs(self, *, foreign: bool = False) -> set[str]:
        """sha256 of every file of the complete runs made here (foreign=True: of the runs imported from an export,
        whose blobs are in the store only where the export carried them)."""
        op = "LIKE" if foreign else "NOT LIKE"
        return {r[0] for r in self.db.execute(
            "SELECT DISTINCT f.sha256 FROM files f JOIN runs r ON r.run_id = f.run_id WHERE r.state='complete' "
            f"AND r.tracking_uri {op} 'compass-export:%'")}

    def numeric_metric_keys(self) -> list[str]:
        return [k for (k,) in self.db.execute("SELECT DISTINCT key FROM figures WHERE num IS NOT NULL AND kind = 'metric' ORDER BY key")]

    def stages_of(self, run_ids: list[str], stages: tuple[str, ...]) -> dict[str, str]:
        """run id -> stage, for those of `run_ids` whose stage is one of `stages`."""
        out: dict[str, str] = {}
        for start in range(0, len(run_ids), 500):
            chunk = run_ids[start:start + 500]
            rows = self.db.execute(
                f"SELECT run_id, stage FROM runs WHERE run_id IN ({_marks(chunk)}) AND stage IN ({_marks(stages)})", (*chunk, *stages))
            out.update(rows.fetchall())
        return out

    def any_has_figure(self, key: str, run_ids: set[str]) -> bool:
        """Whether one of `run_ids` has a numeric figure `key`."""
        ids = sorted(run_ids)
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            if self.db.execute(f"SELECT 1 FROM figures WHERE key = ? AND num IS NOT NULL AND run_id IN ({_marks(chunk)}) LIMIT 1",
                               (key, *chunk)).fetchone():
                return True
        return False

    def figure_values(self, key: str, stage_or_name: str | None = None) -> list[tuple[str, float]]:
        """(run id, number) of complete runs with numeric figure `key` (only runs of that stage kind or
        recipe name when given)."""
        if stage_or_name is None:
            return self.db.execute(
                "SELECT f.run_id, f.num FROM figures f JOIN runs r ON r.run_id = f.run_id "
                "WHERE r.state = 'complete' AND f.key = ? AND f.num IS NOT NULL", (key,)).fetchall()
        return self.db.execute(
            "SELECT f.run_id, f.num FROM figures f JOIN runs r ON r.run_id = f.run_id "
            "WHERE r.state = 'complete' AND f.key = ? AND (r.stage = ? OR r.name = ?) AND f.num IS NOT NULL",
            (key, stage_or_name, stage_or_name)).fetchall()

    def figures_of_run(self, run_id: str) -> list[tuple[str, float | None, str, str]]:
        """(key, number, text, kind) of one run's own figures."""
        return self.db.execute("SELECT key, num, text, kind FROM figures WHERE run_id = ? ORDER BY kind, key", (run_id,)).fetchall()

    def common_metric_keys(self, *, stage: str | None = None, limit: int = 4) -> list[str]:
        """The numeric metrics most runs have (of one stage kind when given), timings left out."""
        rows = self.db.execute(
            "SELECT f.key, count(*) FROM figures f JOIN runs r ON r.run_id = f.run_id WHERE r.state='complete' AND f.kind='metric' "
            "AND f.num IS NOT NULL AND (? IS NULL OR r.stage = ?) AND f.key NOT LIKE '%time%' GROUP BY f.key "
            "ORDER BY count(*) DESC, f.key LIMIT ?", (stage, stage, limit)).fetchall()
        return [r[0] for r in rows]

    # --- figure filters (compass.ledger.where parses them; the SQL is made here) ----------------------

    def where_run_ids(self, node) -> set[str]:
        """Complete runs for which the parsed filter holds."""
        self.check_figure_names(node)
        sql, params = where_sql(node)
        return {r[0] for r in self.db.execute(f"SELECT r.run_id FROM runs r WHERE r.state='complete' AND ({sql})", params)}

    def check_figure_names(self, node) -> None:
        """Fail with close matches when a name is no figure of any run (a typo would otherwise match nothing)."""
        import difflib

        for cmp in comparisons(node):
            known = False
            for prefix, key in name_forms(cmp.name):
                if prefix is None:
                    known = known or self.db.execute("SELECT 1 FROM figures WHERE key = ? LIMIT 1", (key,)).fetchone() is not None
                else:
                    known = known or self.db.execute(
                        "SELECT 1 FROM figures f JOIN runs ar ON ar.run_id = f.run_id WHERE f.key = ? AND (ar.stage = ? OR ar.name = ?) LIMIT 1",
                        (key, prefix, prefix)).fetchone() is not None
            if not known:
                keys = [r[0] for r in self.db.execute("SELECT DISTINCT key FROM figures")]
                staged = [f"{s}.{k}" for s, k in self.db.execute("SELECT DISTINCT r.stage, f.key FROM figures f JOIN runs r ON r.run_id = f.run_id")]
                close = difflib.get_close_matches(cmp.name, keys + staged, n=4, cutoff=0.5)
                hint = f"; close names: {', '.join(close)}" if close else ""
                raise CompassError(f"--where: no run has a figure named {cmp.name!r}{hint}")

    def figure_value(self, run_id: str, name: str) -> tuple[str, str] | None:
        """(value text, where it came from) of `name` for one run: its own figure first, else the nearest
        ancestor (or itself) of that stage kind / recipe name."""
        for prefix, key in name_forms(name):
            if prefix is None:
                row = self.db.execute("SELECT text FROM figures WHERE run_id = ? AND key = ? LIMIT 1", (run_id, key)).fetchone()
                if row:
                    return row[0], "self"
            else:
                # the run's few ancestors first (CROSS JOIN keeps that order), then their figures by (run_id, key)
                row = self.db.execute(
                    "SELECT f.text, a.ancestor_id, a.depth FROM ancestry a CROSS JOIN runs ar CROSS JOIN figures f "
                    "WHERE a.run_id = ? AND ar.run_id = a.ancestor_id AND f.run_id = a.ancestor_id AND f.key = ? "
                    "AND (ar.stage = ? OR ar.name = ?) ORDER BY a.depth LIMIT 1", (run_id, key, prefix, prefix)).fetchone()
                if row:
                    return row[0], "self" if row[2] == 0 else f"ancestor {row[1][:8]}"
        return None

    # --- full text ----------------------------------------------------------------------------------

    def fulltext_match(self, expression: str, filter_sql: str = "", filter_params: tuple = (), *, limit: int) -> list[tuple[str, float]]:
        """(run id, bm25 score: lower is better) for an FTS5 MATCH expression; names weigh 5, notes 3, the rest 1.
        `filter_sql` is an extra condition on `r` (the runs table), e.g. from where_sql()."""
        return self.db.execute(
            "SELECT f.run_id, bm25(fulltext, 0.0, 5.0, 3.0, 1.0) AS score FROM fulltext f JOIN runs r ON r.run_id = f.run_id "
            f"WHERE fulltext MATCH ? AND r.state = 'complete'{filter_sql} ORDER BY score LIMIT ?",
            (expression, *filter_params, limit)).fetchall()

    def fulltext_containing(self, word: str, filter_sql: str = "", filter_params: tuple = (), *, limit: int) -> list[str]:
        """Run ids whose name, note or text contains `word` (a substring scan, for words the trigram index cannot hold)."""
        like = f"%{like_literal(word)}%"
        rows = self.db.execute(
            "SELECT f.run_id FROM fulltext f JOIN runs r ON r.run_id = f.run_id WHERE r.state = 'complete' "
            f"AND (f.name LIKE ? ESCAPE '\\' OR f.note LIKE ? ESCAPE '\\' OR f.body LIKE ? ESCAPE '\\'){filter_sql} LIMIT ?",
            (like, like, like, *filter_params, limit))
        return [r[0] for r in rows]

    def fulltext_rows(self, run_ids: list[str], rowids: dict[str, int] | None = None) -> dict[str, dict[str, str]]:
        """run id -> {"name", "note", "text"} as the full-text index holds them. The run id is an unindexed column,
        so finding a row by it reads the whole table (10 ms at 10k runs); `rowids` (run id -> rowid of its words
        row, from words_match) are tried first: a run's full-text and words rows are written one after the other
        in the transaction that completes it, so they share a rowid unless the ledger was migrated from schema 1.
        A row read that way is taken for the run it holds, if that run was asked for; the rest are found by the scan."""
        out: dict[str, dict[str, str]] = {}
        wanted = set(run_ids)
        hinted = sorted({rowids[r] for r in wanted if r in rowids}) if rowids else []
        for start in range(0, len(hinted), 500):
            chunk = hinted[start:start + 500]
            for run_id, name, note, body in self.db.execute(
                    f"SELECT run_id, name, note, body FROM fulltext WHERE rowid IN ({_marks(chunk)})", chunk):
                if run_id in wanted:
                    out[run_id] = {"name": name, "note": note, "text": body}
        missing = [r for r in run_ids if r not in out]
        for start in range(0, len(missing), 500):
            chunk = missing[start:start + 500]
            for run_id, name, note, body in self.db.execute(
                    f"SELECT run_id, name, note, body FROM fulltext WHERE run_id IN ({_marks(chunk)})", chunk):
                out[run_id] = {"name": name, "note": note, "text": body}
        return out

    def words_match(self, expression: str, filter_sql: str = "", filter_params: tuple = (), *, limit: int) -> list[tuple[str, float, int]]:
        """(run id, bm25: lower is better, rowid of the words row) for an FTS5 MATCH over the segmented words;
        names weigh 4, notes 3."""
        if not filter_sql:
            # a words row is written in the transaction that completes its run, and complete runs are never
            # removed: without a filter, no join with runs is needed (the join was two thirds of the time)
            return self.db.execute(
                "SELECT run_id, bm25(words, 0.0, 4.0, 3.0, 1.0) AS score, rowid FROM words WHERE words MATCH ? ORDER BY score LIMIT ?",
                (expression, limit)).fetchall()
        return self.db.execute(
            "SELECT w.run_id, bm25(words, 0.0, 4.0, 3.0, 1.0) AS score, w.rowid FROM words w JOIN runs r ON r.run_id = w.run_id "
            f"WHERE words MATCH ? AND r.state = 'complete'{filter_sql} ORDER BY score LIMIT ?",
            (expression, *filter_params, limit)).fetchall()

    def figure_key_table(self) -> list[tuple[str, str, str, bool]]:
        """(stage, key, kind, numeric) of every figure key some run of that stage has."""
        return [(s, k, kind, bool(n)) for s, k, kind, n in
                self.db.execute("SELECT stage, key, kind, numeric FROM figure_keys ORDER BY stage, key")]

    def stage_kinds(self) -> list[str]:
        return sorted({stage for stage, *_ in self.figure_key_table()})

    def run_ids_of_stages(self, stages: list[str]) -> set[str]:
        return {r[0] for r in self.db.execute(
            f"SELECT run_id FROM runs WHERE state = 'complete' AND stage IN ({_marks(stages)})", stages)}

    def figure_text_exists(self, key: str, text: str) -> bool:
        return self.db.execute("SELECT 1 FROM figures WHERE key = ? AND text = ? COLLATE NOCASE LIMIT 1", (key, text)).fetchone() is not None

    def figure_numbers(self, key: str, run_ids: set[str] | None = None) -> dict[str, float]:
        """run id -> the numeric value of its own figure `key`."""
        rows = self.db.execute("SELECT run_id, num FROM figures WHERE key = ? AND num IS NOT NULL", (key,)).fetchall()
        return {r: n for r, n in rows if run_ids is None or r in run_ids}

    # --- embeddings ---------------------------------------------------------------------------------

    def runs_without_embedding(self) -> list[str]:
        return [r[0] for r in self.db.execute(
            "SELECT r.run_id FROM runs r WHERE r.state = 'complete' AND NOT EXISTS (SELECT 1 FROM embeddings e WHERE e.run_id = r.run_id)")]

    def put_embeddings(self, rows: list[tuple[str, str, bytes]]) -> None:
        """(run id, sha256 of the embedded text, float32 vector bytes)."""
        with self.transaction() as db:
            db.executemany("INSERT OR REPLACE INTO embeddings VALUES (?, ?, ?)", rows)

    def embeddings_version(self) -> tuple:
        """Changes whenever an embedding is added, replaced or removed (a cache key)."""
        return self.db.execute("SELECT count(*), max(rowid) FROM embeddings").fetchone()

    def embeddings(self) -> list[tuple[str, bytes]]:
        # an embedding is written with its run's completion, or later for a complete run (put_embeddings,
        # set_note), and complete runs are never removed: no join with runs (joined, SQLite sorted 15 MB of
        # vectors at 10k runs: 0.18 s of a meaning search's 0.5 s)
        return self.db.execute("SELECT run_id, vec FROM embeddings ORDER BY rowid").fetchall()

    # --- writing a recording (two phases, see the module docstring) ---------------------------------

    def begin_recording(self, values: dict[str, Any]) -> None:
        """Phase 1: the row that says a recording is under way (readers skip it)."""
        columns = ("run_id", "tracking_uri", "name", "stage", "recipe", "started_at", "recorded_at", "wall_time_s",
                   "config_hash", "code_commit", "code_dirty", "out_dir", "manifest", "summary")
        with self.transaction() as db:
            db.execute(f"INSERT INTO runs (state, {', '.join(columns)}) VALUES ('recording', {_marks(columns)})",
                       tuple(values[c] for c in columns))

    def set_mlflow_run(self, run_id: str, mlflow_run_id: str) -> None:
        with self.transaction() as db:
            db.execute("UPDATE runs SET mlflow_run_id = ? WHERE run_id = ?", (mlflow_run_id, run_id))

    def complete_recording(self, run_id: str, *, out_dir: str, out_files, in_files, inputs, parents, depths, figures, history,
                           name: str, body: str, words: tuple[str, str, str], stage: str,
                           embedding: tuple[str, bytes] | None = None) -> None:
        """Phase 3: every row the ledger's own queries need, in one transaction that flips the run to complete."""
        with self.transaction() as db:
            db.executemany("INSERT INTO files VALUES (?, 'out', '', ?, ?, ?)", [(run_id, rel, sha, size) for rel, sha, size in out_files])
            db.executemany("INSERT INTO files VALUES (?, 'in', ?, ?, ?, ?)", [(run_id, port, rel, sha, size) for port, rel, sha, size, _ in in_files])
            db.executemany("INSERT INTO inputs VALUES (?, ?, ?, ?)", [(run_id, port, path, int(is_file)) for port, path, is_file in inputs])
            db.executemany("INSERT INTO parents VALUES (?, ?, ?)", [(run_id, p, port) for p, port in parents])
            db.executemany("INSERT INTO ancestry VALUES (?, ?, ?)", [(run_id, a, d) for a, d in depths.items()])
            db.executemany("INSERT INTO figures VALUES (?, ?, ?, ?, ?)", [(run_id, *row) for row in figures])
            db.executemany("INSERT INTO history VALUES (?, ?, ?, ?)", [(run_id, k, s, v) for k, s, v in history])
            db.execute("INSERT INTO fulltext (run_id, name, note, body) VALUES (?, ?, '', ?)", (run_id, name, body))
            db.execute("INSERT INTO words (run_id, name, note, body) VALUES (?, ?, ?, ?)", (run_id, *words))
            db.executemany("INSERT OR IGNORE INTO figure_keys VALUES (?, ?, ?, ?)",
                           [(stage, key, kind, int(num is not None)) for key, num, _, kind in figures])
            if embedding is not None:
                db.execute("INSERT OR REPLACE INTO embeddings VALUES (?, ?, ?)", (run_id, *embedding))
            db.execute("UPDATE runs SET state = 'complete', out_dir = ? WHERE run_id = ?", (out_dir, run_id))

    def recording_mlflow_run(self, run_id: str) -> tuple[bool, str | None]:
        """(whether `run_id` has an interrupted recording, the MLflow run id it had reached)."""
        row = self.db.execute("SELECT mlflow_run_id FROM runs WHERE run_id = ? AND state = 'recording'", (run_id,)).fetchone()
        return (False, None) if row is None else (True, row[0])

    def delete_recording(self, run_id: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM runs WHERE run_id = ? AND state = 'recording'", (run_id,))

    def set_note(self, run_id: str, text: str, note_words: str, embedding: tuple[str, bytes] | None) -> None:
        """The run's note, in its row, its full text and its words; its embedding replaced (dropped when None)."""
        with self.transaction() as db:
            db.execute("UPDATE runs SET note = ? WHERE run_id = ?", (text, run_id))
            db.execute("UPDATE fulltext SET note = ? WHERE run_id = ?", (text, run_id))
            db.execute("UPDATE words SET note = ? WHERE run_id = ?", (note_words, run_id))
            if embedding is None:
                db.execute("DELETE FROM embeddings WHERE run_id = ?", (run_id,))
            else:
                db.execute("INSERT OR REPLACE INTO embeddings VALUES (?, ?, ?)", (run_id, *embedding))

    # MLflow tags waiting for a process that has MLflow loaded anyway (a note from `compass runs note` would
    # otherwise pay seconds of MLflow import): kept in meta as 'mlflow_tag\t<run id>\t<tag>' -> value
    def queue_mlflow_tag(self, run_id: str, tag: str, value: str) -> None:
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (f"mlflow_tag\t{run_id}\t{tag}", value))

    def pending_mlflow_tags(self) -> list[tuple[str, str, str]]:
        """(run id, tag, value) queued by queue_mlflow_tag, oldest first."""
        rows = self.db.execute("SELECT key, value FROM meta WHERE key LIKE 'mlflow\\_tag%' ESCAPE '\\' ORDER BY rowid").fetchall()
        return [(*key.split("\t")[1:3], value) for key, value in rows]

    def clear_mlflow_tag(self, run_id: str, tag: str, value: str) -> None:
        """Drop a queued tag once set (unless a newer value was queued meanwhile)."""
        with self.transaction() as db:
            db.execute("DELETE FROM meta WHERE key = ? AND value = ?", (f"mlflow_tag\t{run_id}\t{tag}", value))

    def set_reproduces(self, run_id: str, original_run_id: str) -> None:
        with self.transaction() as db:
            db.execute("UPDATE runs SET reproduces = ? WHERE run_id = ?", (original_run_id, run_id))

    # --- checking (compass runs check) --------------------------------------------------------------

    def integrity(self) -> list[str]:
        """Problems SQLite finds in the file and in the full-text index (none: [])."""
        problems = []
        integrity = self.db.execute("PRAGMA integrity_check").fetchone()[0]
        if integrity != "ok":
            problems.append(f"index.db integrity: {integrity}")
        try:
            self.db.execute("INSERT INTO fulltext(fulltext) VALUES ('integrity-check')")
        except sqlite3.DatabaseError as err:  # each subclass (corrupt, malformed) is a finding
            problems.append(f"full-text index damaged: {err}")
        return problems

    def run_ids(self, state: str = "complete") -> list[str]:
        return [r[0] for r in self.db.execute("SELECT run_id FROM runs WHERE state = ? ORDER BY run_id", (state,))]

    def row_presence(self) -> tuple[set[str], set[str], dict[str, int]]:
        """(runs with a full-text row, runs with their own lineage row, file rows per run)."""
        in_fts = {r[0] for r in self.db.execute("SELECT run_id FROM fulltext")}
        with_self = {r[0] for r in self.db.execute("SELECT run_id FROM ancestry WHERE depth = 0")}
        file_counts = dict(self.db.execute("SELECT run_id, count(*) FROM files GROUP BY run_id").fetchall())
        return in_fts, with_self, file_counts

    def mlflow_runs(self, tracking_uri: str) -> dict[str, str]:
        """run id -> MLflow run id of complete runs recorded in that tracking store."""
        return dict(self.db.execute("SELECT run_id, mlflow_run_id FROM runs WHERE state='complete' AND tracking_uri = ?",
                                    (tracking_uri,)).fetchall())

    def file_locations(self, sha: str) -> list[tuple[str, str, str, str | None, bool | None]]:
        """(role, relative path, run out_dir, input path, input is a file) of every recorded file with these bytes."""
        rows = self.db.execute(
            "SELECT f.role, f.path, r.out_dir, i.path, i.is_file FROM files f JOIN runs r ON r.run_id = f.run_id "
            "LEFT JOIN inputs i ON i.run_id = f.run_id AND i.port = f.port WHERE f.sha256 = ?", (sha,)).fetchall()
        return [(role, rel, out_dir, in_path, None if is_file is None else bool(is_file)) for role, rel, out_dir, in_path, is_file in rows]


def _marks(items) -> str:
    return ",".join("?" * len(items))


# --- figure filters as SQL -------------------------------------------------------------------------------

def like_literal(text: str) -> str:
    """`text` as a LIKE pattern that matches only itself (use with ESCAPE '\\'): % and _ are wildcards otherwise."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


REL_TOL = 1e-9  # numbers compare equal within this relative tolerance (0.1 + 0.2 = 0.3)


def _value_sql(cmp: Cmp) -> tuple[str, list]:
    if isinstance(cmp.value, float):
        tol = REL_TOL * max(1.0, abs(cmp.value))
        if cmp.op == "=":
            return "f.num BETWEEN ? AND ?", [cmp.value - tol, cmp.value + tol]
        if cmp.op == "!=":
            return "f.num IS NOT NULL AND f.num NOT BETWEEN ? AND ?", [cmp.value - tol, cmp.value + tol]
        return f"f.num {cmp.op} ?", [cmp.value]
    if cmp.op == "~":
        return "f.text LIKE ? ESCAPE '\\'", [f"%{like_literal(cmp.value)}%"]
    return f"f.text {cmp.op} ?", [cmp.value]


def cmp_sql(cmp: Cmp) -> tuple[str, list]:
    """SQL selecting run_ids for which `cmp` holds."""
    cond, values = _value_sql(cmp)
    parts, params = [], []
    for prefix, key in name_forms(cmp.name):
        if prefix is None:
            parts.append(f"SELECT f.run_id FROM figures f WHERE f.key = ? AND {cond}")
            params += [key, *values]
        else:
            # CROSS JOIN fixes the order: the figure's index range first, then its run, then descendants; the
            # planner would read the run's wide row through the primary key for its stage and name
            parts.append("SELECT a.run_id FROM figures f CROSS JOIN runs ar INDEXED BY runs_lookup CROSS JOIN ancestry a "
                         "WHERE ar.run_id = f.run_id AND a.ancestor_id = f.run_id "
                         f"AND f.key = ? AND (ar.stage = ? OR ar.name = ?) AND {cond}")
            params += [key, prefix, prefix, *values]
    return " UNION ".join(parts), params


def where_sql(node) -> tuple[str, list]:
    """A boolean SQL expression over `r.run_id` (r = the runs table) for a parsed filter."""
    if isinstance(node, Cmp):
        sql, params = cmp_sql(node)
        return f"r.run_id IN ({sql})", params
    if isinstance(node, Not):
        sql, params = where_sql(node.item)
        return f"NOT ({sql})", params
    if not isinstance(node, BoolOp):
        raise CompassError(f"not a parsed filter: {node!r}")
    parts, params = [], []
    for item in node.items:
        sql, p = where_sql(item)
        parts.append(f"({sql})")
        params += p
    return f" {node.op.upper()} ".join(parts), params


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
