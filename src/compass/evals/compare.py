"""`compass eval compare RUN_DIR...`: the metrics of several eval runs side by side, task by task.

Each RUN_DIR is the output directory of a completed `compass eval` run (its manifest.json holds the metrics).
Columns are the runs in the order given (Phase 0 base, Phase 1 SFT, Phase 2 DPO, ...), named by the run's
stage name in its recipe (or its directory name); rows are each task's metrics. A metric a run lacks shows
as '-'.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from compass.errors import CompassError
from compass.manifest import read_manifest

EXAMPLE = "compass eval compare work/tiny/eval-base work/tiny/eval-sft work/tiny/eval-dpo"


def load_run(run_dir: Path) -> tuple[str, dict]:
    manifest = read_manifest(run_dir)
    if manifest is None:
        raise CompassError(f"{run_dir}: no manifest.json (not a completed run)")
    if manifest.stage != "eval":
        raise CompassError(f"{run_dir}: a {manifest.stage!r} run, not an eval run")
    name = manifest.name if manifest.name != "eval" else Path(run_dir).resolve().name
    return name, manifest.metrics


def split_metric(key: str) -> tuple[str, str]:
    """'mmlongbench.cot_on.accuracy' -> ('mmlongbench', 'cot_on.accuracy')."""
    task, _, metric = key.partition(".")
    return task, metric


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, (int, str)):
        return str(value)
    return "-"  # dicts/lists are not table cells


def compare_table(runs: list[tuple[str, dict]], tasks: list[str] | None = None, markdown: bool = False) -> str:
    names = [name for name, _ in runs]
    if len(set(names)) != len(names):  # two runs with one name: tell them apart by position
        names = [f"{i + 1}:{name}" for i, name in enumerate(names)]
    order: dict[str, list[str]] = {}
    for _, metrics in runs:
        for key in metrics:
            task, metric = split_metric(key)
            if not metric:
                continue
            order.setdefault(task, [])
            if metric not in order[task]:
                order[task].append(metric)
    if tasks is not None:
        unknown = sorted(set(tasks) - set(order))
        if unknown:
            raise CompassError(f"no run has task(s) {unknown}; tasks present: {sorted(order)}")
        order = {t: order[t] for t in tasks}
    blocks = []
    for task, metrics in order.items():
        rows = [[metric] + [_cell(m[f"{task}.{metric}"] if f"{task}.{metric}" in m else None) for _, m in runs]
                for metric in metrics]
        header = ["metric"] + names
        if markdown:
            lines = [f"### {task}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(row) + " |" for row in rows]
        else:
            widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
            fmt = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
            lines = [task, "  " + fmt(header)] + ["  " + fmt(r) for r in rows]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="compass eval compare", description=__doc__.strip().splitlines()[0],
        epilog=f"example:\n  {EXAMPLE}", formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR", help="output directories of eval runs, in column order")
    parser.add_argument("--tasks", help="only these tasks, comma-separated (default: every task any run has)")
    parser.add_argument("--markdown", action="store_true", help="print markdown tables")
    args = parser.parse_args(argv)
    runs = [load_run(run) for run in args.runs]
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
    print(compare_table(runs, tasks, args.markdown), end="")
    return 0
