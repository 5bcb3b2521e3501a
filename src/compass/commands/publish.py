"""`compass runs publish` (a static leaderboard + machine-readable export) and `compass runs import`."""
from __future__ import annotations

import datetime as dt
import html
import shutil
from pathlib import Path

from compass.errors import CompassError
from compass.ledger.workspace import Workspace, ledger_lock

SITE = "index.html"


def publish(workspace: Workspace, out_dir: Path, *, where: str | None = None, title: str = "compass runs",
            max_artifact_bytes: int) -> tuple[Path, int]:
    """Write the export and the site into `out_dir` (a new or empty directory, or an earlier publish)."""
    from compass.io import write_text_atomic
    from compass.ledger.ablation import build_tables, render_tables
    from compass.ledger.exchange import RUNS_JSONL, write_export
    from compass.ledger.flat import flatten
    from compass.ledger.index import Index
    from compass.ledger.metric_direction import lower_is_better
    from compass.ledger.query import where_run_ids
    from compass.ledger.site import build_site
    from compass.ledger.store import ContentStore

    out_dir = Path(out_dir).resolve()
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / RUNS_JSONL).is_file():
        raise CompassError(f"--out {out_dir} holds files that are not a compass publish; give a new or empty directory")
    index = Index(workspace.index_db, create=False)
    try:
        run_ids = where_run_ids(index, where) if where else None
        if (out_dir / "artifacts").is_dir():
            shutil.rmtree(out_dir / "artifacts")  # an earlier publish of this directory: artifacts are rewritten
        records = write_export(index, ContentStore(workspace.store_dir), out_dir, run_ids=run_ids,
                               max_artifact_bytes=max_artifact_bytes)
        sweeps: dict[str, list] = {}
        for record in records:
            block = record["manifest"].get("sweep")  # only runs made by `compass sweep` have one
            if block is not None:
                sweeps.setdefault(block["name"], []).append(record)
        parts = []
        for name, members in sweeps.items():
            specs = members[-1]["manifest"]["sweep"]["tables"]
            rows = [(r["run_id"], r["manifest"]["sweep"], flatten(r["manifest"]["metrics"])) for r in members]
            if specs:
                parts.append(f"<h2>Ablations: {html.escape(name)}</h2>")
                parts += [render_tables(build_tables(rows, **spec), "html") for spec in specs]
    finally:
        index.close()
    artifacts = {p.name for p in (out_dir / "artifacts").iterdir()} if (out_dir / "artifacts").is_dir() else set()
    published = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    write_text_atomic(out_dir / SITE, build_site(records, title=title, published=published, artifacts=artifacts,
                                                 ablations="\n".join(parts), lower_is_better=lower_is_better))
    return out_dir / SITE, len(records)


def import_runs(workspace: Workspace, export_dir: Path, origin: str | None) -> tuple[int, int]:
    from compass.ledger.embed import embedder
    from compass.ledger.exchange import import_export
    from compass.ledger.index import Index
    from compass.ledger.store import ContentStore

    export_dir = Path(export_dir)
    origin = origin or export_dir.resolve().name
    embed = embedder()
    index = Index(workspace.index_db)
    try:
        with ledger_lock(workspace):
            return import_export(index, ContentStore(workspace.store_dir), export_dir, origin=origin, embed=embed)
    finally:
        index.close()
