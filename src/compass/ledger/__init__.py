"""The run ledger: every stage run recorded in MLflow and in a content-addressed store, with lineage,
leaderboards, search by words / meaning / figures, diff, reproduce and a static HTML report.

Importing this package is cheap (no MLflow, no torch): the runner calls record_stage_run() after every
stage. The ledger is a library below the runner; the `compass runs ...` verbs and reproduce (which runs
stages again) live above it, in compass.commands.
"""
from compass.ledger.record import record_stage_run
from compass.ledger.store import detach_links
from compass.ledger.workspace import Workspace, find_workspace

__all__ = ["record_stage_run", "detach_links", "Workspace", "find_workspace"]
