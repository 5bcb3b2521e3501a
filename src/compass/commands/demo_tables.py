"""The demo's closing table: the leaderboard of the recipe's own runs, read from the ledger."""
from __future__ import annotations

from compass.ledger.workspace import Workspace


def print_demo_leaderboard(run_ids: list[str], prefer: tuple[str, ...] = ("problems.accuracy",)) -> None:
    """The leaderboard of a recipe's own runs (the demo's last lines), on the first metric they have."""
    from compass.ledger.index import Index
    from compass.ledger.query import leaderboard
    from compass.ledger.tables import render

    workspace = Workspace.current()
    index = Index(workspace.index_db, create=False)
    try:
        ids = set(run_ids)
        # the preferred metrics, then what evaluations report most, then what any run reports most
        candidates = list(prefer) + index.common_metric_keys(stage="eval") + index.common_metric_keys(limit=3)
        for metric in candidates:
            if index.any_has_figure(metric, ids):
                board = leaderboard(index, metric, run_ids=ids)
                print(f"\nleaderboard ({metric}; ledger {workspace.root}):")
                recipe = [c for c in ("training pairs", "held-out pairs", "seeds", "hparams") if any(row[c] for row in board)]
                print(render(board, ["rank", "run", "name", metric, *recipe], "table", max_width=60))
                print(f"more: compass runs leaderboard --metric {metric} | compass runs report | compass runs lineage {board[0]['run']}")
                return
        print(f"\nledger: {workspace.root} (compass runs list)")
    finally:
        index.close()
