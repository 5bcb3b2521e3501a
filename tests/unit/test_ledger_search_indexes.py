"""The index paths that keep search fast at 10k runs (bench/ledger_search.py) give the same answers: an older
ledger is brought up to the covering indexes when opened, and a run's full-text row is found by its words
row's rowid only when that row really holds the run (else by the scan)."""
from __future__ import annotations

import sqlite3

import pytest

from compass.ledger.index import LOOKUP_INDEXES, SUPERSEDED_INDEXES, Index
from compass.ledger.query import search
from support import ledger_runs as ledger_support

QUERIES = ["tamper_answer 0.33", "dpo with beta 0.1", "eval of the model trained on pairs with tamper_answer 0.33",
           "dpo with the best reward accuracy", "sources gsm8k"]
NEW = {sql.split()[5] for sql in LOOKUP_INDEXES}


@pytest.fixture(scope="module")
def ledger(tmp_path_factory):
    root = tmp_path_factory.mktemp("indexes")
    with pytest.MonkeyPatch.context() as mp:
        ws = ledger_support.workspace_for_test(tmp_path_factory, root / "home", mp)
        results = ledger_support.run_chain(root / "work")
    return ws, {k: r.manifest.run_id for k, r in results.items()}


def _answers(path) -> dict[str, list[tuple[str, list[str]]]]:
    index = Index(path, create=False)
    try:
        return {q: [(h.run.run_id, h.why) for h in search(index, q, mode="text", limit=5)] for q in QUERIES}
    finally:
        index.close()


def _index_names(path) -> set[str]:
    db = sqlite3.connect(path)
    try:
        return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    finally:
        db.close()


def test_an_older_ledger_gets_the_covering_indexes_and_the_same_answers(ledger):
    ws, ids = ledger
    before = _answers(ws.index_db)
    assert any(before.values()) and ids["dpo"] in [r for r, _ in before["dpo with beta 0.1"]]
    assert NEW <= _index_names(ws.index_db) and not _index_names(ws.index_db) & set(SUPERSEDED_INDEXES)
    db = sqlite3.connect(ws.index_db)  # what a ledger made before them has
    for name in NEW:
        db.execute(f"DROP INDEX {name}")
    db.execute("CREATE INDEX figures_key_num ON figures(key, num)")
    db.execute("CREATE INDEX ancestry_ancestor ON ancestry(ancestor_id)")
    db.commit()
    db.close()
    assert not NEW & _index_names(ws.index_db)
    Index(ws.index_db, create=False).close()
    names = _index_names(ws.index_db)
    assert NEW <= names and not names & set(SUPERSEDED_INDEXES)
    assert _answers(ws.index_db) == before


def test_full_text_rows_by_rowid_only_when_the_row_holds_the_run(ledger):
    ws, ids = ledger
    index = Index(ws.index_db, create=False)
    try:
        runs = [ids["pairs"], ids["dpo"], ids["eval"]]
        scanned = index.fulltext_rows(runs)
        assert set(scanned) == set(runs) and all(scanned[r]["name"] for r in runs)
        rowids = {r: rowid for r, _, rowid in index.words_match('"stage"', limit=100)}
        assert set(runs) <= set(rowids)
        assert index.fulltext_rows(runs, rowids=rowids) == scanned
        # hints that point at other runs' rows (a ledger migrated from schema 1): each run still gets its own
        # text, and a row of a run not asked for is left out
        wrong = {ids["pairs"]: rowids[ids["dpo"]], ids["dpo"]: rowids[ids["sources"]], ids["eval"]: 10**9}
        assert index.fulltext_rows(runs, rowids=wrong) == scanned
        assert index.fulltext_rows([ids["pairs"]], rowids={ids["pairs"]: rowids[ids["sft"]]}) == {ids["pairs"]: scanned[ids["pairs"]]}
    finally:
        index.close()
