"""A stage that succeeds but whose recording into the ledger fails (here: the store cannot take the outputs) does
not leave its live MLflow run RUNNING: it ends FAILED with the error. The manifest stays, so the rerun is cached
and records the run, FINISHED."""
from __future__ import annotations

import shutil

from cli_cases import ledger_run_count, run_cli

from compass.ledger.tracking import tracker_for
from compass.ledger.workspace import Workspace
from compass.manifest import read_manifest


def mlflow_runs_for(out) -> list:
    tracker = tracker_for(Workspace.current())
    return tracker.client.search_runs(tracker.experiment_ids(),
                                      filter_string=f"tags.`compass.out_dir` = '{out.resolve()}'")


def test_a_failed_recording_ends_the_live_run_failed_and_the_rerun_records_it(tmp_path, capsys):
    out = tmp_path / "fx"
    argv = ["pdf-fixtures", "--n-docs", "1", "--min-extra-pages", "0", "--max-extra-pages", "0", "--seed", "11",
            "--out", out]
    store = Workspace.current().store_dir
    store.mkdir(parents=True, exist_ok=True)
    tmp = store / "tmp"
    if tmp.is_dir():
        tmp.rename(store / "tmp.aside")
    tmp.write_text("not a directory: new blobs cannot be staged here")
    runs = ledger_run_count()
    try:
        failed = run_cli(argv, capsys)
    finally:
        tmp.unlink()
        if (store / "tmp.aside").is_dir():
            (store / "tmp.aside").rename(tmp)
    assert failed.code != 0 and "error:" in failed.err
    assert read_manifest(out) is not None and ledger_run_count() == runs  # the stage finished; the ledger has nothing
    [live] = mlflow_runs_for(out)
    assert live.info.status == "FAILED"
    assert live.data.tags["compass.error"].startswith("recording failed: ")
    assert str(tmp) in live.data.tags["compass.error"]

    again = run_cli(argv, capsys)
    assert again.code == 0, again.err
    assert ledger_run_count() == runs + 1
    statuses = sorted(r.info.status for r in mlflow_runs_for(out))
    assert statuses == ["FAILED", "FINISHED"]
    assert run_cli(["runs", "check"], capsys).code == 0
    shutil.rmtree(out)
