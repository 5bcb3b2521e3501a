"""`compass runs ...`: list, show, note, search, leaderboard, lineage, diff, reproduce, report, check."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from compass.errors import CompassError
from compass.ledger.workspace import Workspace

DESCRIPTION = """Every stage run (CLI, recipe or Python) is recorded in the ledger: an MLflow run, its files by
sha256 in a content-addressed store, and an index for lineage and search. RUN is a run id or a unique
prefix of it (4+ characters; `compass runs list` shows 8), or an MLflow run id.

The ledger lives in $COMPASS_HOME, else the nearest .compass/ directory in the current directory or its
parents, else ./.compass; MLflow's store is $MLFLOW_TRACKING_URI (or --tracking-uri), else the sqlite
file in it: `mlflow ui --backend-store-uri sqlite:///$PWD/.compass/mlflow.db` shows the same runs."""

EXAMPLES = {
    "list": "compass runs list --stage dpo --limit 20",
    "show": "compass runs show 3f2a1b9c",
    "note": 'compass runs note 3f2a1b9c "tamper_answer dropped: rejected answers were too easy"',
    "search": 'compass runs search "dpo run where tamper_answer was dropped" --where "gsm8k.accuracy > 0.5 and dpo.beta = 0.1"',
    "leaderboard": "compass runs leaderboard --metric gsm8k.accuracy --format md",
    "lineage": "compass runs lineage 3f2a1b9c",
    "diff": "compass runs diff 3f2a1b9c 7c01d2e4",
    "reproduce": "compass runs reproduce 3f2a1b9c --out repro/",
    "report": "compass runs report --out runs.html --metric gsm8k.accuracy",
    "check": "compass runs check --repair",
    "publish": "compass runs publish --out site/ --title 'longdoc ablations'",
    "import": "compass runs import downloads/their-site --origin lab-b",
    "table": "compass runs table --sweep longdoc-ablation --rows variant --cols cot --metric 'mmlongbench.cot_{cot}.accuracy' --values cot=on,off",
}


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--home", type=Path, help="ledger workspace (default: $COMPASS_HOME, else the nearest .compass/)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite in the workspace)")


def _sub(sub, name: str, help_text: str, description: str | None = None) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=help_text, description=description or help_text,
                            epilog=f"example:\n  {EXAMPLES[name]}", formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(parser)
    return parser


class _Unbuilt:
    """Takes the arguments of a command that is not being run, and builds nothing: each argparse parser costs
    its setup (gettext look-ups, a formatter per argument), and 12 unused ones were a good part of a light
    command's start."""

    def add_argument(self, *args, **kwargs) -> None:
        pass


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The `compass runs` parser; `only`: build just that command (the one being run), else all of them."""
    parser = argparse.ArgumentParser(prog="compass runs", description=DESCRIPTION,
                                     epilog="examples:\n" + "\n".join(f"  {e}" for e in EXAMPLES.values()),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", metavar="COMMAND")

    def command(name: str, help_text: str, description: str | None = None):
        return _sub(sub, name, help_text, description) if only in (None, name) else _Unbuilt()

    p = command("list", "recorded runs, newest first")
    p.add_argument("--stage", help="only runs of this stage kind")
    p.add_argument("--name", help="only runs with this (recipe stage) name")
    p.add_argument("--where", help="figure filter, e.g. \"train/loss < 2 or dpo.beta = 0.1\"")
    p.add_argument("--limit", type=int, default=30)
    p.add_argument("--format", default="table", choices=["table", "md", "csv", "json"])

    p = command("show", "one run: config, metrics, artifacts (sha256, in store), parents, children, siblings")
    p.add_argument("run")
    p.add_argument("--json", action="store_true", help="the recorded (redacted) manifest as JSON")

    p = command("note", "attach a note to a run (searchable; MLflow shows it as the run description)")
    p.add_argument("run")
    p.add_argument("text")
    p.add_argument("--mlflow-now", action="store_true",
                   help="set MLflow's run description now (imports MLflow: seconds) instead of with the next recording")

    p = command("search", "find runs by words, meaning and figures; ranked, with why each matched",
             "Find runs the way you remember them, in English or Japanese. The query is read into:\n"
             "  facts        KEY VALUE or KEY=VALUE (KEY<VALUE, ...) on any config key or metric, typed and exact\n"
             "               (tamper_answer=0 is not 0.33; a list matches by element; 学習率/lr/seed/シード name keys)\n"
             "  stage words  dpo, sft, eval/評価, pairs/ペア, ...: only runs of that stage; a fact after another stage\n"
             "               word is that ancestor's ('eval of the model trained on pairs with seed 7')\n"
             "  superlatives best/worst/highest/lowest, 一番高い/最小/最良: rank by the metric named beside it, in\n"
             "               its direction (losses and error rates lower)\n"
             "  words        the rest, whole words (Japanese by MeCab morphemes), stopwords of both languages dropped\n"
             "  meaning      the query against each run's description embedded at record time (multilingual E5)\n"
             "--where adds a figure filter (=, !=, <, <=, >, >=, ~ contains; and, or, not, parentheses); STAGE.KEY\n"
             "reads the run's own or an ancestor's KEY. Each line says why the run matched.")
    p.add_argument("query", nargs="?", default="", help="words or a description (may be empty with --where)")
    p.add_argument("--where", help='e.g. "gsm8k.accuracy > 0.5 and (dpo.beta = 0.1 or dpo.beta = 0.2)"')
    p.add_argument("--mode", default="all", choices=["all", "text", "meaning"], help="text skips the embedding model (fastest)")
    p.add_argument("--limit", type=int, default=10)
    p.add_argument("--format", default="table", choices=["table", "json"])

    p = command("leaderboard", "runs ranked by a metric, with their data recipe (sources, pair strategies, hyperparameters)")
    p.add_argument("--metric", required=True, help="a numeric figure, e.g. gsm8k.accuracy, train/loss, sft.train/loss")
    p.add_argument("--lower-is-better", action="store_true", default=None,
                   help="rank ascending although the metric's name does not say so (losses, error rates, perplexity "
                        "and runtimes already rank ascending: compass.ledger.metric_direction)")
    p.add_argument("--where", help="figure filter applied first")
    p.add_argument("--limit", type=int)
    p.add_argument("--format", default="table", choices=["table", "md", "csv", "json"])

    p = command("lineage", "the tree of runs that produced a run's inputs, back to the raw source files")
    p.add_argument("run")

    p = command("diff", "config, data (input/output hashes), data recipe and metric differences of two runs")
    p.add_argument("a")
    p.add_argument("b")

    p = command("reproduce", "re-run a stage from its recorded config and stored inputs; compare hashes and metrics",
             "Re-run a recorded stage in a new directory from its recorded config and the exact input bytes (from\n"
             "the store, verified by sha256). Data stages must reproduce every output byte for byte; training and\n"
             "model-server stages (sft, dpo, distill, eval, evidence, doc-traces) must agree on metrics within\n"
             "--tolerance. Exit 0 when reproduced, 1 when not. Refuses when the code commit differs.")
    p.add_argument("run")
    p.add_argument("--out", type=Path, help="new directory (default: WORKSPACE/reproduce/<run>-<time>)")
    p.add_argument("--allow-code-change", action="store_true", help="run even though the code commit differs from the recorded one")
    p.add_argument("--tolerance", type=float, default=0.01, help="relative metric tolerance (default 0.01)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field (e.g. a redacted secret)")

    p = command("report", "a static HTML page: leaderboards, training curves (SVG), lineage; opens without a server")
    p.add_argument("--out", type=Path, default=Path("compass-report.html"))
    p.add_argument("--metric", action="append", help="leaderboard metric (repeatable; default: the eval metrics)")
    p.add_argument("--limit", type=int, default=30, help="runs per table and curves of the newest N runs")

    p = command("table", "an ablation table of a sweep's runs: a metric over two axes, mean +- std over seeds, "
             "each cell with its run ids (from the sweep's tables: block when --rows/--cols are not given)")
    p.add_argument("--sweep", help="sweep name (default: the most recent sweep in the ledger)")
    p.add_argument("--rows", help="axis for the rows: 'variant', a grid path or its last part (e.g. top_k)")
    p.add_argument("--cols", help="axis for the columns")
    p.add_argument("--metric", help="metric key; '{AXIS}' is filled from --values, e.g. 'mmlongbench.cot_{cot}.accuracy'")
    p.add_argument("--values", action="append", default=[], metavar="AXIS=V1,V2",
                   help="an axis that lives in metric names, e.g. cot=on,off")
    p.add_argument("--format", default="md", choices=["md", "latex", "csv", "html"])

    p = command("publish", "a static leaderboard site (search and filters in the browser, no server) plus runs.jsonl / "
             "runs.parquet and the small artifacts, secrets redacted, for others to explore or import")
    p.add_argument("--out", type=Path, required=True, help="directory for index.html, runs.jsonl, runs.parquet, artifacts/")
    p.add_argument("--where", help="only runs matching this figure filter, e.g. \"stage = 'eval'\"")
    p.add_argument("--title", default="compass runs", help="the page's title")
    p.add_argument("--max-artifact-kb", type=int, default=256, help="artifacts up to this size are copied (default 256)")

    p = command("import", "bring a published export into this ledger as read-only foreign runs (marked by origin)")
    p.add_argument("export", type=Path, help="a directory `compass runs publish` wrote (runs.jsonl)")
    p.add_argument("--origin", help="the name these runs are marked with (default: the directory's name)")

    p = command("check", "verify the ledger: index integrity, every blob's sha256, MLflow runs; --repair cleans leftovers")
    p.add_argument("--repair", action="store_true", help="remove leftovers of killed recorders; restore blobs from run directories")
    p.add_argument("--no-bytes", action="store_true", help="skip re-hashing every blob (only check presence)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(only=argv[0] if argv and argv[0] in HANDLERS else None)
    args = parser.parse_args(argv)
    if args.cmd is None:
        parser.print_help()
        return 2
    workspace = Workspace.current(args.home, args.tracking_uri)
    return HANDLERS[args.cmd](workspace, args)


def _index(workspace: Workspace):
    from compass.ledger.index import Index

    return Index(workspace.index_db, create=False)


def cmd_list(workspace: Workspace, args) -> int:
    from compass.ledger.query import headline_metrics, where_run_ids
    from compass.ledger.tables import render

    index = _index(workspace)
    try:
        clauses, params = [], []
        if args.stage:
            clauses.append("r.stage = ?")
            params.append(args.stage)
        if args.name:
            clauses.append("r.name = ?")
            params.append(args.name)
        runs = index.runs(" AND ".join(clauses), tuple(params), limit=None if args.where else args.limit)
        if args.where:
            allowed = where_run_ids(index, args.where)
            runs = [r for r in runs if r.run_id in allowed][: args.limit]
        rows = [{"run": r.short, "recorded": r.recorded_at[:19].replace("T", " "), "stage": r.stage,
                 "name": r.name + (f" [from {r.manifest['origin']['name']}]" if "origin" in r.manifest else ""),
                 "metrics": headline_metrics(r), "note": r.note, "run_id": r.run_id} for r in runs]
        columns = ["run", "recorded", "stage", "name", "metrics", "note"] + (["run_id"] if args.format != "table" else [])
        if not rows:
            print("no runs recorded" + (" that match" if clauses or args.where else "") + f" in {workspace.root}")
            return 0
        print(render(rows, columns, args.format))
        return 0
    finally:
        index.close()


def cmd_show(workspace: Workspace, args) -> int:
    from compass.ledger.explore import show_text
    from compass.ledger.store import ContentStore

    index = _index(workspace)
    try:
        run = index.resolve(args.run)
        if args.json:
            print(json.dumps(run.manifest, ensure_ascii=False, indent=2))
        else:
            from compass.io import HASH_CACHE_NAME, HashCache

            cache = HashCache(workspace.root / HASH_CACHE_NAME)  # blobs whose stat is unchanged are not read again
            try:
                print(show_text(index, ContentStore(workspace.store_dir), run, cache))
            finally:
                cache.close()
        return 0
    finally:
        index.close()


def cmd_note(workspace: Workspace, args) -> int:
    from compass.ledger.record import add_note

    index = _index(workspace)
    try:
        run = index.resolve(args.run)
    finally:
        index.close()
    text = add_note(workspace, run, args.text, mlflow_now=args.mlflow_now)
    print(f"note on {run.short}: {text}")
    if not args.mlflow_now:
        print("  (searchable now; MLflow shows it as the run description after the next recording or `compass runs check`)")
    return 0


def cmd_search(workspace: Workspace, args) -> int:
    from compass.ledger.query import search

    index = _index(workspace)
    try:
        hits = search(index, args.query, where=args.where, mode=args.mode, limit=args.limit)
        if args.format == "json":
            print(json.dumps([{"run_id": h.run.run_id, "name": h.run.name, "stage": h.run.stage, "score": round(h.score, 5),
                               "why": h.why} for h in hits], ensure_ascii=False, indent=2))
            return 0
        if not hits:
            print("no matching runs")
            return 0
        for rank, hit in enumerate(hits, 1):
            from compass.ledger.explore import run_label

            print(f"{rank:>2}. {run_label(hit.run)}" + (f"  note: {hit.run.note}" if hit.run.note else ""))
            for reason in hit.why:
                print(f"      {reason}")
        return 0
    finally:
        index.close()


def cmd_leaderboard(workspace: Workspace, args) -> int:
    from compass.ledger.query import leaderboard, leaderboard_columns
    from compass.ledger.tables import render

    index = _index(workspace)
    try:
        board = leaderboard(index, args.metric, where=args.where, lower_is_better=args.lower_is_better, limit=args.limit)
        columns = leaderboard_columns(board, args.metric, extra=("run_id",) if args.format in ("json", "csv") else ())
        if args.format == "table" and board:
            print(f"{args.metric}: {board[0]['direction']}")
        print(render(board, columns, args.format))
        return 0
    finally:
        index.close()


def cmd_lineage(workspace: Workspace, args) -> int:
    from compass.ledger.explore import lineage_tree, render_lineage

    index = _index(workspace)
    try:
        print(render_lineage(lineage_tree(index, index.resolve(args.run))))
        return 0
    finally:
        index.close()


def cmd_diff(workspace: Workspace, args) -> int:
    from compass.ledger.explore import diff_text

    index = _index(workspace)
    try:
        print(diff_text(index, index.resolve(args.a), index.resolve(args.b)))
        return 0
    finally:
        index.close()


def cmd_reproduce(workspace: Workspace, args) -> int:
    from compass.ledger.flat import as_text
    from compass.commands.reproduce import parse_overrides, reproduce_run

    index = _index(workspace)
    try:
        run = index.resolve(args.run)
    finally:
        index.close()
    rep = reproduce_run(workspace, run, out=args.out, allow_code_change=args.allow_code_change,
                        tolerance=args.tolerance, overrides=parse_overrides(args.set))
    print(f"reproduced {run.stage} {run.short} as {rep.new_run_id[:8]} in {rep.out_dir}")
    if rep.code_changed:
        print(f"  code: DIFFERENT from the recorded commit {run.code_commit or 'unknown'} (--allow-code-change)")
    total = len(run.manifest["outputs"])
    print(f"  outputs: {len(rep.same_outputs)}/{total} identical (sha256)"
          + ("" if rep.exact_required else "  [byte equality not required for this stage]"))
    for label, items in (("differs", rep.changed_outputs), ("missing", rep.missing_outputs), ("new", rep.extra_outputs)):
        for rel in items[:20]:
            print(f"    {label}: {rel}")
    for key, recorded, now, agrees in rep.metric_rows:
        mark = "ok" if agrees else f"OUTSIDE tolerance {args.tolerance}"
        print(f"  metric {key}: {as_text(recorded)} -> {as_text(now)}  {mark}")
    print("REPRODUCED" if rep.reproduced else "NOT REPRODUCED")
    return 0 if rep.reproduced else 1


def cmd_report(workspace: Workspace, args) -> int:
    from compass.ledger.report import write_report

    index = _index(workspace)
    try:
        path = write_report(index, args.out, metrics=args.metric, limit=args.limit)
    finally:
        index.close()
    print(f"report: {path.resolve()} (open it in a browser; no server needed)")
    return 0


def cmd_table(workspace: Workspace, args) -> int:
    from compass.ledger.ablation import build_tables, render_tables
    from compass.ledger.flat import flatten

    if (args.rows is None) != (args.cols is None) or (args.rows is not None and args.metric is None):
        raise CompassError("give --rows, --cols and --metric together, or none of them (the sweep's tables: block)")
    values = {}
    for item in args.values:
        axis, sep, listed = item.partition("=")
        if not sep or not listed:
            raise CompassError(f"--values {item!r}: expected AXIS=V1,V2")
        values[axis] = listed.split(",")
    index = _index(workspace)
    try:
        sweep, runs = index.sweep_runs(args.sweep)
    finally:
        index.close()
    rows = [(r.run_id, r.manifest["sweep"], flatten(r.metrics)) for r in runs]
    specs = ([{"rows": args.rows, "cols": args.cols, "metric": args.metric, "values": values}] if args.rows is not None
             else runs[-1].manifest["sweep"]["tables"] if runs else [])
    if not specs:
        raise CompassError(f"sweep {sweep!r} declares no tables: give --rows, --cols and --metric")
    print(f"sweep {sweep}: {len(runs)} runs")
    for spec in specs:
        print()
        print(render_tables(build_tables(rows, **spec), args.format))
    return 0


def cmd_publish(workspace: Workspace, args) -> int:
    from compass.commands.publish import publish

    site, count = publish(workspace, args.out, where=args.where, title=args.title, max_artifact_bytes=args.max_artifact_kb * 1024)
    print(f"published {count} runs: {site} (open it in a browser; runs.jsonl and runs.parquet beside it)")
    return 0


def cmd_import(workspace: Workspace, args) -> int:
    from compass.commands.publish import import_runs

    imported, skipped = import_runs(workspace, args.export, args.origin)
    print(f"imported {imported} runs from {args.export}" + (f" ({skipped} were already here)" if skipped else ""))
    return 0


def cmd_check(workspace: Workspace, args) -> int:
    from compass.ledger.check import check_ledger

    report = check_ledger(workspace, repair=args.repair, verify_bytes=not args.no_bytes)
    print(f"ledger {workspace.root}: {report.checked_runs} run(s), {report.checked_blobs} blob(s) "
          f"{'hashed' if not args.no_bytes else 'present'}")
    for line in report.repaired:
        print(f"  repaired: {line}")
    for line in report.leftovers:
        print(f"  leftover: {line}" + ("" if args.repair else "  (compass runs check --repair removes it)"))
    for line in report.problems:
        print(f"  PROBLEM: {line}")
    print("OK" if report.ok else f"{len(report.problems)} problem(s)")
    return 0 if report.ok else 1


HANDLERS = {
    "list": cmd_list, "show": cmd_show, "note": cmd_note, "search": cmd_search, "leaderboard": cmd_leaderboard,
    "lineage": cmd_lineage, "diff": cmd_diff, "reproduce": cmd_reproduce, "report": cmd_report, "check": cmd_check,
    "table": cmd_table, "publish": cmd_publish, "import": cmd_import,
}


if __name__ == "__main__":
    try:
        sys.exit(main())
    except CompassError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
