"""`compass demo` end to end (the README's first command), then again: the second run is all cached."""
import os
import subprocess
import sys
import time

from compass.config import load_recipe
from compass.demo import packaged_recipe
from compass.manifest import read_manifest


def run_demo(workdir, env):
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "compass.cli", "demo", "--workdir", str(workdir)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout, time.perf_counter() - t0


def test_demo_runs_offline_then_is_all_cached(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "COMPASS_HOME": str(tmp_path / "ledger")}
    workdir = tmp_path / "demo"
    first, first_s = run_demo(workdir, env)
    recipe, _ = load_recipe(packaged_recipe("tiny"))
    names = [entry.name for entry in recipe.stages]
    for name in names:
        manifest = read_manifest(workdir / name)
        assert manifest is not None and manifest.status == "complete", name
    assert f"results in {workdir}" in first
    # the closing summary: losses, DPO's held-out reward accuracy, the Phase 0/1/2 table, <cot> on/off, the leaderboard
    summary = first[first.index("demo finished"):]
    for expected in ("sft      loss", "dpo held-out pairs (", "Phase 0 (base)", "Phase 2 (SFT+DPO)",
                     "format_valid_rate", "<cot> on", "<cot> off", "leaderboard (problems.accuracy"):
        assert expected in summary, expected
    # a benchmark's two protocols side by side: lm-eval's figure (reference) beside compass's, item counts equal
    table = summary[summary.index("a benchmark's two protocols"):]
    header = next(line for line in table.splitlines() if line.strip().startswith("metric"))
    assert header.split()[1:] == ["Phase", "2", "(SFT+DPO)", "reference", "Phase", "2", "(SFT+DPO)", "compass"]
    n_row = next(line for line in table.splitlines() if line.strip().startswith("n "))
    assert n_row.split()[1] == n_row.split()[2] != "-"
    protocols = read_manifest(workdir / "eval_protocols").metrics
    assert protocols["cma_basics.reference.vdefault.accuracy"] == protocols["cma_basics.compass.accuracy"]
    assert protocols["cma_basics.reference.prompt_version"] in ("default", "1.0-0.1")
    assert first_s < 300, f"demo took {first_s:.0f}s"

    second, _ = run_demo(workdir, env)
    stage_lines = [line for line in second.splitlines() if line.startswith("[") and "] " in line and " -> " in line]
    assert len(stage_lines) == len(names)
    assert all(": cached -> " in line for line in stage_lines), stage_lines
    assert "eval_protocols (eval, outside the recipe): cached -> " in second
