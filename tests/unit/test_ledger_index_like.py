"""Run references and substring scans are literal text to the index: `%` and `_` in them match only themselves
(SQL LIKE would take them as wildcards, so `runs show ab_%` resolved to whatever run started with "ab")."""
from __future__ import annotations

import json

import pytest

from compass.errors import CompassError
from compass.ledger.index import Index

RUN_A = "ab12" + "0" * 28
RUN_B = "ab12" + "f" * 28


@pytest.fixture
def index(tmp_path):
    index = Index(tmp_path / "index.db")
    for run_id in (RUN_A, RUN_B):
        index.db.execute(
            "INSERT INTO runs (run_id, state, tracking_uri, name, stage, started_at, recorded_at, wall_time_s, "
            "config_hash, out_dir, manifest) VALUES (?, 'complete', 'sqlite:///x', ?, 'echo', 't', 't', 0, 'h', '/o', ?)",
            (run_id, f"run {run_id[:4]}", json.dumps({})))
    index.db.commit()
    yield index
    index.close()


def test_a_full_or_unique_prefix_resolves(index):
    assert index.resolve(RUN_A).run_id == RUN_A
    assert index.resolve("ab120").run_id == RUN_A and index.resolve("AB12F").run_id == RUN_B
    with pytest.raises(CompassError, match="'ab12' is ambiguous"):
        index.resolve("ab12")


@pytest.mark.parametrize("ref", ["ab1_", "ab1%", "ab12%", "a_12", "%%%%", "____", "ab12_", "ab12_0"])
def test_wildcards_in_a_reference_match_nothing(index, ref):
    with pytest.raises(CompassError, match=f"no run '{ref}' in the ledger"):
        index.resolve(ref)


def test_substring_scan_takes_percent_and_underscore_literally(index):
    rows = index.db.execute("SELECT name FROM pragma_table_info('fulltext')").fetchall()
    assert {r[0] for r in rows} >= {"run_id", "name", "note", "body"}
    index.db.execute("INSERT INTO fulltext (run_id, name, note, body) VALUES (?, 'lr 5%', '', 'a_b')", (RUN_A,))
    index.db.execute("INSERT INTO fulltext (run_id, name, note, body) VALUES (?, 'lr 50', '', 'axb')", (RUN_B,))
    index.db.commit()
    assert index.fulltext_containing("5%", limit=10) == [RUN_A]
    assert index.fulltext_containing("a_b", limit=10) == [RUN_A]
    assert sorted(index.fulltext_containing("lr 5", limit=10)) == sorted([RUN_A, RUN_B])
