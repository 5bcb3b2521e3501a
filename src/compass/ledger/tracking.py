"""MLflow side of the ledger: one MLflow run per recorded stage run, so `mlflow ui` on the same store
shows params (flattened config), tags (hashes, code commit, lineage, data recipe), metric history and
the manifest/config artifacts. MLflow is imported here only, so `compass --help` stays fast."""
from __future__ import annotations

import logging
import os
import re
import sqlite3
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import yaml

from compass.errors import CompassError
from compass.ledger.workspace import Workspace, ledger_lock

EXPERIMENT_ENV = "MLFLOW_EXPERIMENT_NAME"
DEFAULT_EXPERIMENT = "compass"
BATCH = 100          # MLflow's limit of params + tags in one log_batch request
METRIC_BATCH = 1000  # and of metrics
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 5000
MAX_KEY = 250
BAD_KEY_CHARS = re.compile(r"[^A-Za-z0-9_\-. /]")


def mlflow_key(key: str) -> str:
    """MLflow accepts letters, digits, _ - . space and / in keys, up to 250 characters."""
    clean = BAD_KEY_CHARS.sub("_", key)
    return clean if len(clean) <= MAX_KEY else clean[: MAX_KEY - 9] + "~" + _short_hash(key)


def _short_hash(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:8]


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 20] + f"...[{len(text)} chars]"


def experiment_name() -> str:
    name = os.environ.get(EXPERIMENT_ENV)
    return name if name else DEFAULT_EXPERIMENT


class Tracker:
    def __init__(self, workspace: Workspace):
        # compass runs offline: no usage reports from MLflow (they would also cost a thread per call)
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        from mlflow.tracking import MlflowClient

        for noisy in ("mlflow", "alembic"):  # after the import: MLflow sets its loggers up when imported
            logging.getLogger(noisy).setLevel(logging.WARNING)
        # MLflow 3.17's own mapper setup trips SQLAlchemy 2.1's deprecation of `noload`: not ours to act on
        warnings.filterwarnings("ignore", message=r"The ``noload`` loader strategy is deprecated")

        self.workspace = workspace
        self.uri = workspace.tracking_uri
        if workspace.uses_local_sqlite:
            workspace.root.mkdir(parents=True, exist_ok=True)
        if not workspace.uses_local_sqlite:
            self.client = MlflowClient(tracking_uri=self.uri)
            self.experiment_id = self._experiment()
            return
        _fast_commits(workspace.mlflow_db)
        # the first client creates the sqlite store (migrations): two processes doing it at once collide
        with ledger_lock(workspace):
            self.client = MlflowClient(tracking_uri=self.uri)
            self.experiment_id = self._experiment()
            _use_wal(workspace.mlflow_db)

    def _experiment(self) -> str:
        from mlflow.exceptions import MlflowException

        name = experiment_name()
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        location = self.workspace.artifact_root.as_uri() if self.workspace.uses_local_sqlite else None
        try:
            return self.client.create_experiment(name, artifact_location=location)
        except MlflowException:  # created meanwhile by another process
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def start(self, run_name: str, tags: dict[str, str]) -> str:
        run = self.client.create_run(self.experiment_id, run_name=run_name,
                                     tags={mlflow_key(k): _clip(v, MAX_TAG_VALUE) for k, v in tags.items()})
        return run.info.run_id

    def log(self, mlflow_run_id: str, *, params: dict[str, str], tags: dict[str, str],
            metrics: dict[str, float], history: list[tuple[str, int, float]]) -> None:
        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        param_list = [Param(mlflow_key(k), _clip(v, MAX_PARAM_VALUE)) for k, v in params.items()]
        tag_list = [RunTag(mlflow_key(k), _clip(v, MAX_TAG_VALUE)) for k, v in tags.items()]
        metric_list = [Metric(mlflow_key(k), v, now, 0) for k, v in metrics.items()]
        metric_list += [Metric(mlflow_key(k), v, now, step) for k, step, v in history]
        # one request carries up to 100 params, 100 tags and the rest of 1000 entities in metrics
        batches = max(1, -(-len(param_list) // BATCH), -(-len(tag_list) // BATCH), -(-len(metric_list) // (METRIC_BATCH - 2 * BATCH)))
        step = METRIC_BATCH - 2 * BATCH
        for i in range(batches):
            self.client.log_batch(mlflow_run_id, params=param_list[i * BATCH:(i + 1) * BATCH],
                                  tags=tag_list[i * BATCH:(i + 1) * BATCH], metrics=metric_list[i * step:(i + 1) * step])

    def log_artifacts(self, mlflow_run_id: str, manifest: dict[str, Any], config: dict[str, Any]) -> None:
        import json

        with tempfile.TemporaryDirectory(prefix="compass-artifacts-") as tmp:
            (Path(tmp) / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
            (Path(tmp) / "config.yaml").write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False), encoding="utf-8")
            self.client.log_artifacts(mlflow_run_id, tmp)

    def finish(self, mlflow_run_id: str) -> None:
        self.client.set_terminated(mlflow_run_id, status="FINISHED")

    def set_tag(self, mlflow_run_id: str, key: str, value: str) -> None:
        self.client.set_tag(mlflow_run_id, mlflow_key(key), _clip(value, MAX_TAG_VALUE))

    def delete(self, mlflow_run_id: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.delete_run(mlflow_run_id)
        except MlflowException as err:
            if "RESOURCE_DOES_NOT_EXIST" not in str(err.error_code):
                raise

    def status(self, mlflow_run_id: str) -> str | None:
        """FINISHED / RUNNING / ... of a live (not deleted) MLflow run, or None when it is missing."""
        from mlflow.exceptions import MlflowException

        try:
            run = self.client.get_run(mlflow_run_id)
        except MlflowException as err:
            if "RESOURCE_DOES_NOT_EXIST" in str(err.error_code):
                return None
            raise
        return run.info.status if run.info.lifecycle_stage == "active" else None

    def compass_runs(self) -> dict[str, tuple[str, str]]:
        """compass run id -> (MLflow run id, status) of every live MLflow run carrying a compass.run_id tag."""
        out: dict[str, tuple[str, str]] = {}
        token = None
        while True:
            page = self.client.search_runs([self.experiment_id], filter_string="tags.`compass.run_id` != ''",
                                           max_results=1000, page_token=token)
            for run in page:
                out[run.data.tags["compass.run_id"]] = (run.info.run_id, run.info.status)
            token = page.token
            if not token:
                return out


def _use_wal(db: Path) -> None:
    """WAL lets readers work while a recording writes; set once, it stays in the file."""
    if not db.is_file():
        raise CompassError(f"MLflow did not create its store at {db}")
    conn = sqlite3.connect(db, timeout=60)
    try:
        if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            conn.execute("PRAGMA journal_mode = WAL")
    finally:
        conn.close()


_FAST: set[str] = set()


def _fast_commits(db: Path) -> None:
    """synchronous=NORMAL on MLflow's connections to our sqlite store: in WAL mode a commit then needs
    no fsync (a process kill loses nothing; a power cut may lose the last commits, never consistency).
    A recording makes several MLflow commits; with an fsync each they dominated its time."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    if not _FAST:
        def on_connect(dbapi_connection, _record) -> None:
            if isinstance(dbapi_connection, sqlite3.Connection):
                path = dbapi_connection.execute("PRAGMA database_list").fetchone()[2]
                if path in _FAST:
                    dbapi_connection.execute("PRAGMA synchronous = NORMAL")
                    dbapi_connection.execute("PRAGMA busy_timeout = 60000")

        event.listen(Engine, "connect", on_connect)
    _FAST.add(str(db))
