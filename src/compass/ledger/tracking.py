"""MLflow side of the ledger: one MLflow run per stage run, so `mlflow ui` on the same store shows params
(flattened config), the tags a person filters on (stage, name, recipe, commit, data recipe, lineage), metric
history and artifacts (resolved config, manifest, file hashes, log history, eval predictions and summary,
adapter config and model card). MLflow is imported here only, so `compass --help` stays fast.

A stage's run is live: the runner opens it when the stage starts (`live_stage_run`: RUNNING, real start
time, FAILED if the stage raises), training streams its log entries into it as the trainer logs them
(`LiveRun.log_entry`, also from rank 0 of an `accelerate launch`ed stage, which finds the run through
$COMPASS_MLFLOW_RUN_ID), and the ledger's recording adopts it (`Tracker.start`) and closes it FINISHED.
`compass run` opens one parent run per recipe run; its stages are the children (mlflow.parentRunId).
Experiments: $MLFLOW_EXPERIMENT_NAME if set, else the recipe's name, else "compass"; each is tagged as a
model-training experiment so the UI opens on its runs table."""
from __future__ import annotations

import logging
import os
import re
import sqlite3
import tempfile
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from compass.errors import CompassError
from compass.ledger.redact import redact_text
from compass.ledger.workspace import Workspace, ledger_lock

EXPERIMENT_ENV = "MLFLOW_EXPERIMENT_NAME"
DEFAULT_EXPERIMENT = "compass"
RUN_ENV = "COMPASS_MLFLOW_RUN_ID"        # the live stage run, for processes the stage launches
PARENT_ENV = "COMPASS_MLFLOW_PARENT_RUN_ID"  # the recipe's parent run while `compass run` runs
# MLflow's UI opens an experiment on the runs table (not the GenAI traces page) when it carries this tag
EXPERIMENT_KIND_TAG = ("mlflow.experimentKind", "custom_model_development")
# tags that are lists of files or versions: too many to filter on, kept whole in the files.json artifact
BULK_TAG_PREFIXES = ("compass.output", "compass.input", "compass.version.")
# files of a stage's out dir worth opening from the MLflow UI (relative paths; directories taken whole)
OUT_DIR_ARTIFACTS = ("log_history.json", "metrics.json", "summary.md", "predictions", "adapter/adapter_config.json",
                     "adapter/README.md", "README.md")
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


_TRACKERS: dict[tuple[str, str, str], "Tracker"] = {}


def tracker_for(workspace: Workspace) -> "Tracker":
    """MLflow client per (store, experiment), kept for the process: its setup costs a query or two, and the
    live runs it opened must be found again by the recording."""
    key = (str(workspace.root), workspace.tracking_uri, experiment_name())
    if key not in _TRACKERS:
        _TRACKERS[key] = Tracker(workspace)
    return _TRACKERS[key]


class recipe_experiment:
    """While a recipe runs: its MLflow experiment is the recipe's name, unless the user set $MLFLOW_EXPERIMENT_NAME."""

    def __init__(self, recipe_name: str):
        self.recipe_name = recipe_name

    def __enter__(self):
        self.saved = os.environ.get(EXPERIMENT_ENV)
        if not self.saved:
            os.environ[EXPERIMENT_ENV] = self.recipe_name
        return self

    def __exit__(self, *exc):
        if not self.saved:
            os.environ.pop(EXPERIMENT_ENV, None)
        return False


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
        self.live: dict[str, dict[str, Any]] = {}  # MLflow run id -> {name, stage, out_dir}: opened, not yet recorded
        self.out_dirs: dict[str, Path] = {}       # MLflow run id -> the stage's out dir (artifacts come from there)
        self.adopted: set[str] = set()            # live runs a recording took over (they may hold streamed metrics)
        self.known: dict[str, str] = {}           # compass run id -> MLflow run id, of runs this process recorded
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
            return self.client.create_experiment(name, artifact_location=location, tags=dict([EXPERIMENT_KIND_TAG]))
        except MlflowException:  # created meanwhile by another process
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def open_run(self, run_name: str, tags: dict[str, str]) -> str:
        """A RUNNING run starting now (create_run stamps the start time)."""
        run = self.client.create_run(self.experiment_id, run_name=run_name,
                                     tags={mlflow_key(k): _clip(v, MAX_TAG_VALUE) for k, v in tags.items()})
        return run.info.run_id

    def start(self, run_name: str, tags: dict[str, str]) -> str:
        """The MLflow run a recording fills: the stage's live run when this process opened one for it (it then
        gets the recording's tags), else a new run (recording a run made before, or elsewhere)."""
        for mlflow_run_id, live in reversed(list(self.live.items())):
            if live["name"] == run_name and live["stage"] == tags["compass.stage"]:
                del self.live[mlflow_run_id]
                self.adopted.add(mlflow_run_id)
                for key, value in tags.items():
                    self.set_tag(mlflow_run_id, key, value)
                self.known[tags["compass.run_id"]] = mlflow_run_id
                return mlflow_run_id
        mlflow_run_id = self.open_run(run_name, tags)
        if "compass.run_id" in tags:
            self.known[tags["compass.run_id"]] = mlflow_run_id
        return mlflow_run_id

    def log(self, mlflow_run_id: str, *, params: dict[str, str], tags: dict[str, str],
            metrics: dict[str, float], history: list[tuple[str, int, float]]) -> None:
        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        if "compass.out_dir" in tags:
            self.out_dirs[mlflow_run_id] = Path(tags["compass.out_dir"])
        tags = self._filter_tags(tags)
        if mlflow_run_id in self.adopted:
            # metrics the live run already streamed (train/loss at every logged step) are not logged twice
            self.adopted.discard(mlflow_run_id)
            streamed = set(self.client.get_run(mlflow_run_id).data.metrics)
            history = [(k, step, v) for k, step, v in history if mlflow_key(k) not in streamed]
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

    def _filter_tags(self, tags: dict[str, str]) -> dict[str, str]:
        """The tags a person filters on; file hashes and versions go to files.json; lineage also by MLflow id."""
        kept = {k: v for k, v in tags.items() if not k.startswith(BULK_TAG_PREFIXES)}
        parents = [p for p in kept["compass.parents"].split(",") if p] if "compass.parents" in kept else []
        if parents:
            found = self.find_compass_runs(parents)
            kept["compass.parent_mlflow_runs"] = ",".join(found[p] for p in parents if p in found)
        return kept

    def find_compass_runs(self, compass_ids: list[str]) -> dict[str, str]:
        """compass run id -> MLflow run id, over every experiment of the store (MLflow's tag filters have no IN:
        one query per id; a run has a handful of parents)."""
        found = {rid: self.known[rid] for rid in compass_ids if rid in self.known}
        missing = [rid for rid in compass_ids if rid not in found]
        experiments = self.experiment_ids() if missing else []
        for rid in missing:
            for run in self.client.search_runs(experiments, filter_string=f"tags.`compass.run_id` = '{rid}'", max_results=1):
                found[rid] = run.info.run_id
        return found

    def experiment_ids(self) -> list[str]:
        return [e.experiment_id for e in self.client.search_experiments()]

    def log_artifacts(self, mlflow_run_id: str, manifest: dict[str, Any], config: dict[str, Any]) -> None:
        import json
        import shutil

        files = {"outputs": manifest["outputs"], "inputs": {port: rec["files"] for port, rec in manifest["inputs"].items()},
                 "versions": manifest["versions"]}
        with tempfile.TemporaryDirectory(prefix="compass-artifacts-") as tmp:
            (Path(tmp) / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
            (Path(tmp) / "config.yaml").write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False), encoding="utf-8")
            (Path(tmp) / "files.json").write_text(json.dumps(files, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
            out_dir = self.out_dirs.pop(mlflow_run_id, None)  # None: a recording without its out dir tag
            if out_dir is not None:
                for rel in OUT_DIR_ARTIFACTS:
                    source = out_dir / rel
                    target = Path(tmp) / "outputs" / rel
                    if source.is_file():
                        target.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copyfile(source, target)
                    elif source.is_dir():
                        shutil.copytree(source, target)
            self.client.log_artifacts(mlflow_run_id, tmp)

    def finish(self, mlflow_run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(mlflow_run_id, status=status)

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
        experiments = self.experiment_ids()  # one experiment per recipe: the store's runs are in all of them
        while True:
            page = self.client.search_runs(experiments, filter_string="tags.`compass.run_id` != ''",
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


# --- live runs ---------------------------------------------------------------------------------------------


class LiveRun:
    """A stage's open MLflow run: log entries of the trainer go in as they come (step, wall-clock time)."""

    def __init__(self, tracker: Tracker, mlflow_run_id: str):
        self.tracker, self.mlflow_run_id = tracker, mlflow_run_id

    def log_entry(self, step: int, entry: dict[str, Any], prefix: str) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(mlflow_key(prefix + k), float(v), now, step) for k, v in entry.items()
                   if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)]
        if metrics:
            self.tracker.client.log_batch(self.mlflow_run_id, metrics=metrics)


_OPEN: dict[str, LiveRun] = {}  # out dir -> the live run of the stage writing there, in this process


def live_run_for(out_dir: Path) -> LiveRun | None:
    """The live run of the stage writing to out_dir: opened by this process, or (in a launched process) named by
    $COMPASS_MLFLOW_RUN_ID. None when no run is open (a stage function called directly, not through the runner)."""
    key = str(Path(out_dir).resolve())
    if key in _OPEN:
        return _OPEN[key]
    if os.environ.get(RUN_ENV):
        _OPEN[key] = LiveRun(tracker_for(Workspace.current()), os.environ[RUN_ENV])
        return _OPEN[key]
    return None


_AWAITING_RECORD: dict[str, tuple[Tracker, str]] = {}  # out dir -> the live run of a stage that succeeded, until recorded


class live_stage_run:
    """Open the stage's MLflow run now, RUNNING (child of the recipe's run under `compass run`); on an exception
    close it FAILED; on success leave it for the recording (`Tracker.start` adopts it, `finish` closes it), which
    the runner wraps in `live_stage_run.recording(out_dir)`: a recording that fails closes it FAILED too, so no
    run stays RUNNING after its process went on."""

    def __init__(self, stage: str, name: str, out_dir: Path, recipe: str | None):
        self.stage, self.name, self.out_dir, self.recipe = stage, name, Path(out_dir).resolve(), recipe

    def __enter__(self) -> LiveRun:
        self.tracker = tracker_for(Workspace.current())
        tags = {"compass.stage": self.stage, "compass.name": self.name, "compass.recipe": self.recipe or "",
                "compass.out_dir": str(self.out_dir), "mlflow.source.name": f"compass {self.stage}", "mlflow.source.type": "LOCAL"}
        if os.environ.get(PARENT_ENV):
            tags["mlflow.parentRunId"] = os.environ[PARENT_ENV]
        mlflow_run_id = self.tracker.open_run(self.name, tags)
        self.tracker.live[mlflow_run_id] = {"name": self.name, "stage": self.stage}
        self.run = LiveRun(self.tracker, mlflow_run_id)
        _OPEN[str(self.out_dir)] = self.run
        self.saved_env = os.environ.get(RUN_ENV)
        os.environ[RUN_ENV] = mlflow_run_id  # for `accelerate launch`ed processes of this stage
        return self.run

    def __exit__(self, exc_type, exc, tb):
        _OPEN.pop(str(self.out_dir), None)
        if self.saved_env is None:
            os.environ.pop(RUN_ENV, None)
        else:
            os.environ[RUN_ENV] = self.saved_env
        if exc_type is not None:
            self.tracker.live.pop(self.run.mlflow_run_id, None)
            status = "KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED"
            self.tracker.set_tag(self.run.mlflow_run_id, "compass.error", f"{exc_type.__name__}: {exc}")
            self.tracker.finish(self.run.mlflow_run_id, status)
        else:
            _AWAITING_RECORD[str(self.out_dir)] = (self.tracker, self.run.mlflow_run_id)
        return False

    @staticmethod
    @contextmanager
    def recording(out_dir: Path):
        """Around the ledger's recording of the stage that wrote `out_dir`: if it raises, the stage's live run (adopted
        or not, finished by the recording or not) ends FAILED (KILLED on Ctrl-C) with the error as compass.error."""
        key = str(Path(out_dir).resolve())
        try:
            yield
        except BaseException as err:
            awaiting = _AWAITING_RECORD.pop(key, None)
            if awaiting is not None:
                tracker, mlflow_run_id = awaiting
                tracker.live.pop(mlflow_run_id, None)  # not to be adopted by a later recording in this process
                status = "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED"
                tracker.set_tag(mlflow_run_id, "compass.error", redact_text(f"recording failed: {type(err).__name__}: {err}"))
                tracker.finish(mlflow_run_id, status)
            raise
        _AWAITING_RECORD.pop(key, None)


class recipe_run:
    """One parent MLflow run per `compass run`: the stages run as its children; FAILED if the recipe fails."""

    def __init__(self, recipe_name: str, recipe_file: str, workdir: Path):
        self.recipe_name, self.recipe_file, self.workdir = recipe_name, recipe_file, workdir

    def __enter__(self) -> "recipe_run":
        self.tracker = tracker_for(Workspace.current())
        self.mlflow_run_id = self.tracker.open_run(f"{self.recipe_name} (recipe)", {
            "compass.recipe": self.recipe_name, "compass.recipe_file": self.recipe_file, "compass.workdir": str(self.workdir),
            "compass.kind": "recipe", "mlflow.source.name": "compass run", "mlflow.source.type": "LOCAL"})
        self.saved = os.environ.get(PARENT_ENV)
        os.environ[PARENT_ENV] = self.mlflow_run_id
        return self

    def log_summary(self, summary_text: str, stages: dict[str, dict[str, Any]]) -> None:
        """The closing table as an artifact, and per stage its state and wall time as metrics."""
        self.tracker.client.log_text(self.mlflow_run_id, summary_text + "\n", "summary.txt")
        self.tracker.client.log_dict(self.mlflow_run_id, stages, "stages.json")

    def __exit__(self, exc_type, exc, tb):
        if self.saved is None:
            os.environ.pop(PARENT_ENV, None)
        else:
            os.environ[PARENT_ENV] = self.saved
        status = "FINISHED" if exc_type is None else "KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED"
        self.tracker.finish(self.mlflow_run_id, status)
        return False
