"""The light commands as a user runs them: each a fresh process, N rounds, against a bare interpreter.

    python bench/light_commands.py                           # the 10k-run ledger of bench/ledger_search.py
    python bench/light_commands.py --runs 2000 --home bench-out/ledger-2k --repeat 10

Goals (issue 17.5): `compass --help`, `runs list|show|diff|lineage` and text search < 0.5 s, `runs note`
< 2 s (issue 15.4: search p95 < 1 s for text, < 2 s with meaning, at 10k runs). The machine these run on is
shared, so beside wall time (p50/p95 over the rounds) each command's CPU time (user + sys of the process,
p50) and the time its imports take (python -X importtime: the sum over top-level imports, least of 3 extra runs) are
printed; those two barely move with the load, wall time does. The commands take turns round by round, so a
burst of load hits all of them alike; the load average before and after is printed.

Baselines in the same run: `python -c pass` (interpreter start) and `python -c 'import compass'`; the last
column is each command's p50 over the bare interpreter's p50.

Bytecode: an installed compass has compiled .pyc files (pip writes them, and an editable checkout writes
__pycache__ on first use). Where PYTHONDONTWRITEBYTECODE is set (some sandboxes), every start compiles
compass's sources again (text search: 0.24 vs 0.18 s of CPU, p50 of 12 alternating runs), so the commands here
run with it unset and a private PYTHONPYCACHEPREFIX under --home (nothing is written into the checkout);
--no-bytecode keeps the environment as it is.
"""
from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

IMPORT_LINE = re.compile(r"import time:\s+\d+ \|\s+(\d+) \| (\S.*)$")  # a top-level import (one space before its name)


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]


def timed(command: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """(wall s, CPU s of the child: user + sys, stdout) of one run; a failing command stops the bench."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()[-400:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), done.stdout


def import_ms(command: list[str], env: dict[str, str], runs: int = 3) -> float:
    """Milliseconds spent importing (sum of the top-level imports' cumulative times), the least of `runs` runs
    (importtime measures wall time, so a busy moment only ever adds)."""
    assert command[0] == sys.executable
    totals = []
    for _ in range(runs):
        done = subprocess.run([sys.executable, "-X", "importtime", *command[1:]], capture_output=True, text=True, env=env, check=True)
        totals.append(sum(int(m.group(1)) for line in done.stderr.splitlines() if (m := IMPORT_LINE.match(line))) / 1000)
    return min(totals)


def bench_ledger(home: Path, runs: int) -> tuple[str, str, str]:
    """(eval, its dpo parent, that dpo's sft parent) run ids of the ledger at `home`, built if missing."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from ledger_search import build

    from compass.ledger.index import Index

    if not (home / "index.db").is_file() or Index(home / "index.db").count() < runs:
        print(f"building a ledger of {runs} runs in {home} (once; bench/ledger_search.py reuses it)", flush=True)
        build(home, runs)
    index = Index(home / "index.db", create=False)
    try:
        run = index.runs("r.stage = 'eval'", limit=1)[0]
        dpo = next(p for p, _ in index.parents(run.run_id) if index.run(p).stage == "dpo")
        sft = next(p for p, _ in index.parents(dpo) if index.run(p).stage == "sft")
        return run.run_id, dpo, sft
    finally:
        index.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--home", type=Path, default=Path(tempfile.gettempdir()) / "compass-ledger-bench")
    parser.add_argument("--repeat", type=int, default=10, help="rounds (processes per command)")
    parser.add_argument("--no-bytecode", action="store_true", help="keep PYTHONDONTWRITEBYTECODE as the environment has it")
    args = parser.parse_args()

    home = args.home.resolve()
    eval_id, dpo_id, sft_id = bench_ledger(home, args.runs)
    env = {**os.environ, "COMPASS_HOME": str(home)}
    if not args.no_bytecode:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(home / "pycache")
    script = Path(sys.executable).with_name("compass")
    compass = [sys.executable, str(script)] if script.is_file() else [sys.executable, "-m", "compass.cli"]
    cases = [  # (label, command, goal s or None)
        ("python -c pass", [sys.executable, "-c", "pass"], None),
        ("python -c 'import compass'", [sys.executable, "-c", "import compass"], None),
        ("compass --help", [*compass, "--help"], 0.5),
        ("compass runs --help", [*compass, "runs", "--help"], 0.5),
        ("compass sft --help", [*compass, "sft", "--help"], None),
        ("runs list", [*compass, "runs", "list"], 0.5),
        ("runs show", [*compass, "runs", "show", dpo_id[:8]], 0.5),
        ("runs diff", [*compass, "runs", "diff", dpo_id[:8], sft_id[:8]], 0.5),
        ("runs lineage", [*compass, "runs", "lineage", eval_id[:8]], 0.5),
        ("runs search --mode text (en)", [*compass, "runs", "search", "--mode", "text", "dpo with beta 0.1 and lora_r 32"], 0.5),
        ("runs search --mode text (ja)", [*compass, "runs", "search", "--mode", "text", "学習率を下げたら損失が安定した"], 0.5),
        ("runs search (meaning)", [*compass, "runs", "search", "runs where the rejected answers were too easy"], 2.0),
        ("runs note", [*compass, "runs", "note", eval_id[:8], "bench note ROUND"], 2.0),
    ]
    for _, command, _ in cases:  # warm: page cache, bytecode
        timed([a.replace("ROUND", "warm") for a in command], env)
    load_before = os.getloadavg()
    walls: dict[str, list[float]] = {label: [] for label, _, _ in cases}
    cpus: dict[str, list[float]] = {label: [] for label, _, _ in cases}
    for round_ in range(args.repeat):
        for label, command, _ in cases:
            wall, cpu, _ = timed([a.replace("ROUND", str(round_)) for a in command], env)
            walls[label].append(wall)
            cpus[label].append(cpu)
    imports = {label: import_ms([a.replace("ROUND", "imports") for a in command], env) for label, command, _ in cases}
    load_after = os.getloadavg()

    bare50 = statistics.median(walls["python -c pass"])
    print(f"ledger {home}; {args.repeat} rounds; cores {os.cpu_count()}; load average (1/5/15 min) before "
          f"{' '.join(f'{x:.2f}' for x in load_before)}, after {' '.join(f'{x:.2f}' for x in load_after)}; "
          f"bytecode {'as the environment has it' if args.no_bytecode else 'cached'}\n")
    print(f"{'command':<31} {'p50 ms':>7} {'p95 ms':>7} {'CPU ms':>7} {'import ms':>9} {'goal ms':>7} {'p95/goal':>8} {'p50/bare':>8}")
    met = []
    for label, _, goal in cases:
        p50, p95 = percentiles(walls[label])
        cpu50 = statistics.median(cpus[label])
        goal_text = f"{goal * 1000:>7.0f} {p95 / goal:>8.2f}" if goal else f"{'':>7} {'':>8}"
        print(f"{label:<31} {p50 * 1000:>7.0f} {p95 * 1000:>7.0f} {cpu50 * 1000:>7.0f} {imports[label]:>9.0f} {goal_text} {p50 / bare50:>8.1f}")
        if goal:
            met.append((label, p95 < goal))
    missed = [label for label, ok in met if not ok]
    print(f"\np95 under its goal: {len(met) - len(missed)}/{len(met)}" + (f" (not: {', '.join(missed)})" if missed else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
