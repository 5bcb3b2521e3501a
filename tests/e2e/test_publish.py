"""compass runs publish -> runs import: every run and figure survives the round trip, imported runs are
searchable, ranked and tabled like one's own (marked by origin, never reproduced here), no secret leaves,
and the static site works in headless Chromium (the search filters rows, the ablation table renders)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from compass.commands.runs import main as runs_main
from compass.errors import CompassError
from compass.ledger.index import Index
from compass.sweep import run_sweep
from support.browser import dump_dom
from support.ledger_runs import fresh_workspace, template_dir

pytestmark = pytest.mark.browser

RECIPE = """
name: pub
seed: 42
stages:
  - {name: problems, stage: sources, config: {reasoning_gym: [{generator: basic_arithmetic, size: 16}]}}
  - {name: traces, stage: distill, inputs: {problems: problems.problems}, config: {backend: reference, teacher: reference}}
  - {name: pairs, stage: pairs, inputs: {traces: traces.traces}}
sweep:
  grid:
    pairs.config.weights.tamper_answer: [0.0, 0.33]
    pairs.config.seed: [1, 2]
  tables:
    - {rows: tamper_answer, cols: seed, metric: strategy_share.tamper_answer}
"""
SECRET = "sk-live-5f2e8c1d9a7b4e3f2a1c0d9e8f7a6b5c"


def _figures(workspace) -> dict[str, list]:
    index = Index(workspace.index_db, create=False)
    try:
        return {r.run_id: sorted(index.figures_of_run(r.run_id)) for r in index.runs()}
    finally:
        index.close()


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    root = tmp_path_factory.mktemp("publish")
    mp = pytest.MonkeyPatch()
    try:
        home = fresh_workspace(template_dir(tmp_path_factory), root / "home-a")
        mp.setenv("COMPASS_HOME", str(home.root))
        mp.setenv("OPENAI_API_KEY", SECRET)
        recipe = root / "pub.yaml"
        recipe.write_text(RECIPE, encoding="utf-8")
        run_sweep(recipe, root / "work", [], command="compass sweep pub.yaml", log=lambda _: None)
        index = Index(home.index_db, create=False)
        first_pairs = next(r for r in index.runs() if r.stage == "pairs")
        index.close()
        assert runs_main(["note", first_pairs.run_id[:8], f"捨てた tamper_answer の実験 key {SECRET}"]) == 0
        assert runs_main(["publish", "--out", str(root / "site"), "--title", "pub runs"]) == 0
        yield root, home, first_pairs.run_id
    finally:
        mp.undo()


def test_export_is_complete_loadable_and_secret_free(published):
    root, home, _ = published
    site = root / "site"
    lines = (site / "runs.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(_figures(home)) == 6  # sources, distill, 4 pairs
    import datasets

    table = datasets.load_dataset("parquet", data_files=str(site / "runs.parquet"), split="train")
    assert sorted(table["run_id"]) == sorted(json.loads(line)["run_id"] for line in lines)
    assert all(json.loads(c) for c in table["config"])
    assert any((site / "artifacts").iterdir())  # small files by sha256
    for path in site.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_import_round_trip_keeps_every_run_and_figure(published, tmp_path_factory, monkeypatch, capsys):
    root, home, noted = published
    other = fresh_workspace(template_dir(tmp_path_factory), tmp_path_factory.mktemp("b") / "home-b")
    monkeypatch.setenv("COMPASS_HOME", str(other.root))
    assert runs_main(["import", str(root / "site"), "--origin", "lab-a"]) == 0
    assert "imported 6 runs" in capsys.readouterr().out
    assert _figures(other) == _figures(home)
    assert runs_main(["import", str(root / "site"), "--origin", "lab-a"]) == 0
    assert "imported 0 runs" in capsys.readouterr().out  # idempotent

    assert runs_main(["list", "--stage", "pairs"]) == 0
    assert capsys.readouterr().out.count("[from lab-a]") == 4
    assert runs_main(["search", "捨てた実験", "--mode", "text", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["run_id"] == noted
    assert runs_main(["table", "--sweep", "pub"]) == 0
    out = capsys.readouterr().out
    assert "tamper_answer \\ seed" in out and out.count("compass runs reproduce") == 4
    assert runs_main(["leaderboard", "--metric", "strategy_share.tamper_answer", "--format", "json"]) == 0
    board = json.loads(capsys.readouterr().out)
    assert len(board) == 4 and board[0]["strategy_share.tamper_answer"] > board[-1]["strategy_share.tamper_answer"] == 0
    with pytest.raises(CompassError, match="was imported from lab-a"):
        runs_main(["reproduce", noted[:8]])
    assert runs_main(["check"]) == 0


def test_site_search_and_ablation_table_in_headless_chromium(published, tmp_path):
    root, _home, _ = published
    url = (root / "site" / "index.html").as_uri()
    everything = dump_dom(url, tmp_path / "p1")
    assert len(re.findall(r'<tr class="board-row"', everything)) == 6
    assert 'table class="ablation"' in everything and "tamper_answer \\ seed" in everything
    # the search box's filter, driven by the URL hash the page keeps in sync with it
    filtered = dump_dom(url + "#q=tamper_answer%3D0.33%20pairs", tmp_path / "p2")
    assert len(re.findall(r'<tr class="board-row"', filtered)) == 2 and "2 of 6 runs" in filtered
    by_stage = dump_dom(url + "#stage=pairs", tmp_path / "p3")
    assert len(re.findall(r'<tr class="board-row"', by_stage)) == 4 and "4 of 6 runs" in by_stage
