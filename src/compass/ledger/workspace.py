"""Where the ledger lives. The one place that decides it.

The workspace is a directory holding:
    mlflow.db        MLflow's tracking store (sqlite), unless a tracking URI points elsewhere
    mlartifacts/     MLflow's artifact root for that store (manifest.json, config.yaml of each run)
    index.db         the ledger's own index: runs, file hashes, lineage, figures, full text, embeddings
    store/sha256/    the content-addressed store: every input and output file, stored once by sha256
    ledger.lock      serialises recording across processes (flock; released by the kernel if a process dies)

Which workspace: $COMPASS_HOME if set; else the nearest `.compass` directory in the current directory
or one of its parents (like git finds `.git`, so `compass runs list` works from a subdirectory);
else `./.compass`, created on first record. The MLflow tracking store is $MLFLOW_TRACKING_URI when set
(or `--tracking-uri` on `compass runs`), else the sqlite file above.
"""
from __future__ import annotations

import fcntl
import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

HOME_ENV = "COMPASS_HOME"
TRACKING_ENV = "MLFLOW_TRACKING_URI"
DIR_NAME = ".compass"


def find_workspace(start: Path | None = None) -> Path:
    """The workspace directory (not created here)."""
    if os.environ.get(HOME_ENV):
        return Path(os.environ[HOME_ENV]).expanduser().resolve()
    start = (start or Path.cwd()).resolve()
    for folder in (start, *start.parents):
        if (folder / DIR_NAME).is_dir():
            return folder / DIR_NAME
    return start / DIR_NAME


@dataclass(frozen=True)
class Workspace:
    root: Path
    tracking_uri_override: str | None = None

    @classmethod
    def current(cls, home: str | Path | None = None, tracking_uri: str | None = None) -> "Workspace":
        root = Path(home).expanduser().resolve() if home else find_workspace()
        return cls(root, tracking_uri)

    @property
    def mlflow_db(self) -> Path:
        return self.root / "mlflow.db"

    @property
    def artifact_root(self) -> Path:
        return self.root / "mlartifacts"

    @property
    def index_db(self) -> Path:
        return self.root / "index.db"

    @property
    def store_dir(self) -> Path:
        return self.root / "store"

    @property
    def lock_path(self) -> Path:
        return self.root / "ledger.lock"

    @property
    def tracking_uri(self) -> str:
        if self.tracking_uri_override:
            return self.tracking_uri_override
        if os.environ.get(TRACKING_ENV):
            return os.environ[TRACKING_ENV]
        return f"sqlite:///{self.mlflow_db}"

    @property
    def uses_local_sqlite(self) -> bool:
        return self.tracking_uri == f"sqlite:///{self.mlflow_db}"


_LOCK_STATE = threading.local()
_THREADS = threading.RLock()


@contextmanager
def ledger_lock(workspace: Workspace):
    """One recorder at a time per workspace: MLflow's sqlite store, the store and the index change together.
    flock is released by the kernel when a holder dies, so a killed recorder never blocks the next.
    Re-entrant within a thread (a note taken while checking, say); threads of one process queue on an RLock."""
    held: dict[str, int] = _LOCK_STATE.__dict__.setdefault("held", {})
    key = str(workspace.lock_path)
    if key in held and held[key]:
        held[key] += 1
        try:
            yield
        finally:
            held[key] -= 1
        return
    workspace.root.mkdir(parents=True, exist_ok=True)
    with _THREADS, open(workspace.lock_path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        held[key] = 1
        try:
            yield
        finally:
            held[key] = 0
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
