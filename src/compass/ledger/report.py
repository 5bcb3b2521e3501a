"""`compass runs report`: one static HTML file that opens offline from disk (no server, no network; the plotting
library, Plotly's basic bundle, is vendored in compass.ledger and inlined):

- headline metrics first: for each, the runs best first in its direction (compass.ledger.metric_direction),
  every row linking to that run's section;
- training curves: the runs of the same stage (same name) overlaid, one chart per metric (loss, learning rate,
  rewards...); a metric with a single logged point, or constant over every run, is a number in a table instead;
- a section per run: what it is, its metrics, its data recipe and its lineage.
"""
from __future__ import annotations

import datetime as dt
import html
import json
import os
from importlib import resources
from pathlib import Path

from compass.ledger.explore import lineage_tree, render_lineage
from compass.ledger.flat import as_number, as_text, flatten, format_number
from compass.ledger.index import Index, RunRow
from compass.ledger.metric_direction import direction
from compass.ledger.query import leaderboard

PLOTLY_VERSION = "4.1.1"  # vendor/SOURCE.md
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22")
HEADLINE_LIMIT = 6   # headline metrics chosen when none are given
BOARD_ROWS = 10      # rows per headline leaderboard
RUN_SECTIONS = 40    # runs given a section of their own (newest first)

# trainer log keys that are bookkeeping, not curves
SKIP_HISTORY = ("epoch", "total_flos", "step", "num_tokens", "num_input_tokens_seen")
CURVE_ORDER = ("loss", "eval_loss", "rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected",
               "mean_token_accuracy", "learning_rate", "grad_norm")

CSS = """
*{box-sizing:border-box}
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI","Hiragino Sans","Noto Sans CJK JP",sans-serif;margin:0;color:#1d2330;background:#fafbfc}
main{max-width:1360px;margin:0 auto;padding:24px 28px}
h1{font-size:26px;margin:0 0 4px}h2{font-size:20px;margin:36px 0 10px;border-bottom:1px solid #dde2ea;padding-bottom:6px}
h3{font-size:16px;margin:18px 0 6px}.muted{color:#667085}
nav a{margin-right:16px}
table{border-collapse:collapse;margin:6px 0 14px;font-size:14px;background:#fff}
th,td{border:1px solid #dde2ea;padding:5px 10px;text-align:left;vertical-align:top}
th{background:#f0f3f7}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.best td{background:#eef8ee}
td.data{font-size:12.5px;color:#475467;max-width:300px}
.boards{display:grid;grid-template-columns:repeat(2,minmax(0,1fr));gap:10px 28px}
.dir{font-size:13px;color:#475467;font-weight:normal}
.charts{display:grid;grid-template-columns:repeat(2,minmax(0,1fr));gap:18px}
.chart{background:#fff;border:1px solid #e4e7ec;border-radius:6px;height:340px}
.run{background:#fff;border:1px solid #e4e7ec;border-radius:6px;padding:10px 16px;margin:12px 0}
.run h3{margin-top:4px}.kv{columns:3;font-size:13.5px;margin:6px 0}.kv div{break-inside:avoid}
pre{font:12.5px/1.4 ui-monospace,Menlo,Consolas,monospace;background:#f5f7fa;padding:10px;overflow-x:auto;margin:6px 0}
code{font:13px ui-monospace,Menlo,Consolas,monospace}
"""

# draws every chart from the JSON above it; no network: Plotly is inlined before this script
DRAW = """
const specs = JSON.parse(document.getElementById('chart-data').textContent);
for (const spec of specs) {
  const traces = spec.series.map((s, i) => ({x: s.steps, y: s.values, name: s.label, type: 'scatter',
      mode: s.steps.length > 40 ? 'lines' : 'lines+markers', line: {width: 2, color: s.color}, marker: {size: 5}}));
  Plotly.newPlot(spec.id, traces, {
    title: {text: spec.title, font: {size: 15}, x: 0.02}, margin: {l: 64, r: 16, t: 44, b: 86},
    xaxis: {title: {text: 'step'}, zeroline: false}, yaxis: {title: {text: spec.metric}, zeroline: false,
      type: spec.log ? 'log' : 'linear', exponentformat: 'power'},
    legend: {orientation: 'h', y: -0.3, font: {size: 12}}, font: {size: 13}, paper_bgcolor: '#fff', plot_bgcolor: '#fff',
  }, {displayModeBar: false, responsive: true});
}
"""


def plotly_js() -> str:
    return (resources.files("compass.ledger") / "vendor" / "plotly-basic.min.js").read_text(encoding="utf-8")


def anchor(run_id: str) -> str:
    return f"run-{run_id[:12]}"


def ablation_html(index: Index) -> str:
    """The tables every recorded sweep declares (compass.ledger.ablation), newest sweep first."""
    from compass.ledger.ablation import build_tables, render_tables

    parts = []
    for name in index.sweep_names():
        _, runs = index.sweep_runs(name)
        rows = [(r.run_id, r.manifest["sweep"], flatten(r.metrics)) for r in runs]
        for spec in runs[-1].manifest["sweep"]["tables"]:
            parts.append(f"<h3>{html.escape(name)}</h3>" + render_tables(build_tables(rows, **spec), "html", anchor=anchor))
    return "\n".join(parts)


def arrow(metric: str) -> str:
    return "lower is better ↓" if direction(metric) == "lower" else "higher is better ↑"


def _cell(value) -> str:
    if isinstance(value, float):
        return html.escape(format_number(value))
    return html.escape(as_text(value)) if value is not None else ""


def _table(rows: list[dict], columns: list[str], numeric: set[str], links: dict[str, str] | None = None,
           best_first_row: bool = False) -> str:
    """rows -> <table>; `links` maps a column to the row key holding the run id its cell links to."""
    links = links or {}
    out = ["<table><thead><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in columns) + "</tr></thead><tbody>"]
    for i, row in enumerate(rows):
        cells = []
        for c in columns:
            text = _cell(row[c])
            if c in links:
                text = f'<a href="#{anchor(row[links[c]])}">{text}</a>'
            css_class = "num" if c in numeric else "data" if c == "data" else ""
            cells.append(f'<td class="{css_class}">{text}</td>' if css_class else f"<td>{text}</td>")
        css = ' class="best"' if best_first_row and i == 0 else ""
        out.append(f"<tr{css}>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


# --- what to show ------------------------------------------------------------------------------------------


def headline_metrics(runs: list[RunRow], limit: int = HEADLINE_LIMIT) -> list[str]:
    """The metrics a recipe is judged by, most telling first: benchmark scores of eval runs (accuracy, F1,
    format validity; whole-task figures before splits), then DPO's held-out reward accuracy, then final losses."""
    keys: dict[str, int] = {}
    for run in runs:
        for key, value in flatten(run.metrics).items():
            if as_number(value) is None or isinstance(value, bool):
                continue
            last = key.rsplit(".", 1)[-1]
            depth = key.count(".")
            if run.stage == "eval" and last in ("accuracy", "f1", "format_valid_rate", "exact_match", "macro_f1", "mcc"):
                rank = (0 if last == "accuracy" else 1) + 2 * depth
            elif key == "eval_after.reward_accuracy":
                rank = 20
            elif key in ("last_loss", "train_loss"):  # compass's training stages report last_loss; others train_loss
                rank = 30
            else:
                continue
            keys[key] = min(keys.get(key, rank), rank)  # a key's best rank over the runs having it
    return [k for k, _ in sorted(keys.items(), key=lambda kv: (kv[1], kv[0]))][:limit]


def curve_series(index: Index, runs: list[RunRow]) -> dict[str, dict[str, list[tuple[RunRow, list[tuple[int, float]]]]]]:
    """stage name -> metric -> [(run, points)] for every run with a logged history."""
    groups: dict[str, dict[str, list]] = {}
    for run in runs:
        for key, points in index.history(run.run_id).items():
            metric = key.removeprefix("train/")
            if not points or metric in SKIP_HISTORY or "runtime" in metric or "per_second" in metric or metric.startswith("train_"):
                continue
            groups.setdefault(run.name, {}).setdefault(metric, []).append((run, points))
    return groups


def split_charts(series: list[tuple[RunRow, list[tuple[int, float]]]]) -> bool:
    """A chart is worth drawing when some run logged the metric at 2+ steps and its values vary."""
    values = {v for _, points in series for _, v in points}
    return any(len(points) > 1 for _, points in series) and len(values) > 1


def _metric_order(metric: str) -> tuple[int, str]:
    return (CURVE_ORDER.index(metric) if metric in CURVE_ORDER else len(CURVE_ORDER), metric)


# --- the page ----------------------------------------------------------------------------------------------


def build_report(index: Index, *, metrics: list[str] | None = None, limit: int = 30, title: str = "compass runs") -> str:
    runs = index.runs(limit=limit)
    metrics = metrics or headline_metrics(runs)
    shown_ids = {r.run_id for r in runs[:RUN_SECTIONS]}
    body = [f"<main><h1>{html.escape(title)}</h1>",
            f'<p class="muted">{index.count()} recorded run(s) in <code>{html.escape(str(index.path.parent))}</code>; '
            f"the newest {len(runs)} shown; generated {dt.datetime.now().isoformat(timespec='seconds')}.</p>",
            '<nav><a href="#headline">Headline metrics</a><a href="#curves">Training curves</a><a href="#runs">Runs</a></nav>']

    body.append('<h2 id="headline">Headline metrics</h2>')
    if not metrics:
        body.append("<p>No evaluation or training metrics recorded yet.</p>")
    boards = []
    for metric in metrics:
        board = [row for row in leaderboard(index, metric, limit=limit) if row["run_id"] in shown_ids][:BOARD_ROWS]
        rows = [{"rank": row["rank"], "run": row["run"], "name": row["name"], "stage": row["stage"], metric: row[metric],
                 "data": "; ".join(v for v in (row["sources"], row["training pairs"], row["hparams"]) if v),
                 "run_id": row["run_id"]} for row in board]
        boards.append(f'<div><h3>{html.escape(metric)} <span class="dir">{arrow(metric)}</span></h3>'
                      + _table(rows, ["rank", "run", "name", "stage", metric, "data"], {"rank", metric},
                               links={"run": "run_id"}, best_first_row=True) + "</div>")
    body.append(f'<div class="boards">{"".join(boards)}</div>')

    body.append('<h2 id="curves">Training curves</h2>')
    specs = []
    groups = curve_series(index, runs)
    for stage_name in sorted(groups):
        by_metric = groups[stage_name]
        chart_metrics = sorted((m for m in by_metric if split_charts(by_metric[m])), key=_metric_order)
        number_metrics = sorted((m for m in by_metric if not split_charts(by_metric[m])), key=_metric_order)
        stage_runs = sorted({run.run_id: run for series in by_metric.values() for run, _ in series}.values(), key=lambda r: r.recorded_at)
        color = {run.run_id: COLORS[i % len(COLORS)] for i, run in enumerate(stage_runs)}
        body.append(f"<h3>{html.escape(stage_name)} <span class=\"dir\">{len(stage_runs)} run(s) overlaid: "
                    + ", ".join(f'<a href="#{anchor(r.run_id)}" style="color:{color[r.run_id]}">{r.short}</a>' for r in stage_runs)
                    + "</span></h3>")
        if chart_metrics:
            body.append('<div class="charts">')
            for metric in chart_metrics:
                chart_id = f"chart-{len(specs)}"
                specs.append({"id": chart_id, "title": f"{stage_name}: {metric} ({arrow(metric)})", "metric": metric,
                              "log": False, "series": [
                                  {"label": f"{run.short} {run.recorded_at[5:16].replace('T', ' ')}", "color": color[run.run_id],
                                   "steps": [s for s, _ in points], "values": [v for _, v in points]}
                                  for run, points in sorted(by_metric[metric], key=lambda item: item[0].recorded_at)]})
                body.append(f'<div class="chart" id="{chart_id}" data-metric="{html.escape(metric)}" '
                            f'data-runs="{len(by_metric[metric])}"></div>')
            body.append("</div>")
        if number_metrics:
            rows = []
            for metric in number_metrics:
                for run, points in by_metric[metric]:
                    constant = len({v for _, v in points}) == 1
                    rows.append({"metric": metric, "run": run.short, "value": points[-1][1], "run_id": run.run_id,
                                 "logged": f"step {points[0][0]}" if len(points) == 1 else
                                           f"steps {points[0][0]}-{points[-1][0]}" + (" (constant)" if constant else "")})
            body.append(_table(rows, ["metric", "run", "value", "logged"], {"value"}, links={"run": "run_id"}))
    if not groups:
        body.append("<p>No run logged a training history.</p>")

    ablations = ablation_html(index)
    if ablations:
        body.append('<h2 id="ablations">Ablation tables</h2>')
        body.append(ablations)
    body.append('<h2 id="runs">Runs</h2>')
    for run in runs[:RUN_SECTIONS]:
        numbers = [(k, as_number(v)) for k, v in flatten(run.metrics).items()
                   if as_number(v) is not None and not isinstance(v, bool) and not k.startswith("device.")]
        kv = "".join(f"<div><code>{html.escape(k)}</code> {html.escape(format_number(n))}</div>" for k, n in numbers[:60])
        data = "".join(f"<div><b>{html.escape(k)}</b>: {html.escape(v)}</div>" for k, v in run.summary.items() if v)
        body.append(
            f'<section class="run" id="{anchor(run.run_id)}"><h3>{html.escape(run.name)} <span class="dir">{html.escape(run.stage)} run '
            f"<code>{run.short}</code>, recorded {html.escape(run.recorded_at[:19].replace('T', ' '))}, "
            f"{run.wall_time_s:.1f}s{', recipe ' + html.escape(run.recipe) if run.recipe else ''}</span></h3>"
            + (f"<p>{html.escape(run.note)}</p>" if run.note else "")
            + (f'<div class="kv">{kv}</div>' if kv else "") + (f"<div>{data}</div>" if data else "")
            + f'<pre class="lineage">{html.escape(render_lineage(lineage_tree(index, run)))}</pre></section>')
    body.append("</main>")
    chart_data = json.dumps(specs, ensure_ascii=False).replace("</", "<\\/")
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">'
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>{''.join(body)}"
            f'<script type="application/json" id="chart-data">{chart_data}</script>'
            f"<script>/* plotly.js basic {PLOTLY_VERSION}, MIT licence */\n{plotly_js()}</script><script>{DRAW}</script>"
            "</body></html>\n")


def write_report(index: Index, path: Path, **kwargs) -> Path:
    from compass.io import write_text_atomic

    write_text_atomic(path, build_report(index, **kwargs))
    os.chmod(path, 0o644)  # a page to share: readable by others, like any file a browser opens (atomic writes make 0600)
    return path
