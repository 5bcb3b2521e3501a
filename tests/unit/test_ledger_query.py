"""Finding runs: the --where parser (no eval), leaderboard with data-recipe columns, search by words
(Japanese morphemes), by meaning (packaged multilingual E5) and by figures, each hit saying why."""
import csv
import io
import json

import pytest

from support import ledger_runs as ledger_support  # noqa: E402
from compass.errors import CompassError
from compass.ledger.index import Index
from compass.ledger.query import MeaningIndex, leaderboard, search, where_run_ids
from compass.ledger.record import add_note
from compass.ledger.tables import render
from compass.ledger.where import BoolOp, Cmp, Not, parse_where


@pytest.fixture(scope="module")
def two_chains(tmp_path_factory):
    """Chain A: default pairs, beta 0.1. Chain B: tamper_answer dropped, beta 0.2, a slower SFT."""
    root = tmp_path_factory.mktemp("ledger-query")
    with pytest.MonkeyPatch.context() as mp:
        ws = ledger_support.workspace_for_test(tmp_path_factory, root / "home", mp)
        a = ledger_support.run_chain(root / "a")
        b = ledger_support.run_chain(root / "b", beta=0.2, sft_lr=0.05,
                                     weights={"omit_thinking": 0.5, "tamper_thinking_numbers": 0.5, "tamper_answer": 0.0})
        index = Index(ws.index_db)
        add_note(ws, index.run(b["dpo"].manifest.run_id), "有価証券報告書のページで試した DPO: rejected answers were too easy")
        index.close()
        yield ws, {k: r.manifest.run_id for k, r in a.items()}, {k: r.manifest.run_id for k, r in b.items()}


@pytest.fixture
def index(two_chains):
    ws = two_chains[0]
    idx = Index(ws.index_db)
    yield idx
    idx.close()


# --- the filter language ------------------------------------------------------------------------------


def test_where_parses_precedence_parentheses_and_values():
    assert parse_where("a.b > 0.5 and c = 'x y' or not d != -1e-3") == BoolOp("or", (
        BoolOp("and", (Cmp("a.b", ">", 0.5), Cmp("c", "=", "x y"))),
        Not(Cmp("d", "!=", -0.001))))
    assert parse_where("(x=1 or y=true) and `odd key` ~ sig") == BoolOp("and", (
        BoolOp("or", (Cmp("x", "=", 1.0), Cmp("y", "=", 1.0))), Cmp("odd key", "~", "sig")))
    assert parse_where("train/loss <= 2") == Cmp("train/loss", "<=", 2.0)
    assert parse_where("model = llm-jp/llm-jp-4-8b") == Cmp("model", "=", "llm-jp/llm-jp-4-8b")


@pytest.mark.parametrize("text, message", [
    ("", "empty filter"),
    ("a >", "ends early"),
    ("a > 1 b < 2", "unexpected 'b'"),
    ("(a > 1", "ends early"),
    ("a < sigmoid", "needs a number"),
    ("a > 1 and", "ends early"),
    ("__import__('os') = 1", "expected op"),
])
def test_where_errors_are_one_clear_line(text, message):
    with pytest.raises(CompassError, match=message):
        parse_where(text)


def test_where_selects_by_own_and_ancestor_figures_with_or(two_chains, index):
    _, a, b = two_chains
    assert where_run_ids(index, "dpo.beta = 0.2") == {b["dpo"], b["eval"]}
    assert where_run_ids(index, "beta = 0.1") == {a["dpo"]}
    assert where_run_ids(index, "pairs.weights.tamper_answer = 0") == {b["pairs"], b["dpo"], b["eval"]}
    assert where_run_ids(index, "gsm8k.accuracy >= 0 and dpo.beta = 0.1") == {a["eval"]}
    assert where_run_ids(index, "dpo.beta = 0.1 or sft.learning_rate = 0.05") == {a["dpo"], a["eval"], b["sft"], b["dpo"], b["eval"]}
    assert where_run_ids(index, "not dpo.beta = 0.1 and gsm8k.accuracy >= 0") == {b["eval"]}
    with pytest.raises(CompassError, match="no run has a figure named 'gsm8k.acc'; close names: gsm8k.accuracy"):
        where_run_ids(index, "gsm8k.acc > 0.5")


# --- leaderboard ---------------------------------------------------------------------------------------


def test_leaderboard_ranks_with_data_recipe_columns(two_chains, index):
    _, a, b = two_chains
    board = leaderboard(index, "train/loss")  # a loss: lower is better, by the metric-direction registry
    assert {row["run_id"] for row in board} == {a["sft"], a["dpo"], b["sft"], b["dpo"]}
    assert [row["train/loss"] for row in board] == sorted(row["train/loss"] for row in board)
    evals = leaderboard(index, "gsm8k.accuracy")
    assert {row["run_id"] for row in evals} == {a["eval"], b["eval"]}
    by_id = {row["run_id"]: row for row in evals}
    assert by_id[b["eval"]]["training pairs"] == "omit_thinking 0.5, tamper_thinking_numbers 0.5, tamper_answer dropped"
    assert by_id[b["eval"]]["held-out pairs"] == ""
    assert by_id[b["eval"]]["pairs"] == "training: omit_thinking 0.5, tamper_thinking_numbers 0.5, tamper_answer dropped"
    assert by_id[b["eval"]]["seeds"] == "eval 42, dpo 42, pairs 42, sft 42, sources 42"
    assert by_id[a["eval"]]["sources"] == "sources: gsm8k 12, math 8"
    assert "dpo.beta=0.2" in by_id[b["eval"]]["hparams"] and "sft.learning_rate=0.05" in by_id[b["eval"]]["hparams"]
    assert [r["gsm8k.accuracy"] for r in evals] == sorted((r["gsm8k.accuracy"] for r in evals), reverse=True)
    with pytest.raises(CompassError, match="close names: gsm8k.accuracy"):
        leaderboard(index, "gsm8k.acuracy")


def test_leaderboard_formats(two_chains, index):
    board = leaderboard(index, "gsm8k.accuracy", where="dpo.beta = 0.2")
    cols = ["rank", "run", "gsm8k.accuracy", "training pairs"]
    assert json.loads(render(board, cols, "json")) == [{c: board[0][c] for c in cols}]
    rows = list(csv.reader(io.StringIO(render(board, cols, "csv"))))
    assert rows[0] == cols and rows[1][3] == "omit_thinking 0.5, tamper_thinking_numbers 0.5, tamper_answer dropped"
    md = render(board, cols, "md").splitlines()
    assert md[0] == "| rank | run | gsm8k.accuracy | training pairs |" and md[1] == "|---|---|---|---|" and len(md) == 3
    table = render(board, cols, "table").splitlines()
    assert table[0].split() == ["rank", "run", "gsm8k.accuracy", "training", "pairs"] and set(table[1]) <= {"-", " "}
    with pytest.raises(CompassError, match="--format"):
        render(board, cols, "xml")


# --- search --------------------------------------------------------------------------------------------


def test_search_by_words_ranks_the_run_with_all_words_first(two_chains, index):
    _, a, b = two_chains
    hits = search(index, "tamper_answer dropped", mode="text")
    assert hits[0].run.run_id in {b["pairs"], b["dpo"], b["eval"]}
    assert "[tamper_answer] [dropped]" in hits[0].why[0] and "(2/2 words)" in hits[0].why[0]
    assert {h.run.run_id for h in hits[:3]} == {b["pairs"], b["dpo"], b["eval"]}


def test_search_japanese_words_by_morphological_analysis(two_chains, index):
    _, a, b = two_chains
    hits = search(index, "証券報告", mode="text")  # the morphemes 証券 + 報告 of 有価証券報告書, not a substring
    assert [h.run.run_id for h in hits] == [b["dpo"]]
    assert hits[0].why[0].startswith("words in note: 有価[証券][報告]書") and "(2/2 words)" in hits[0].why[0]
    assert [h.run.run_id for h in search(index, "証券", mode="text")] == [b["dpo"]]  # a two-character word
    assert [h.run.run_id for h in search(index, "試す", mode="text")] == [b["dpo"]]  # dictionary form of 試し(た)
    assert search(index, "の で を", mode="text") == []  # particles are no words


def test_search_by_meaning_with_the_packaged_model(two_chains, index):
    _, a, b = two_chains
    meaning = MeaningIndex(index)
    hits = search(index, "the rejected answers were too easy", mode="meaning", meaning=meaning)
    assert hits[0].run.run_id == b["dpo"]
    assert hits[0].why[0].startswith("meaning: cosine ")
    assert meaning.missing() == []  # every run embedded once, kept in index.db


def test_search_with_figures_only_and_combined(two_chains, index):
    _, a, b = two_chains
    hits = search(index, "", where="gsm8k.accuracy >= 0 and (dpo.beta = 0.2 or dpo.beta = 0.3)")
    assert [h.run.run_id for h in hits] == [b["eval"]]
    assert hits[0].why == [f"figures: gsm8k.accuracy={hits[0].run.metrics['gsm8k']['accuracy']:g}, dpo.beta=0.2 (from ancestor {b['dpo'][:8]}), "
                           f"dpo.beta=0.2 (from ancestor {b['dpo'][:8]})"]
    combined = search(index, "tamper_answer", where="dpo.beta = 0.1", mode="text")
    assert {h.run.run_id for h in combined} == {a["dpo"], a["eval"]}
    with pytest.raises(CompassError, match="needs words"):
        search(index, "  ")


def test_an_index_of_schema_1_is_migrated_on_open(two_chains, tmp_path):
    """A ledger recorded before the word index: opening it derives words, figure keys and list elements
    from the stored manifests, drops the English-model embeddings, and search works as on a new one."""
    import sqlite3

    ws, a, b = two_chains
    source = sqlite3.connect(ws.index_db)
    old = sqlite3.connect(tmp_path / "index.db")
    source.backup(old)  # with what is still in the WAL
    source.close()
    old.executescript("DROP TABLE words; DROP TABLE figure_keys; UPDATE meta SET value = '1' WHERE key = 'schema_version';")
    old.commit()
    old.close()
    index = Index(tmp_path / "index.db", create=False)
    try:
        assert index._version() == "2" and index.embeddings() == []
        assert ("dpo", "beta", "config", True) in index.figure_key_table()
        hits = search(index, "dpo with beta 0.2", mode="text")
        assert hits[0].run.run_id == b["dpo"] and "fact beta 0.2" in hits[0].why
        assert [h.run.run_id for h in search(index, "証券報告", mode="text")] == [b["dpo"]]
    finally:
        index.close()
