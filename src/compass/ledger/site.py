"""The published leaderboard (`compass runs publish`): one static index.html that works from a file or any
web server, no server code. The runs travel inside the page as JSON; search and filters run in the browser.

- a search box (words of names, notes, stages, data recipes, config keys and values, metric names), a stage
  filter and a metric column chooser; the URL hash carries the state (`#q=dpo&stage=eval&metric=...`), so a
  link opens the same view;
- the leaderboard: one row per run, the chosen metric sortable with its direction (lower is better for
  losses and error rates: compass.ledger.metric_direction);
- a section per run: config, metrics, data recipe, parents (links), note, origin, files by sha256 (a link
  to the artifact where it was exported);
- the ablation tables of every sweep (compass.ledger.ablation), each cell linking to its runs.
"""
from __future__ import annotations

import html
import json
from typing import Any

from compass.ledger.flat import as_number, flatten

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 1320px; padding: 0 16px; color: #1d2330; }}
h1 {{ font-size: 22px; margin: 0 0 4px; }} h2 {{ font-size: 17px; margin: 28px 0 8px; }}
.controls {{ display: flex; gap: 12px; flex-wrap: wrap; align-items: center; margin: 14px 0; }}
input[type=search] {{ width: 380px; padding: 6px 8px; font-size: 14px; }}
table {{ border-collapse: collapse; width: 100%; }} th, td {{ border-bottom: 1px solid #dde2ea; padding: 4px 8px;
  text-align: left; vertical-align: top; }} th {{ background: #f3f5f9; cursor: pointer; }}
td.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
table.ablation {{ width: auto; margin-bottom: 14px; }} table.ablation caption {{ text-align: left; font-weight: 600; }}
.run {{ border: 1px solid #dde2ea; border-radius: 6px; padding: 8px 12px; margin: 10px 0; }}
.run h3 {{ font-size: 15px; margin: 0 0 6px; }} .muted {{ color: #667085; }} code {{ font-size: 12px; }}
.kv {{ columns: 2; font-size: 12.5px; }} .origin {{ background: #fff3d6; padding: 1px 6px; border-radius: 4px; }}
</style></head><body>
<h1>{title}</h1>
<p class="muted">{count} runs, published {published}. Data: <a href="runs.jsonl">runs.jsonl</a> /
<a href="runs.parquet">runs.parquet</a> (<code>datasets.load_dataset("parquet", data_files="runs.parquet")</code>).</p>
<div class="controls">
 <input id="q" type="search" placeholder="search runs: words, config values, metric names" aria-label="search">
 <label>stage <select id="stage"><option value="">all</option>{stage_options}</select></label>
 <label>metric <select id="metric">{metric_options}</select></label>
 <span id="shown" class="muted"></span>
</div>
<table id="board"><thead><tr><th>run</th><th>stage</th><th>name</th><th id="metric-head">metric</th>
<th>data recipe</th><th>note</th></tr></thead><tbody></tbody></table>
{ablations}
<h2>Runs</h2>
<div id="runs">{sections}</div>
<script id="data" type="application/json">{data}</script>
<script>
const RUNS = JSON.parse(document.getElementById("data").textContent);
const LOWER = {lower};
const $ = (id) => document.getElementById(id);
function words(text) {{ return text.toLowerCase().split(/\\s+/).filter(Boolean); }}
function matches(run, q) {{ return words(q).every((w) => run.text.includes(w)); }}
function fmt(v) {{ return typeof v === "number" ? (Math.abs(v) >= 1000 ? v.toFixed(0) : +v.toPrecision(4)) : ""; }}
function readHash() {{
  const p = new URLSearchParams(location.hash.slice(1));
  $("q").value = p.get("q") || ""; $("stage").value = p.get("stage") || "";
  if (p.get("metric")) $("metric").value = p.get("metric");
}}
function writeHash() {{
  const p = new URLSearchParams();
  if ($("q").value) p.set("q", $("q").value); if ($("stage").value) p.set("stage", $("stage").value);
  if ($("metric").value) p.set("metric", $("metric").value);
  history.replaceState(null, "", "#" + p.toString());
}}
function render() {{
  const q = $("q").value, stage = $("stage").value, metric = $("metric").value;
  let rows = RUNS.filter((r) => (!stage || r.stage === stage) && matches(r, q));
  const lower = LOWER.includes(metric);
  rows.sort((a, b) => {{
    const x = a.metrics[metric], y = b.metrics[metric];
    if (x === undefined) return 1; if (y === undefined) return -1; return lower ? x - y : y - x;
  }});
  $("metric-head").textContent = metric ? metric + (lower ? " (lower is better)" : " (higher is better)") : "metric";
  const body = $("board").querySelector("tbody"); body.innerHTML = "";
  for (const r of rows) {{
    const tr = document.createElement("tr"); tr.className = "board-row"; tr.dataset.run = r.id;
    const cells = [`<a href="#run-${{r.id}}">${{r.id.slice(0, 8)}}</a>` + (r.origin ? ` <span class="origin">${{r.origin}}</span>` : ""),
      r.stage, r.name, fmt(r.metrics[metric]), r.recipe_summary, r.note];
    tr.innerHTML = cells.map((c, i) => `<td${{i === 3 ? ' class="num"' : ""}}>${{i === 0 ? c : escape(String(c))}}</td>`).join("");
    body.appendChild(tr);
  }}
  $("shown").textContent = `${{rows.length}} of ${{RUNS.length}} runs`;
  for (const s of document.querySelectorAll(".run")) s.hidden = !rows.some((r) => r.id === s.dataset.run);
}}
function escape(s) {{ return s.replace(/[&<>"]/g, (c) => ({{"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}})[c]); }}
for (const id of ["q", "stage", "metric"]) $(id).addEventListener("input", () => {{ writeHash(); render(); }});
readHash(); render();
</script></body></html>
"""


def _row(record: dict[str, Any]) -> dict[str, Any]:
    manifest = record["manifest"]
    metrics = {k: n for k, v in flatten(manifest["metrics"]).items() if (n := as_number(v)) is not None and not isinstance(v, bool)}
    config = flatten(manifest["config"])
    origin = (manifest.get("origin") or {}).get("name")
    summary = " · ".join(f"{k}: {v}" for k, v in record["summary"].items() if v)
    text = " ".join([record["run_id"], record["name"], record["stage"], record["recipe"] or "", record["note"], summary,
                     origin or "", *metrics, *(f"{k}={v}" for k, v in config.items())]).lower()
    return {"id": record["run_id"], "name": record["name"], "stage": record["stage"], "note": record["note"],
            "origin": origin, "metrics": metrics, "recipe_summary": summary, "text": text}


def _section(record: dict[str, Any], artifacts: set[str]) -> str:
    manifest, run_id = record["manifest"], record["run_id"]
    esc = html.escape
    config = "".join(f"<div><code>{esc(k)}</code> = {esc(json.dumps(v, ensure_ascii=False))}</div>"
                     for k, v in flatten(manifest["config"]).items())
    metrics = "".join(f"<div><code>{esc(k)}</code> = {esc(json.dumps(v, ensure_ascii=False))}</div>"
                      for k, v in flatten(manifest["metrics"]).items())
    parents = ", ".join(f'<a href="#run-{esc(p["run_id"])}">{esc(p["run_id"][:8])}</a> ({esc(p["port"])})' for p in record["parents"])
    files = "".join(
        f"<div>{esc(f['role'])} <code>{esc(f['path'])}</code> "
        + (f'<a href="artifacts/{f["sha256"]}">{f["sha256"][:12]}</a>' if f["sha256"] in artifacts else f"<code>{f['sha256'][:12]}</code>")
        + f" <span class=muted>{f['size']} B</span></div>" for f in record["files"][:40])
    origin = manifest.get("origin")
    return (f'<div class="run" id="run-{esc(run_id)}" data-run="{esc(run_id)}"><h3>{esc(record["name"])} '
            f'<span class="muted">{esc(record["stage"])} · {esc(run_id)} · {esc(record["recorded_at"][:19])}</span>'
            + (f' <span class="origin">from {esc(origin["name"])}</span>' if origin else "") + "</h3>"
            + (f"<p>{esc(record['note'])}</p>" if record["note"] else "")
            + f"<p>parents: {parents or '-'}; seed {esc(str(manifest['seed']))}; code {esc(str(manifest['code']['commit'])[:12])}</p>"
            + f'<details><summary>config</summary><div class="kv">{config}</div></details>'
            + f'<details open><summary>metrics</summary><div class="kv">{metrics}</div></details>'
            + f"<details><summary>files</summary>{files}</details></div>")


def build_site(records: list[dict[str, Any]], *, title: str, published: str, artifacts: set[str], ablations: str,
               lower_is_better) -> str:
    rows = [_row(r) for r in records]
    metrics = sorted({k for r in rows for k in r["metrics"]})
    # the default column: the metric most runs report among evaluation-like names, else the most common one
    counts = {m: sum(m in r["metrics"] for r in rows) for m in metrics}
    preferred = [m for m in metrics if any(w in m for w in ("accuracy", "f1", "score"))]
    default = max(preferred or metrics, key=lambda m: counts[m]) if metrics else ""
    metric_options = "".join(f'<option value="{html.escape(m)}"{" selected" if m == default else ""}>{html.escape(m)}</option>'
                             for m in metrics)
    stage_options = "".join(f'<option value="{html.escape(s)}">{html.escape(s)}</option>' for s in sorted({r["stage"] for r in rows}))
    data = json.dumps(rows, ensure_ascii=False).replace("</", "<\\/")
    return PAGE.format(title=html.escape(title), count=len(rows), published=html.escape(published),
                       stage_options=stage_options, metric_options=metric_options, ablations=ablations,
                       sections="".join(_section(r, artifacts) for r in records), data=data,
                       lower=json.dumps([m for m in metrics if lower_is_better(m)]))
