"""The paper's 2x2 on the tiny default: recipes/longdoc-ablation.yaml (mixed vs non-think training data x
<cot> on/off at evaluation), top-K held at 24. Shared stages run exactly once (checked in the ledger), every
table cell holds the eval run of its variant, and a rerun is all cached."""
from __future__ import annotations

import pytest

from compass.ledger.ablation import build_tables
from compass.ledger.flat import flatten
from compass.ledger.index import Index
from compass.sweep import run_sweep
from support.ledger_runs import fresh_workspace, template_dir

pytestmark = pytest.mark.slow


def test_longdoc_ablation_2x2(tmp_path, tmp_path_factory, monkeypatch):
    workspace = fresh_workspace(template_dir(tmp_path_factory), tmp_path / "home")
    monkeypatch.setenv("COMPASS_HOME", str(workspace.root))
    sets = ["doc_examples.config.top_k=[24]"]
    results = run_sweep("longdoc-ablation", tmp_path / "w", sets, command="compass sweep longdoc-ablation", log=lambda _: None)
    assert len(results) == 4 + 2 * 4  # models, docs, pages, evidence once; examples, sft, merge, eval per variant

    index = Index(workspace.index_db, create=False)
    try:
        _, runs = index.sweep_runs("longdoc-ablation")
    finally:
        index.close()
    per_stage = {}
    for run in runs:
        per_stage.setdefault(run.stage, []).append(run)
    assert {k: len(v) for k, v in per_stage.items()} == {
        "tiny-models": 1, "pdf-fixtures": 1, "pages": 1, "evidence": 1, "doc-traces": 2, "sft": 2, "merge": 2, "eval": 2}
    nonthink = next(r for r in per_stage["doc-traces"] if r.config["cot_placement"]["none"] == 1.0)
    assert nonthink.metrics["placements"]["none"] == nonthink.metrics["examples"]  # every example without <cot>

    rows = [(r.run_id, r.manifest["sweep"], flatten(r.metrics)) for r in runs]
    spec = runs[-1].manifest["sweep"]["tables"][0]
    (table,) = build_tables(rows, **spec)
    assert table.rows == ["mixed", "nonthink"] and table.cols == ["on", "off"]
    evals = {r.manifest["sweep"]["values"]["variant"]: r for r in per_stage["eval"]}
    for (variant, cot), cell in table.cells.items():
        assert cell.run_ids == [evals[variant].run_id]
        assert cell.values == [evals[variant].metrics[f"mmlongbench.cot_{cot}.accuracy"]]

    again = run_sweep("longdoc-ablation", tmp_path / "w", sets, command="compass sweep longdoc-ablation", log=lambda _: None)
    assert all(r.cached for r in again.values())
