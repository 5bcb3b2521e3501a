"""Looking at runs: show (artifacts, metrics, family), lineage trees back to raw sources, and diffs."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compass.ledger.flat import as_number, as_text, flatten, format_number, human_size
from compass.ledger.index import Index, RunRow

if TYPE_CHECKING:  # show_text's caller passes the store; search and lineage never load it (nor compass.io)
    from compass.io import HashCache
    from compass.ledger.store import ContentStore


def run_label(run: RunRow) -> str:
    from compass.ledger.query import headline_metrics

    metrics = headline_metrics(run)
    label = f"{run.stage} {run.short}"
    if run.name != run.stage:
        label += f" '{run.name}'"
    return label + (f"  {metrics}" if metrics else "")


def blob_state(store: ContentStore, sha: str, size: int, cache: HashCache | None) -> str:
    """ok, MISSING, or DAMAGED: the blob no longer hashes to its name (an output edited in place while the store
    shared its bytes by hard link). `cache` (the workspace's stat cache) reads only blobs whose stat changed."""
    from compass.ledger.store import _hash_file

    path = store.path(sha)
    if not path.is_file():
        return "MISSING"
    if path.stat().st_size != size or (cache.sha256(path) if cache is not None else _hash_file(path)) != sha:
        return "DAMAGED"
    return "ok"


def show_text(index: Index, store: ContentStore, run: RunRow, cache: HashCache | None = None) -> str:
    lines = [f"run       {run.run_id}", f"name      {run.name}", f"stage     {run.stage}"]
    if run.recipe:
        lines.append(f"recipe    {run.recipe}")
    dirty = "" if run.code_dirty is None else (" (dirty tree)" if run.code_dirty else " (clean)")
    lines += [f"started   {run.started_at}   wall {run.wall_time_s:.1f}s",
              f"code      {run.code_commit or 'unknown'}{dirty}",
              f"out dir   {run.out_dir}",
              f"mlflow    {run.mlflow_run_id}  ({run.tracking_uri})"]
    if run.reproduces:
        lines.append(f"reproduces {run.reproduces[:8]}")
    if run.note:
        lines.append(f"note      {run.note}")
    for key, value in run.summary.items():
        if value:
            lines.append(f"{key:<9} {value}")
    lines.append("\nconfig")
    lines += [f"  {k} = {as_text(v)}" for k, v in flatten(run.config).items()]
    lines.append("\nmetrics")
    metrics = flatten(run.metrics)
    lines += [f"  {k} = {as_text(v)}" for k, v in metrics.items()] or ["  (none)"]
    history = index.history(run.run_id)
    if history:
        lines.append("\nmetric history (steps: first -> last)")
        for key, points in history.items():
            lines.append(f"  {key}: {len(points)} steps, {format_number(points[0][1])} -> {format_number(points[-1][1])}")
    lines.append("\nartifacts (sha256, in the store)")
    broken = []
    for role, port, path, sha, size in index.files(run.run_id):
        state = blob_state(store, sha, size, cache)
        where = f"in:{port}" if role == "in" else "out"
        lines.append(f"  {where:<12} {path:<40} {human_size(size):>9}  {sha}  {state}")
        if state != "ok":
            broken.append(f"{where} {path} ({state.lower()})")
    if broken:
        lines.append(f"  {len(broken)} artifact(s) not intact in the store: {', '.join(broken[:5])}; "
                     "`compass runs check --repair` restores them from run directories that still hold the bytes")
    parents = index.parents(run.run_id)
    children = index.children(run.run_id)
    siblings = sorted({c for p, _ in parents for c in index.children(p)} - {run.run_id})
    family = index.runs_by_ids([p for p, _ in parents] + children + siblings)
    if parents:
        lines.append("\nparents")
        lines += [f"  {port} <- {run_label(family[p])}" for p, port in parents]
    if children:
        lines.append("\nchildren")
        lines += [f"  {run_label(family[c])}" for c in children]
    if siblings:
        lines.append("\nsiblings (same parents)")
        lines += [f"  {run_label(family[s])}" for s in siblings[:20]]
    return "\n".join(lines)


# --- lineage ---------------------------------------------------------------------------------------------


@dataclass
class Node:
    run: RunRow
    port: str | None = None
    children: list[Node] = field(default_factory=list)
    sources: list[tuple[str, str, str, int]] = field(default_factory=list)  # port, path, sha, size
    repeated: bool = False


def lineage_tree(index: Index, run: RunRow, port: str | None = None, seen: set[str] | None = None) -> Node:
    """The run, the runs that produced its inputs (recursively), and the raw files no run produced."""
    seen = set() if seen is None else seen
    node = Node(run, port)
    if run.run_id in seen:
        node.repeated = True
        return node
    seen.add(run.run_id)
    parents = index.parents(run.run_id)
    rows = index.runs_by_ids([p for p, _ in parents])
    produced_by_parents = set()
    for parent_id, _ in parents:
        produced_by_parents |= {sha for *_, sha, _ in index.files(parent_id, "out")}
    for parent_id, parent_port in parents:
        node.children.append(lineage_tree(index, rows[parent_id], parent_port, seen))
    inputs = {p: (path, is_file) for p, path, is_file in index.inputs(run.run_id)}
    for _, in_port, rel, sha, size in index.files(run.run_id, "in"):
        if sha in produced_by_parents:
            continue
        path, is_file = inputs[in_port]
        node.sources.append((in_port, path if is_file else str(Path(path) / rel), sha, size))
    return node


def render_lineage(node: Node, max_sources: int = 5) -> str:
    lines = [run_label(node.run)]

    def walk(n: Node, prefix: str) -> None:
        entries: list[tuple[str, Any]] = [("run", c) for c in n.children]
        by_port: dict[str, list] = {}
        for src in n.sources:
            by_port.setdefault(src[0], []).append(src)
        for port, items in by_port.items():
            for item in items[:max_sources]:
                entries.append(("src", item))
            if len(items) > max_sources:
                entries.append(("more", (port, len(items) - max_sources)))
        for i, (kind, item) in enumerate(entries):
            last = i == len(entries) - 1
            branch, cont = ("└─ ", "   ") if last else ("├─ ", "│  ")
            if kind == "run":
                tail = "  (shown above)" if item.repeated else ""
                lines.append(f"{prefix}{branch}{item.port} <- {run_label(item.run)}{tail}")
                if not item.repeated:
                    walk(item, prefix + cont)
            elif kind == "src":
                port, path, sha, size = item
                lines.append(f"{prefix}{branch}{port} <- source {path}  sha256 {sha[:12]}  {human_size(size)}")
            else:
                lines.append(f"{prefix}{branch}{item[0]} <- ... {item[1]} more source file(s)")

    walk(node, "")
    return "\n".join(lines)


# --- diff ------------------------------------------------------------------------------------------------


def _pairs(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    missing = object()
    out = []
    for key in sorted(set(a) | set(b)):
        va = a[key] if key in a else missing
        vb = b[key] if key in b else missing
        if va != vb:
            out.append((key, "-" if va is missing else as_text(va), "-" if vb is missing else as_text(vb)))
    return out


def diff_text(index: Index, a: RunRow, b: RunRow) -> str:
    """What changed from A to B, first: one line per changed setting (run, config, data recipe, parents,
    input and output bytes), then the metric changes; identical parts are one line each at the end."""
    lines = [f"A = {run_label(a)}", f"B = {run_label(b)}", ""]
    changed: list[str] = []
    same: list[str] = []
    head = _pairs({"stage": a.stage, "name": a.name, "recipe": a.recipe, "code": a.code_commit, "dirty": a.code_dirty, "seed": a.manifest["seed"]},
                  {"stage": b.stage, "name": b.name, "recipe": b.recipe, "code": b.code_commit, "dirty": b.code_dirty, "seed": b.manifest["seed"]})
    changed += [f"  {k}: {va} -> {vb}" for k, va, vb in head]
    config = _pairs(flatten(a.config), flatten(b.config))
    changed += [f"  config {k}: {va} -> {vb}" for k, va, vb in config]
    if not config:
        same.append("config: same")
    summary = _pairs({k: v for k, v in a.summary.items() if k != "pairs"}, {k: v for k, v in b.summary.items() if k != "pairs"})
    for key, va, vb in summary:
        if key == "hparams":  # the runs' own hyperparameters are in the config lines already: only the ancestors'
            own = (f"{a.stage}.", f"{b.stage}.")
            gone = [t for t in va.split() if t not in vb.split() and not t.startswith(own)]
            new = [t for t in vb.split() if t not in va.split() and not t.startswith(own)]
            if gone or new:
                changed.append(f"  ancestors' hparams: {' '.join(gone) or '-'} -> {' '.join(new) or '-'}")
        else:
            changed.append(f"  {key} (from lineage): {va} -> {vb}")
    pa = sorted(p[:8] for p, _ in index.parents(a.run_id))
    pb = sorted(p[:8] for p, _ in index.parents(b.run_id))
    if pa != pb:
        changed.append(f"  parents: {', '.join(pa) or '-'} -> {', '.join(pb) or '-'}")

    def files(run: RunRow, role: str) -> dict[str, str]:
        return {(f"{port}:{path}" if role == "in" else path): sha for _, port, path, sha, _ in index.files(run.run_id, role)}

    file_lines: list[str] = []
    for role, title in (("in", "data in"), ("out", "data out")):
        fa, fb = files(a, role), files(b, role)
        identical = sorted(k for k in set(fa) & set(fb) if fa[k] == fb[k])
        differ = _pairs({k: fa[k][:12] for k in fa if k not in identical}, {k: fb[k][:12] for k in fb if k not in identical})
        if differ:
            changed.append(f"  {title}: {len(differ)} file(s) differ, {len(identical)} identical")
            file_lines += [f"  {title} {k}: {va} -> {vb}" for k, va, vb in differ[:50]]
        else:
            same.append(f"{title}: {len(identical)} file(s) identical")

    ma, mb = flatten(a.metrics), flatten(b.metrics)
    metric_lines = []
    for key in sorted(set(ma) | set(mb)):
        va = ma[key] if key in ma else None
        vb = mb[key] if key in mb else None
        na, nb = as_number(va), as_number(vb)
        if na is not None and nb is not None:
            if na != nb:
                metric_lines.append(f"  {key}: {format_number(na)} -> {format_number(nb)}  ({'+' if nb >= na else ''}{format_number(nb - na)})")
        elif va != vb:
            metric_lines.append(f"  {key}: {'-' if va is None else as_text(va)} -> {'-' if vb is None else as_text(vb)}")
    lines.append("changed" + ("" if changed else ": nothing in config, data or lineage"))
    lines += changed
    lines.append("metrics" + ("" if metric_lines else ": same"))
    lines += metric_lines
    if file_lines:
        lines.append("files that differ (sha256 prefix)")
        lines += file_lines
    if same:
        lines.append("same: " + "; ".join(same))
    return "\n".join(lines)
