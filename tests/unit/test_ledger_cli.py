"""`compass runs ...` end to end in-process: every verb's help has an example; list, show, note, lineage,
diff, leaderboard, reproduce (exact bytes for data stages, metrics for training, refusal on code change),
report and check."""
import json
import re

import pytest

from support import ledger_runs as ledger_support  # noqa: E402
from compass.cli import main as compass_main
from compass.commands.runs import EXAMPLES, main
from compass.ledger.index import Index


@pytest.fixture
def chain(tmp_path, tmp_path_factory, monkeypatch):
    ws = ledger_support.workspace_for_test(tmp_path_factory, tmp_path / "home", monkeypatch)
    results = ledger_support.run_chain(tmp_path / "work")
    return ws, {k: r.manifest.run_id for k, r in results.items()}


@pytest.mark.parametrize("verb", sorted(EXAMPLES))
def test_every_verb_has_help_with_an_example(verb, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([verb, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "example:" in out and EXAMPLES[verb] in out


def test_compass_runs_delegates_and_errors_are_one_line(chain, capsys):
    assert compass_main(["runs", "show", "zzzz"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no run 'zzzz' in the ledger") and err.count("\n") == 1
    assert compass_main(["runs", "show", "ab"]) == 2
    assert "too short" in capsys.readouterr().err
    assert compass_main(["runs", "list", "--where", "gsm8k.accuracy >"]) == 2
    assert "ends early" in capsys.readouterr().err


def test_list_show_note_lineage(chain, capsys):
    ws, ids = chain
    assert main(["list"]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing[0].split()[:4] == ["run", "recorded", "stage", "name"]
    assert [line.split()[3] for line in listing[2:]] == ["eval", "dpo", "sft", "pairs", "sources"]
    assert main(["list", "--stage", "dpo", "--format", "json"]) == 0
    assert [r["run_id"] for r in json.loads(capsys.readouterr().out)] == [ids["dpo"]]

    assert main(["note", ids["dpo"][:6], "beta sweep baseline"]) == 0
    capsys.readouterr()
    assert main(["show", ids["dpo"][:8]]) == 0
    show = capsys.readouterr().out
    assert f"run       {ids['dpo']}" in show and "note      beta sweep baseline" in show
    assert re.search(r"out\s+model/weights\.json\s+\d+ B\s+[0-9a-f]{64}\s+ok", show)
    assert "train/loss: 8 steps" in show
    assert f"model <- sft {ids['sft'][:8]}" in show and f"pairs <- pairs {ids['pairs'][:8]}" in show
    assert f"eval {ids['eval'][:8]}" in show.split("children")[1]

    assert main(["lineage", ids["eval"]]) == 0
    tree = capsys.readouterr().out.splitlines()
    assert tree[0].startswith(f"eval {ids['eval'][:8]}")
    assert tree[1].startswith(f"└─ model <- dpo {ids['dpo'][:8]}")
    assert tree[2].startswith(f"   ├─ model <- sft {ids['sft'][:8]}")
    assert tree[3].startswith(f"   │  └─ data <- sources {ids['sources'][:8]}")
    assert tree[4].startswith(f"   └─ pairs <- pairs {ids['pairs'][:8]}")
    assert tree[5].startswith(f"      └─ problems <- sources {ids['sources'][:8]}") and tree[5].endswith("(shown above)")


def test_diff_names_config_data_and_metric_changes(chain, tmp_path, capsys):
    ws, ids = chain
    from compass.runner import execute_stage

    other = execute_stage("dpo", ledger_support.DpoConfig(beta=0.3),
                          {"model": tmp_path / "work" / "sft" / "model", "pairs": tmp_path / "work" / "pairs" / "pairs.jsonl"},
                          tmp_path / "dpo-b", name="dpo")
    assert main(["diff", ids["dpo"], other.manifest.run_id]) == 0
    out = capsys.readouterr().out.splitlines()
    # what changed leads: the one config change and the one output file, before any metric
    assert out[3:6] == ["changed", "  config beta: 0.1 -> 0.3", "  data out: 1 file(s) differ, 2 identical"]
    assert out[6] == "metrics" and "  rewards.margins: 0.2 -> 0.6  (+0.4)" in out
    assert out[-1] == "same: data in: 3 file(s) identical"
    assert any(line.startswith("  data out log_history.json: ") for line in out)  # beta changes only the rewards


def test_leaderboard_markdown(chain, capsys):
    assert main(["leaderboard", "--metric", "gsm8k.accuracy", "--format", "md"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| rank | run | name | stage | gsm8k.accuracy | sources | training pairs | seeds | hparams | commit | recorded |"
    assert lines[2].startswith("| 1 | ") and "omit_thinking 0.34" in lines[2]
    assert "| sources 42, pairs 42, sft 42, dpo 42, eval 42 |" in lines[2] or "eval 42" in lines[2]


def test_reproduce_data_stage_exactly_and_training_by_metrics(chain, tmp_path, capsys):
    ws, ids = chain
    assert main(["reproduce", ids["pairs"][:8], "--out", str(tmp_path / "r1")]) == 0
    out = capsys.readouterr().out
    assert "outputs: 1/1 identical (sha256)" in out and out.rstrip().endswith("REPRODUCED")
    assert (tmp_path / "r1" / "inputs" / "problems" / "problems.jsonl").is_file()  # the input, from the store
    index = Index(ws.index_db)
    new = index.runs("r.reproduces = ?", (ids["pairs"],))
    assert len(new) == 1 and new[0].out_dir == str(tmp_path / "r1" / "out")
    assert main(["reproduce", ids["dpo"][:8], "--out", str(tmp_path / "r2")]) == 0  # two inputs, one a directory
    out = capsys.readouterr().out
    assert "metric train_loss: " in out and "OUTSIDE" not in out and out.rstrip().endswith("REPRODUCED")
    # a run recorded at another commit: refused, unless allowed (and then said)
    with index.transaction() as db:
        db.execute("UPDATE runs SET code_commit = ? WHERE run_id = ?", ("0" * 40, ids["sources"]))
    assert compass_main(["runs", "reproduce", ids["sources"], "--out", str(tmp_path / "r3")]) == 2
    assert "was made at commit 0000000000000000000000000000000000000000" in capsys.readouterr().err
    assert main(["reproduce", ids["sources"], "--out", str(tmp_path / "r4"), "--allow-code-change"]) == 0
    out = capsys.readouterr().out
    assert "code: DIFFERENT from the recorded commit 0000000" in out and out.rstrip().endswith("REPRODUCED")
    index.close()


def test_reproduce_reports_a_mismatch(chain, tmp_path, capsys):
    ws, ids = chain
    # the same data stage with another seed makes other bytes: NOT REPRODUCED, exit 1
    assert main(["reproduce", ids["sources"], "--out", str(tmp_path / "r"), "--set", "seed=7"]) == 1
    out = capsys.readouterr().out
    assert "outputs: 0/1 identical" in out and "differs: problems.jsonl" in out and out.rstrip().endswith("NOT REPRODUCED")


def test_check_finds_damage_and_repair_restores_from_the_run_directory(chain, tmp_path, capsys):
    ws, ids = chain
    assert main(["check"]) == 0
    assert capsys.readouterr().out.rstrip().endswith("OK")
    from compass.io import sha256_file
    from compass.ledger.store import ContentStore

    scores = tmp_path / "work" / "eval" / "scores.jsonl"
    sha = sha256_file(scores)
    blob = ContentStore(ws.store_dir).path(sha)
    blob.unlink()  # lose the stored copy; the run directory still has the bytes
    assert main(["check"]) == 1
    assert f"PROBLEM: store: blob {sha[:12]} is missing" in capsys.readouterr().out
    assert main(["check", "--repair"]) == 0
    out = capsys.readouterr().out
    assert f"repaired: restored blob {sha[:12]} from {scores}" in out and out.rstrip().endswith("OK")


def test_demo_ends_on_the_leaderboard_of_its_own_runs(chain, capsys):
    from compass.commands.demo_tables import print_demo_leaderboard

    ws, ids = chain
    print_demo_leaderboard(list(ids.values()), prefer=("problems.accuracy", "gsm8k.accuracy"))
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == f"leaderboard (gsm8k.accuracy; ledger {ws.root}):"
    assert lines[1].split() == ["rank", "run", "name", "gsm8k.accuracy", "training", "pairs", "seeds", "hparams"]
    assert lines[3].startswith(f"1     {ids['eval'][:8]}  eval")
    assert lines[-1] == f"more: compass runs leaderboard --metric gsm8k.accuracy | compass runs report | compass runs lineage {ids['eval'][:8]}"
