"""Run manifests: what a stage run read, wrote, and measured, written atomically as manifest.json.

A manifest with status "complete" marks a finished stage; its config hash, input hashes, the stage's code
version and the commits of its hub references are the cache key the recipe runner compares. The ledger builds on these records.
"""
from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import platform
import subprocess
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from compass.errors import CompassError
from compass.io import write_json_atomic

MANIFEST_NAME = "manifest.json"
TRACKED_LIBRARIES = ("compass-vlm", "torch", "transformers", "trl", "peft", "accelerate", "datasets", "tokenizers")


class InputRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str
    files: dict[str, str] = Field(description="relative path -> sha256")


class CodeVersion(BaseModel):
    model_config = ConfigDict(extra="forbid")

    commit: str | None
    dirty: bool | None


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    stage: str
    name: str
    status: str = "complete"
    run_id: str
    config: dict[str, Any]
    config_hash: str
    # the stage module's VERSION (0 in manifests written before versions existed: never a cache hit)
    stage_version: int = 0
    # hub references the stage read, 'dataset:owner/name@main' -> the commit it resolved to
    hub_revisions: dict[str, str] = Field(default_factory=dict)
    seed: int
    code: CodeVersion
    versions: dict[str, str]
    inputs: dict[str, InputRecord]
    outputs: dict[str, str] = Field(description="relative path in the output dir -> sha256")
    started_at: str
    wall_time_s: float
    metrics: dict[str, Any]
    launch: dict[str, Any] | None = None
    recipe: str | None = None
    # `compass sweep`: {name, variants sharing this run, values of the axes that reach it} (compass.sweep)
    sweep: dict[str, Any] | None = None

    def input_key(self) -> dict[str, dict[str, str]]:
        return {name: rec.files for name, rec in self.inputs.items()}


def code_version() -> CodeVersion:
    """The git commit of the compass source tree and whether it has uncommitted changes (None outside git)."""
    src = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if commit.returncode != 0:
            return CodeVersion(commit=None, dirty=None)
        status = subprocess.run(
            ["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=30,
        )
    except FileNotFoundError:  # no git binary on this machine
        return CodeVersion(commit=None, dirty=None)
    return CodeVersion(commit=commit.stdout.strip(), dirty=bool(status.stdout.strip()))


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in TRACKED_LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def write_manifest(out_dir: Path, manifest: Manifest) -> Path:
    path = Path(out_dir) / MANIFEST_NAME
    write_json_atomic(path, manifest.model_dump(mode="json"))
    return path


def read_manifest(out_dir: Path) -> Manifest | None:
    """The manifest of a completed stage, or None when the directory holds no finished run."""
    path = Path(out_dir) / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        return Manifest.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, ValueError) as err:
        raise CompassError(f"{path}: unreadable manifest ({err}); delete the directory to rerun the stage") from None
