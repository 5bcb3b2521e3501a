"""`compass runs report`: one static HTML file (no server, no script, no network): leaderboards with the
data recipe of each run, training curves (loss, rewards) as inline SVG, lineage trees, and all runs."""
from __future__ import annotations

import datetime as dt
import html
from pathlib import Path

from compass.ledger.explore import lineage_tree, render_lineage
from compass.ledger.flat import as_text, format_number
from compass.ledger.index import Index
from compass.ledger.query import headline_metrics, leaderboard

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
W, H, PAD_L, PAD_R, PAD_T, PAD_B = 460, 230, 58, 12, 26, 34

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI","Hiragino Sans","Noto Sans CJK JP",sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;margin:8px 0 16px;font-size:13px}th,td{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f5f5f5}td.num{text-align:right;font-variant-numeric:tabular-nums}code,pre{font:12px ui-monospace,Menlo,Consolas,monospace}
pre{background:#f8f8f8;padding:10px;overflow-x:auto}.curves{display:flex;flex-wrap:wrap;gap:16px}
figure{margin:0;border:1px solid #eee;padding:6px}figcaption{font-size:12px;color:#555}
"""


def svg_chart(title: str, series: dict[str, list[tuple[int, float]]]) -> str:
    """A line chart of (step, value) series with axes, min/max ticks and a legend."""
    points = [p for values in series.values() for p in values]
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y0, y1 = y0 - 0.5, y1 + 0.5
    pw, ph = W - PAD_L - PAD_R, H - PAD_T - PAD_B

    def sx(x: float) -> float:
        return PAD_L + (x - x0) / (x1 - x0) * pw

    def sy(y: float) -> float:
        return PAD_T + (1 - (y - y0) / (y1 - y0)) * ph

    parts = [f'<svg class="curve" xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" role="img" '
             f'aria-label="{html.escape(title)}">',
             f'<text x="{PAD_L}" y="16" font-size="13" font-weight="600">{html.escape(title)}</text>',
             f'<rect x="{PAD_L}" y="{PAD_T}" width="{pw}" height="{ph}" fill="none" stroke="#bbb"/>']
    for frac in (0.25, 0.5, 0.75):
        y = PAD_T + frac * ph
        parts.append(f'<line x1="{PAD_L}" x2="{PAD_L + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>')
    parts += [
        f'<text x="{PAD_L - 4}" y="{PAD_T + 4}" font-size="11" text-anchor="end">{format_number(y1)}</text>',
        f'<text x="{PAD_L - 4}" y="{PAD_T + ph}" font-size="11" text-anchor="end">{format_number(y0)}</text>',
        f'<text x="{PAD_L}" y="{H - 16}" font-size="11">{x0}</text>',
        f'<text x="{PAD_L + pw}" y="{H - 16}" font-size="11" text-anchor="end">{x1}</text>',
        f'<text x="{PAD_L + pw / 2}" y="{H - 16}" font-size="11" text-anchor="middle">step</text>',
    ]
    for i, (name, values) in enumerate(series.items()):
        color = COLORS[i % len(COLORS)]
        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in values)
        if len(values) == 1:
            x, y = values[0]
            parts.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{color}"/>')
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.8" points="{coords}"><title>{html.escape(name)}</title></polyline>')
        lx = PAD_L + 8 + (i % 3) * 140
        ly = H - 3 - 0 * (i // 3)
        parts.append(f'<rect x="{lx}" y="{ly - 8}" width="10" height="3" fill="{color}"/>'
                     f'<text x="{lx + 14}" y="{ly - 4}" font-size="10">{html.escape(name[-22:])}</text>')
    parts.append("</svg>")
    return "".join(parts)


def curve_groups(history: dict[str, list[tuple[int, float]]]) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """Charts for a run: loss (train and eval), rewards (chosen, rejected, margins), accuracies, learning rate."""
    groups: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for key, points in history.items():
        leaf = key.removeprefix("train/")
        if not points or leaf in ("epoch", "total_flos", "step") or "runtime" in leaf or "per_second" in leaf:
            continue
        if leaf.startswith("rewards/") and "accuracies" not in leaf:
            group = "rewards"
        elif "loss" in leaf:
            group = "loss"
        elif "accurac" in leaf:
            group = "accuracy"
        elif leaf in ("learning_rate", "grad_norm"):
            group = leaf
        elif leaf.startswith("logps/") or leaf.startswith("logits/"):
            group = leaf.split("/")[0]
        else:
            group = leaf
        groups.setdefault(group, {})[leaf] = points
    order = ["loss", "rewards", "accuracy", "learning_rate", "grad_norm"]
    return dict(sorted(groups.items(), key=lambda kv: (order.index(kv[0]) if kv[0] in order else len(order), kv[0])))


def _table(rows: list[dict], columns: list[str], numeric: set[str]) -> str:
    out = ["<table><thead><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in columns) + "</tr></thead><tbody>"]
    for row in rows:
        cells = []
        for c in columns:
            value = row[c]
            text = format_number(value) if isinstance(value, float) else as_text(value) if value is not None else ""
            cells.append(f'<td class="num">{html.escape(text)}</td>' if c in numeric else f"<td>{html.escape(text)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def default_metrics(index: Index) -> list[str]:
    """Numeric metrics of evaluation runs; else the most common numeric metrics of any run."""
    rows = index.db.execute(
        "SELECT f.key, count(*) FROM figures f JOIN runs r ON r.run_id = f.run_id WHERE r.state='complete' AND f.kind='metric' "
        "AND f.num IS NOT NULL AND r.stage = 'eval' AND f.key NOT LIKE '%time%' GROUP BY f.key ORDER BY count(*) DESC, f.key LIMIT 4").fetchall()
    if not rows:
        rows = index.db.execute(
            "SELECT f.key, count(*) FROM figures f JOIN runs r ON r.run_id = f.run_id WHERE r.state='complete' AND f.kind='metric' "
            "AND f.num IS NOT NULL AND f.key NOT LIKE '%time%' GROUP BY f.key ORDER BY count(*) DESC, f.key LIMIT 3").fetchall()
    return [r[0] for r in rows]


def build_report(index: Index, *, metrics: list[str] | None = None, limit: int = 30, title: str = "compass runs") -> str:
    metrics = metrics or default_metrics(index)
    runs = index.runs(limit=limit)
    body = [f"<h1>{html.escape(title)}</h1>",
            f"<p>{index.count()} recorded run(s) in <code>{html.escape(str(index.path.parent))}</code>; "
            f"generated {dt.datetime.now().isoformat(timespec='seconds')}.</p>"]

    body.append('<h2 id="leaderboard">Leaderboard</h2>')
    top_runs: list[str] = []
    for metric in metrics:
        board = leaderboard(index, metric, limit=limit)
        top_runs += [row["run_id"] for row in board[:3]]
        columns = ["rank", "run", "name", "stage", metric, "sources", "pairs", "hparams", "commit", "recorded"]
        body.append(f"<h3>{html.escape(metric)}</h3>" + _table(board, columns, {"rank", metric}))
    if not metrics:
        body.append("<p>No numeric metrics recorded yet.</p>")

    body.append('<h2 id="curves">Training curves</h2><div class="curves">')
    charts = 0
    for run in runs:
        history = index.history(run.run_id)
        for group, series in curve_groups(history).items():
            body.append(f"<figure>{svg_chart(f'{run.name} {run.short}: {group}', series)}"
                        f"<figcaption>{html.escape(run.stage)} run {run.short}, {len(next(iter(series.values())))} logged steps</figcaption></figure>")
            charts += 1
    body.append("</div>")
    if not charts:
        body.append("<p>No run logged a training history.</p>")

    body.append('<h2 id="lineage">Lineage</h2>')
    shown = list(dict.fromkeys(top_runs)) or [r.run_id for r in runs[:3]]
    for run_id in shown[:6]:
        run = index.run(run_id)
        body.append(f"<h3>{html.escape(run.name)} {run.short}</h3><pre class=\"lineage\">{html.escape(render_lineage(lineage_tree(index, run)))}</pre>")

    body.append('<h2 id="runs">Runs</h2>')
    rows = [{"run": r.short, "recorded": r.recorded_at[:19].replace("T", " "), "stage": r.stage, "name": r.name,
             "metrics": headline_metrics(r, 4), "note": r.note} for r in runs]
    body.append(_table(rows, ["run", "recorded", "stage", "name", "metrics", "note"], set()))
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{CSS}</style></head><body>{''.join(body)}</body></html>\n")


def write_report(index: Index, path: Path, **kwargs) -> Path:
    from compass.io import write_text_atomic

    write_text_atomic(path, build_report(index, **kwargs))
    return path
