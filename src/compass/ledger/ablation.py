"""Ablation tables from the ledger: the runs of a `compass sweep`, one metric, two of its axes.

Every run a sweep made carries the sweep's block (compass.sweep): its name, the values of the axes that reach
the run, and all axes with their values. A cell (row value, column value) holds the runs whose values match;
an axis that does not reach a run matches any of its values. Beside rows and columns:
- `values` axes live in metric names: with {cot: [on, off]} the metric 'mmlongbench.cot_{cot}.accuracy' of
  one eval run fills both the `on` and the `off` column;
- a `seed` axis is averaged: the cell shows mean +- sample std over the seeds (n shown);
- every other axis with several values splits the result into one table per combination (a facet).
Each cell names its run ids and the command that re-derives it (`compass runs reproduce RUN`).
"""
from __future__ import annotations

import html
import itertools
import statistics
from dataclasses import dataclass, field
from typing import Any

from compass.errors import CompassError

VARIANT_AXIS, SEED_AXIS = "variant", "seed"
TABLE_FORMATS = ("md", "latex", "csv", "html")


@dataclass
class Cell:
    values: list[float] = field(default_factory=list)
    run_ids: list[str] = field(default_factory=list)

    def text(self) -> str:
        if not self.values:
            return "-"
        if len(self.values) == 1:
            return f"{self.values[0]:.4g}"
        return f"{statistics.mean(self.values):.4g} ± {statistics.stdev(self.values):.2g} (n={len(self.values)})"


@dataclass
class AblationTable:
    title: str  # the facet ('top_k=16'), or '' when there is one table
    metric: str
    rows_axis: str
    cols_axis: str
    rows: list[Any]
    cols: list[Any]
    cells: dict[tuple[Any, Any], Cell]


def _axis_name(wanted: str, axes: list[str]) -> str:
    """A full axis path from itself or a unique trailing part of it ('top_k')."""
    if wanted in axes:
        return wanted
    matches = [a for a in axes if a.endswith("." + wanted)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise CompassError(f"axis {wanted!r} is ambiguous: {', '.join(matches)}")
    raise CompassError(f"the sweep has no axis {wanted!r}; its axes: {', '.join(axes)}")


def _label(value: Any) -> str:
    return value if isinstance(value, str) else str(value)


def build_tables(runs: list[tuple[str, dict[str, Any], dict[str, Any]]], *, rows: str, cols: str, metric: str,
                 values: dict[str, list[Any]] | None = None) -> list[AblationTable]:
    """runs: (run_id, its sweep block, its metrics) of one sweep. One table per combination of free axes."""
    if not runs:
        raise CompassError("no runs of this sweep are in the ledger")
    metric_axes = dict(values or {})
    axes: dict[str, list[Any]] = {}
    for _, block, _ in runs:
        for axis, axis_values in block["axes"].items():
            known = axes.setdefault(axis, [])
            known.extend(v for v in axis_values if v not in known)
    all_axes = list(axes) + list(metric_axes)
    rows_axis, cols_axis = _axis_name(rows, all_axes), _axis_name(cols, all_axes)
    if rows_axis == cols_axis:
        raise CompassError(f"rows and cols are the same axis ({rows_axis})")
    for name in metric_axes:
        if "{" + name + "}" not in metric:
            raise CompassError(f"values axis {name!r} does not occur in the metric {metric!r} (write it as {{{name}}})")
    free = [a for a in axes if a not in (rows_axis, cols_axis, SEED_AXIS)]
    domain = {**axes, **metric_axes}

    tables = []
    for facet in itertools.product(*(domain[a] for a in free)):
        fixed = dict(zip(free, facet))
        cells: dict[tuple[Any, Any], Cell] = {}
        for row, col in itertools.product(domain[rows_axis], domain[cols_axis]):
            cell = Cell()
            want = {**fixed, rows_axis: row, cols_axis: col}
            for run_id, block, metrics in runs:
                run_values = block["values"]
                if any(a in run_values and run_values[a] != v for a, v in want.items() if a not in metric_axes):
                    continue
                key = metric.format(**{a: want[a] for a in metric_axes})
                value = metrics.get(key)  # a run of the sweep that does not report this metric (a data stage)
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    continue
                cell.values.append(float(value))
                cell.run_ids.append(run_id)
            cells[(row, col)] = cell
        title = ", ".join(f"{a.split('.')[-1]}={_label(v)}" for a, v in fixed.items())
        tables.append(AblationTable(title, metric, rows_axis, cols_axis, domain[rows_axis], domain[cols_axis], cells))
    if all(not cell.values for t in tables for cell in t.cells.values()):
        raise CompassError(f"no run of this sweep reports {metric!r} (with {', '.join(metric_axes) or 'no values axes'})")
    for table in tables:
        for (row, col), cell in table.cells.items():
            if SEED_AXIS not in axes and len(cell.values) > 1:
                raise CompassError(f"cell ({_label(row)}, {_label(col)}) has {len(cell.values)} runs "
                                   f"({', '.join(r[:8] for r in cell.run_ids)}) and the sweep has no seed axis")
    return tables


def render_tables(tables: list[AblationTable], fmt: str, *, anchor=lambda run_id: f"run-{run_id}") -> str:
    """The tables in `fmt`; in html each run id links to `#<anchor(run_id)>` (the page's section of that run)."""
    if fmt not in TABLE_FORMATS:
        raise CompassError(f"--format must be one of {', '.join(TABLE_FORMATS)}, got {fmt!r}")
    return "\n\n".join(_render(t, fmt, anchor) for t in tables)


def _corner(t: AblationTable) -> str:
    return f"{t.rows_axis.split('.')[-1]} \\ {t.cols_axis.split('.')[-1]}"


def _render(t: AblationTable, fmt: str, anchor) -> str:
    head = [_corner(t)] + [_label(c) for c in t.cols]
    body = [[_label(r)] + [t.cells[(r, c)].text() for c in t.cols] for r in t.rows]
    runs = [(r, c, t.cells[(r, c)].run_ids) for r in t.rows for c in t.cols if t.cells[(r, c)].run_ids]
    caption = f"{t.metric}" + (f" ({t.title})" if t.title else "")
    if fmt == "csv":
        lines = [",".join(_csv(x) for x in ["table", *head, "runs"])]
        for r, row in zip(t.rows, body):
            ids = " ".join(i for c in t.cols for i in t.cells[(r, c)].run_ids)
            lines.append(",".join(_csv(x) for x in [caption, *row, ids]))
        return "\n".join(lines)
    if fmt == "latex":
        spec = "l" + "r" * len(t.cols)
        esc = lambda s: s.replace("\\", "\\textbackslash{}").replace("_", "\\_").replace("±", "$\\pm$").replace("%", "\\%")
        lines = ["\\begin{table}[t]", "\\centering", f"\\begin{{tabular}}{{{spec}}}", "\\toprule",
                 " & ".join(esc(h) for h in head) + " \\\\", "\\midrule"]
        lines += [" & ".join(esc(x) for x in row) + " \\\\" for row in body]
        lines += ["\\bottomrule", "\\end{tabular}", f"\\caption{{{esc(caption)}}}", "\\end{table}"]
        lines += [f"% ({_label(r)}, {_label(c)}): " + "; ".join(f"compass runs reproduce {i}" for i in ids) for r, c, ids in runs]
        return "\n".join(lines)
    if fmt == "html":
        cell_html = lambda r, c: (html.escape(t.cells[(r, c)].text()) + "".join(
            f' <a class="run" href="#{anchor(i)}" title="compass runs reproduce {i}">{i[:8]}</a>' for i in t.cells[(r, c)].run_ids))
        lines = [f'<table class="ablation"><caption>{html.escape(caption)}</caption>',
                 "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
        lines += ["<tr><th>" + html.escape(_label(r)) + "</th>" + "".join(f"<td>{cell_html(r, c)}</td>" for c in t.cols) + "</tr>"
                  for r in t.rows]
        return "\n".join(lines + ["</table>"])
    esc = lambda s: s.replace("|", "\\|")
    lines = [f"**{esc(caption)}**", "", "| " + " | ".join(esc(h) for h in head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(esc(x) for x in row) + " |" for row in body]
    lines += ["", "reproduce:"] + [f"- ({_label(r)}, {_label(c)}): " + "; ".join(f"`compass runs reproduce {i}`" for i in ids)
                                   for r, c, ids in runs]
    return "\n".join(lines)


def _csv(text: str) -> str:
    return '"' + text.replace('"', '""') + '"' if any(ch in text for ch in ',"\n') else text
