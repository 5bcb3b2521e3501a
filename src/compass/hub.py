"""Hub references (datasets and models named by repo id) resolved to the commit they point at, so that a
stage's cache key and its ledger record say which bytes a name meant on the day it ran.

A stage that reads from the hub lists its references with `hub_inputs(config) -> list[HubRef]`; the runner
resolves each one before the cache check (`resolve_revision`) and keeps `{ref.key: commit}` in the manifest.
A branch or tag (`main`) that moved to a new commit is then a cache miss, as a changed input file is.
Online the hub answers; offline (HF_HUB_OFFLINE=1) the local hub cache's refs do, and a reference the cache
does not hold is one clear error.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from compass.errors import CompassError

_COMMIT = re.compile(r"[0-9a-f]{40}")


@dataclass(frozen=True)
class HubRef:
    repo_type: Literal["dataset", "model"]
    repo_id: str
    revision: str | None = None  # branch, tag or commit; None means the repo's default branch

    @property
    def key(self) -> str:
        return f"{self.repo_type}:{self.repo_id}@{self.revision or 'main'}"


def hub_cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _cached_commit(ref: HubRef) -> str | None:
    """The commit the local hub cache maps `ref` to (refs/<branch-or-tag>, or a snapshot named by commit)."""
    folder = hub_cache_dir() / f"{ref.repo_type}s--{ref.repo_id.replace('/', '--')}"
    revision = ref.revision or "main"
    if _COMMIT.fullmatch(revision):
        return revision if (folder / "snapshots" / revision).is_dir() else None
    ref_file = folder / "refs" / revision
    return ref_file.read_text(encoding="utf-8").strip() if ref_file.is_file() else None


def resolve_revision(ref: HubRef) -> str:
    """The 40-hex commit `ref` points at now."""
    if offline():
        commit = _cached_commit(ref)
        if commit is None:
            raise CompassError(f"{ref.repo_type} {ref.repo_id!r} (revision {ref.revision or 'main'}) is not in the "
                               f"local hub cache {hub_cache_dir()} and HF_HUB_OFFLINE=1: download it on a machine "
                               "with the hub (huggingface-cli download), or give a local path")
        return commit
    from huggingface_hub import HfApi

    api = HfApi(token=os.environ.get("HF_TOKEN"))
    info = (api.dataset_info if ref.repo_type == "dataset" else api.model_info)(ref.repo_id, revision=ref.revision)
    return info.sha


def resolve_all(refs: list[HubRef]) -> dict[str, str]:
    return {ref.key: resolve_revision(ref) for ref in refs}
