"""`compass eval compare RUN_DIR...`: the metrics of several eval runs side by side, task by task.

Each RUN_DIR is the output directory of a completed `compass eval` run (its manifest.json holds the metrics).
Columns are the runs in the order given (Phase 0 base, Phase 1 SFT, Phase 2 DPO, ...), named by the run's
stage name in its recipe (or its directory name); rows are each task's metrics. A metric a run lacks shows
as '-'. Where a task has figures of both protocols (`TASK.reference.*` and `TASK.compass.*`, or a
compass-only run's plain `TASK.*`), each run gets a reference and a compass column side by side, and the
block says which one is comparable with published leaderboards (reference). With --best (the CLI's
default) the best run of each figure is starred, which way is better decided by
compass.ledger.metric_direction.
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


PROTOCOLS = ("reference", "compass")


def split_metric(key: str) -> tuple[str, str]:
    """'mmlongbench.cot_on.accuracy' -> ('mmlongbench', 'cot_on.accuracy')."""
    task, _, metric = key.partition(".")
    return task, metric


def split_protocol(metric: str) -> tuple[str, str]:
    """'reference.macro_f1' -> ('reference', 'macro_f1'); a plain metric is the compass protocol's."""
    head, _, rest = metric.partition(".")
    if head in PROTOCOLS and rest:
        return head, rest
    return "compass", metric


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


def compare_table(runs: list[tuple[str, dict]], tasks: list[str] | None = None, markdown: bool = False,
                  mark_best: bool = False) -> str:
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
        protocols = [p for p in PROTOCOLS if any(split_protocol(m)[0] == p for m in metrics)]
        side_by_side = len(protocols) > 1
        columns = [(n, i, p) for i, n in enumerate(names) for p in (protocols if side_by_side else [None])]
        figures: list[str] = []
        for metric in metrics:
            figure = split_protocol(metric)[1] if side_by_side else metric
            if figure not in figures:
                figures.append(figure)

        def value(run: int, protocol: str | None, figure: str):
            keys = [f"{task}.{figure}"] if protocol is None else (
                [f"{task}.{protocol}.{figure}"] + ([f"{task}.{figure}"] if protocol == "compass" else []))
            found = [runs[run][1][k] for k in keys if k in runs[run][1]]
            return found[0] if found else None

        rows = []
        for figure in figures:
            values = [value(i, p, figure) for _, i, p in columns]
            best = _best_cells(figure, values, columns) if mark_best and len(runs) > 1 else set()
            rows.append([figure] + [_cell(v) + ("*" if c in best else "") for c, v in enumerate(values)])
        header = ["metric"] + [n if p is None else f"{n} {p}" for n, _, p in columns]
        note = "reference = the benchmark's own protocol, comparable with published leaderboards" if side_by_side else None
        if markdown:
            lines = [f"### {task}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(row) + " |" for row in rows]
            lines += ["", note] if note else []
        else:
            widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
            fmt = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
            lines = [task, "  " + fmt(header)] + ["  " + fmt(r) for r in rows] + ([f"  ({note})"] if note else [])
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def _best_cells(figure: str, values: list, columns: list) -> set[int]:
    """Cells holding the best float of a figure among the runs, per protocol (ties all starred; none if all equal)."""
    from compass.ledger.metric_direction import is_better

    best: set[int] = set()
    for protocol in {p for _, _, p in columns}:
        cells = [c for c, (_, _, p) in enumerate(columns) if p == protocol and isinstance(values[c], float)]
        if len({values[c] for c in cells}) < 2:
            continue
        top = cells[0]
        for c in cells[1:]:
            if is_better(figure, values[c], values[top]):
                top = c
        best |= {c for c in cells if values[c] == values[top]}
    return best


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="compass eval compare", description=__doc__.strip().splitlines()[0],
        epilog=f"example:\n  {EXAMPLE}", formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR", help="output directories of eval runs, in column order")
    parser.add_argument("--tasks", help="only these tasks, comma-separated (default: every task any run has)")
    parser.add_argument("--markdown", action="store_true", help="print markdown tables")
    parser.add_argument("--best", action=argparse.BooleanOptionalAction, default=True,
                        help="star the best run of each figure (direction from compass.ledger.metric_direction)")
    args = parser.parse_args(argv)
    runs = [load_run(run) for run in args.runs]
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
    print(compare_table(runs, tasks, args.markdown, mark_best=args.best), end="")
    return 0
