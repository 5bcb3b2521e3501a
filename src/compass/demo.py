"""`compass demo`: the packaged tiny recipe, offline on a CPU, into a fresh work directory."""
from __future__ import annotations

import datetime as dt
import time
from importlib import resources
from pathlib import Path

from compass.pipeline import run_recipe

RECIPE_DIR = resources.files("compass") / "recipes"


def packaged_recipe(name: str) -> Path:
    return Path(str(RECIPE_DIR / f"{name}.yaml"))


def run_demo(workdir: Path | None = None) -> dict:
    workdir = workdir or Path("compass-demo") / dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    t0 = time.perf_counter()
    results = run_recipe(packaged_recipe("tiny"), workdir)
    print()
    print(f"demo finished in {time.perf_counter() - t0:.1f}s; results in {Path(workdir).resolve()}")
    for name, result in results.items():
        metrics = ", ".join(f"{k}={v}" for k, v in result.manifest.metrics.items() if not isinstance(v, (dict, list)))
        print(f"  {name:<14} {result.out_dir}  {metrics}")
    # every stage run is in the ledger: end on the leaderboard of this demo's own runs
    from compass.ledger.cli import print_demo_leaderboard

    print_demo_leaderboard([result.manifest.run_id for result in results.values()])
    return results
