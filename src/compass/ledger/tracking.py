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
from compass.ledger.workspace import Workspace

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
        from mlflow.tracking import MlflowClient

        for noisy in ("mlflow", "alembic"):  # after the import: MLflow sets its loggers up when imported
            logging.getLogger(noisy).setLevel(logging.WARNING)
        # MLflow 3.17's own mapper setup trips SQLAlchemy 2.1's deprecation of `noload`: not ours to act on
        warnings.filterwarnings("ignore", message=r"The ``noload`` loader strategy is deprecated")

        self.workspace = workspace
        self.uri = workspace.tracking_uri
        if workspace.uses_local_sqlite:
            workspace.root.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(tracking_uri=self.uri)
        self.experiment_id = self._experiment()  # the first call creates the sqlite store (migrations)
        if workspace.uses_local_sqlite:
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
        for start in range(0, len(param_list), BATCH):
            self.client.log_batch(mlflow_run_id, params=param_list[start:start + BATCH])
        for start in range(0, len(tag_list), BATCH):
            self.client.log_batch(mlflow_run_id, tags=tag_list[start:start + BATCH])
        for start in range(0, len(metric_list), METRIC_BATCH):
            self.client.log_batch(mlflow_run_id, metrics=metric_list[start:start + METRIC_BATCH])

    def log_artifacts(self, mlflow_run_id: str, manifest: dict[str, Any], config: dict[str, Any]) -> None:
        import json

        with tempfile.TemporaryDirectory(prefix="compass-artifacts-") as tmp:
            (Path(tmp) / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
            (Path(tmp) / "config.yaml").write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False), encoding="utf-8")
            self.client.log_artifact(mlflow_run_id, str(Path(tmp) / "manifest.json"))
            self.client.log_artifact(mlflow_run_id, str(Path(tmp) / "config.yaml"))

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
