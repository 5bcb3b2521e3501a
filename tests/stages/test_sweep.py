"""compass sweep: variants share every stage they don't change (each shared stage runs once, checked in the
ledger), the expansion is a plain recipe, a rerun is all cached, and `runs table` puts the right run in
every cell (mean +- std over a seed axis)."""
from __future__ import annotations

import statistics

import pytest
import yaml

from compass.commands.runs import main as runs_main
from compass.errors import CompassError
from compass.ledger.ablation import build_tables, render_tables
from compass.ledger.flat import flatten
from compass.ledger.index import Index
from compass.ledger.workspace import Workspace
from compass.sweep import parse_set, plan_sweep, run_sweep
from support.ledger_runs import fresh_workspace, template_dir

RECIPE = """
name: sweepy
seed: 42
stages:
  - {name: problems, stage: sources, config: {reasoning_gym: [{generator: basic_arithmetic, size: 24}]}}
  - {name: traces, stage: distill, inputs: {problems: problems.problems}, config: {backend: reference, teacher: reference}}
  - {name: pairs, stage: pairs, inputs: {traces: traces.traces}}
sweep:
  grid:
    pairs.config.weights.tamper_answer: [0.0, 0.33]
  tables:
    - {rows: tamper_answer, cols: seed, metric: strategy_share.tamper_answer}
"""


@pytest.fixture
def ledger(tmp_path_factory, tmp_path, monkeypatch) -> Workspace:
    """A fresh ledger made current; the real stages (not the ledger tests' stand-ins) run."""
    workspace = fresh_workspace(template_dir(tmp_path_factory), tmp_path / "home")
    monkeypatch.setenv("COMPASS_HOME", str(workspace.root))
    return workspace


def _recipe(tmp_path, text=RECIPE):
    path = tmp_path / "sweepy.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def _sweep_runs(ledger: Workspace, name: str):
    index = Index(ledger.index_db, create=False)
    try:
        return index.sweep_runs(name)[1]
    finally:
        index.close()


def test_parse_set_and_bad_axes(tmp_path):
    assert parse_set("doc_examples.config.top_k=[16, 24]") == ("doc_examples.config.top_k", [16, 24])
    assert parse_set("merge.config.weights=[[0.25],[0.5]]") == ("merge.config.weights", [[0.25], [0.5]])
    for bad, message in [("top_k", "expected PATH="), ("a.config.b=16", "non-empty YAML list"), ("a.config.b=[]", "non-empty")]:
        with pytest.raises(CompassError, match=message):
            parse_set(bad)
    recipe = _recipe(tmp_path)
    with pytest.raises(CompassError, match=r"no stage 'pair' \(did you mean 'pairs'\?\)"):
        plan_sweep(recipe, ["pair.config.seed=[1, 2]"])
    with pytest.raises(CompassError, match=r"expected '<stage>.config.<key>"):
        plan_sweep(recipe, ["pairs.seed=[1, 2]"])


def test_expansion_shares_what_no_axis_reaches(tmp_path):
    _recipe_, _sweep, expansion = plan_sweep(_recipe(tmp_path), ["pairs.config.seed=[1, 2]"])
    names = [s["name"] for s in expansion.recipe["stages"]]
    # 2 x 2 variants: sources and distill once, pairs once per variant, named by the values that reach it
    assert names == ["problems", "traces", "pairs__tamper_answer-0p0_seed-1", "pairs__tamper_answer-0p0_seed-2",
                     "pairs__tamper_answer-0p33_seed-1", "pairs__tamper_answer-0p33_seed-2"]
    stages = {s["name"]: s for s in expansion.recipe["stages"]}
    assert stages["problems"]["sweep"]["variants"] == [v.name for v in expansion.variants]
    assert stages["problems"]["sweep"]["values"] == {}
    p = stages["pairs__tamper_answer-0p33_seed-2"]
    assert p["config"] == {"weights": {"tamper_answer": 0.33}, "seed": 2}
    assert p["inputs"] == {"traces": "traces.traces"}
    assert p["sweep"]["values"] == {"pairs.config.weights.tamper_answer": 0.33, "pairs.config.seed": 2}

    # a recipe-level seed axis reaches every stage: sources and distill once per seed, pairs per (weight, seed)
    _r, _s, by_seed = plan_sweep(_recipe(tmp_path), ["seed=[1, 2]"])
    inputs = {s["name"]: s["inputs"] for s in by_seed.recipe["stages"]}
    assert sorted(inputs) == sorted(["problems__seed-1", "problems__seed-2", "traces__seed-1", "traces__seed-2",
                                     "pairs__tamper_answer-0p0_seed-1", "pairs__tamper_answer-0p0_seed-2",
                                     "pairs__tamper_answer-0p33_seed-1", "pairs__tamper_answer-0p33_seed-2"])
    assert inputs["pairs__tamper_answer-0p33_seed-2"] == {"traces": "traces__seed-2.traces"}
    assert inputs["traces__seed-2"] == {"problems": "problems__seed-2.problems"}


def test_sweep_runs_shared_stages_once_table_cells_and_a_rerun_is_cached(tmp_path, ledger):
    recipe = _recipe(tmp_path)
    workdir = tmp_path / "work"
    lines: list[str] = []
    results = run_sweep(recipe, workdir, ["pairs.config.seed=[1, 2]"], command="compass sweep test", log=lines.append)
    assert len(results) == 6 and not any(r.cached for r in results.values())
    # the expansion is an ordinary recipe that starts with the command that made it
    text = (workdir / "sweep.yaml").read_text(encoding="utf-8")
    assert text.startswith("# compass sweep test\n") and yaml.safe_load(text)["name"] == "sweepy"

    runs = _sweep_runs(ledger, "sweepy")
    by_stage = {}
    for run in runs:
        by_stage.setdefault(run.stage, []).append(run)
    assert {k: len(v) for k, v in by_stage.items()} == {"sources": 1, "distill": 1, "pairs": 4}

    tables = build_tables([(r.run_id, r.manifest["sweep"], flatten(r.metrics)) for r in runs],
                          rows="tamper_answer", cols="pairs.config.seed", metric="strategy_share.tamper_answer")
    assert len(tables) == 1
    table = tables[0]
    assert table.rows == [0.0, 0.33] and table.cols == [1, 2]
    for (row, col), cell in table.cells.items():
        assert len(cell.run_ids) == 1
        run = next(r for r in by_stage["pairs"] if r.run_id == cell.run_ids[0])
        assert run.config["weights"]["tamper_answer"] == row and run.config["seed"] == col
        assert cell.values == [run.metrics["strategy_share"]["tamper_answer"]]
        assert (cell.values[0] == 0.0) == (row == 0.0)
    md = render_tables(tables, "md")
    assert f"compass runs reproduce {table.cells[(0.33, 2)].run_ids[0]}" in md
    assert "\\begin{tabular}{lrr}" in render_tables(tables, "latex")

    again = run_sweep(recipe, workdir, ["pairs.config.seed=[1, 2]"], command="compass sweep test", log=lines.append)
    assert all(r.cached for r in again.values())
    assert len(_sweep_runs(ledger, "sweepy")) == 6  # cached stages add no runs


def test_seed_axis_is_averaged_and_the_cli_prints_the_declared_tables(tmp_path, ledger, capsys):
    recipe = _recipe(tmp_path, RECIPE.replace("  tables:\n    - {rows: tamper_answer, cols: seed, metric: strategy_share.tamper_answer}\n",
                                              "  tables:\n    - {rows: tamper_answer, cols: require_tags, metric: strategy_share.omit_thinking}\n"))
    run_sweep(recipe, tmp_path / "work", ["seed=[1, 2]", "pairs.config.require_tags=[true]"], command="c", log=lambda _: None)
    runs = _sweep_runs(ledger, "sweepy")
    assert sum(r.stage == "sources" for r in runs) == 2  # one per seed
    table = build_tables([(r.run_id, r.manifest["sweep"], flatten(r.metrics)) for r in runs],
                         rows="tamper_answer", cols="require_tags", metric="strategy_share.omit_thinking")[0]
    cell = table.cells[(0.33, True)]
    assert len(cell.run_ids) == 2
    shares = [next(r for r in runs if r.run_id == i).metrics["strategy_share"]["omit_thinking"] for i in cell.run_ids]
    assert cell.text() == f"{statistics.mean(shares):.4g} ± {statistics.stdev(shares):.2g} (n=2)"

    from compass.ledger.report import anchor, build_report

    index = Index(ledger.index_db, create=False)
    try:
        page = build_report(index)
    finally:
        index.close()
    assert 'id="ablations"' in page and '<table class="ablation">' in page and "(n=2)" in page
    assert f'href="#{anchor(cell.run_ids[0])}"' in page  # cells link to the run sections of the report

    assert runs_main(["table", "--home", str(ledger.root)]) == 0  # the sweep's own tables: block
    out = capsys.readouterr().out
    assert "sweep sweepy: " in out and "tamper_answer \\ require_tags" in out and "(n=2)" in out
    with pytest.raises(CompassError, match="the sweep has no axis 'top_k'"):
        runs_main(["table", "--home", str(ledger.root), "--rows", "top_k", "--cols", "seed", "--metric", "pairs"])


def test_jobs_run_independent_stages_at_once_and_give_the_same_bytes(tmp_path, ledger, monkeypatch):
    from compass import stages
    from compass.pipeline import run_recipe

    monkeypatch.setitem(stages.STAGES, "rendezvous", "support.rendezvous_stage")
    a, b = tmp_path / "a.started", tmp_path / "b.started"
    recipe = tmp_path / "meet.yaml"
    recipe.write_text(f"""name: meet
stages:
  - {{name: left, stage: rendezvous, config: {{me: "{a}", other: "{b}", wait_s: 120}}}}
  - {{name: right, stage: rendezvous, config: {{me: "{b}", other: "{a}", wait_s: 120}}}}
""", encoding="utf-8")
    results = run_recipe(recipe, tmp_path / "meet", jobs=2, log=lambda _: None)  # one after another: a timeout
    assert {name: r.manifest.metrics["met"] for name, r in results.items()} == {"left": True, "right": True}

    # a sweep with 2 jobs writes exactly the bytes of the same sweep with 1
    one = run_sweep(_recipe(tmp_path), tmp_path / "one", [], command="c", log=lambda _: None)
    two = run_sweep(_recipe(tmp_path), tmp_path / "two", [], command="c", jobs=2, log=lambda _: None)
    assert {n: r.manifest.outputs for n, r in one.items()} == {n: r.manifest.outputs for n, r in two.items()}
