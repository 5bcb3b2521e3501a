"""The run ledger: every stage run recorded in MLflow and in a content-addressed store, with lineage,
leaderboards, search by words / meaning / figures, diff, reproduce and a static HTML report.

Importing this package is cheap (no MLflow, no torch): the runner calls record_stage_run() after every
stage. The ledger is a library below the runner; the `compass runs ...` verbs and reproduce (which runs
stages again) live above it, in compass.commands.
"""
from __future__ import annotations

import importlib

__all__ = ["record_stage_run", "detach_links", "Workspace", "find_workspace"]

# name -> module, loaded on first use: importing compass.ledger.redact or .workspace (light) must not load
# the recorder (pydantic manifests, lineage, the embedding model's wrapper)
_LAZY = {"record_stage_run": "compass.ledger.record", "detach_links": "compass.ledger.store",
         "Workspace": "compass.ledger.workspace", "find_workspace": "compass.ledger.workspace"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'compass.ledger' has no attribute {name!r}")
