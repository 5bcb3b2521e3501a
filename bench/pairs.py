"""Benchmark: `compass pairs` throughput and peak memory at 10k vs 1M records (it must stream in constant memory).

Each measurement runs in a fresh Python process (so peak RSS is that run's own), which imports compass, notes
its RSS, runs the stage on a synthetic Trace file, and reports records/s and the RSS growth during the run.
Beside it, a load-everything baseline (read all records into a list, pair them, write them) shows what the
memory would do without streaming; it runs only up to --baseline-max records to spare the shared machine.

    .venv/bin/python bench/pairs.py                      # 10k and 1M records
    .venv/bin/python bench/pairs.py --sizes 10000 100000 --baseline-max 100000
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests"  # test support (support.*) lives there, not in the package
sys.path.insert(0, str(TESTS))
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH", "")]))

CHILD = r"""
import json, sys, time
def vm_hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
from pathlib import Path
import psutil
mode, traces, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
from compass.io import iter_jsonl, write_jsonl
from compass.records import Trace
from compass.data.pairs import make_pair, normalized_weights
from compass.stagekit import run_stage
from compass.stages import pairs as stage
proc = psutil.Process()
# peak = VmHWM of this process after resetting it here (ru_maxrss would also count the forked parent's pages)
with open("/proc/self/clear_refs", "w") as fh:
    fh.write("5")
rss0 = proc.memory_info().rss
t0 = time.perf_counter()
if mode == "stream":
    metrics = run_stage(stage, stage.Config(), {"traces": traces}, out)
    n = metrics["traces"]
else:  # baseline: everything in memory
    weights = normalized_weights(stage.Config().weights.model_dump())
    records = list(iter_jsonl(traces, Trace))
    outcomes = [make_pair(t, seed=42, weights=weights, require_tags=True, require_verified=True) for t in records]
    write_jsonl(out / "pairs.jsonl", (o.pair for o in outcomes if o.pair is not None))
    n = len(records)
wall = time.perf_counter() - t0
peak = vm_hwm()
print(json.dumps({"n": n, "wall_s": wall, "rss_at_start": rss0, "peak_rss": peak}))
"""


def write_traces(path: Path, n: int) -> None:
    from compass.io import write_jsonl
    from support.traces import synthetic_trace

    write_jsonl(path, (synthetic_trace(i) for i in range(n)))


def measure(mode: str, traces: Path, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    env_cmd = [sys.executable, "-c", CHILD, mode, str(traces), str(out)]
    proc = subprocess.run(env_cmd, capture_output=True, text=True, env={"TQDM_DISABLE": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": os.environ["PYTHONPATH"]})
    if proc.returncode != 0:
        raise SystemExit(f"{mode} run failed:\n{proc.stderr}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["rec_per_s"] = result["n"] / result["wall_s"]
    result["growth_mib"] = (result["peak_rss"] - result["rss_at_start"]) / 2**20
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 1_000_000])
    parser.add_argument("--baseline-max", type=int, default=100_000, help="largest size the load-everything baseline runs at")
    parser.add_argument("--workdir", type=Path, help="keep the synthetic inputs here (default: a temp dir)")
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-pairs-"))
    sizes = sorted(set(args.sizes) | {s for s in [args.baseline_max] if s <= max(args.sizes)})
    rows = {}
    for n in sizes:
        traces = work / f"traces-{n}.jsonl"
        if not traces.exists():
            t0 = time.perf_counter()
            write_traces(traces, n)
            print(f"wrote {n:,} synthetic traces ({traces.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - t0:.0f}s", flush=True)
        rows[("stream", n)] = measure("stream", traces, work / f"out-stream-{n}")
        if n <= args.baseline_max:
            rows[("load-all", n)] = measure("load-all", traces, work / f"out-load-{n}")
    print()
    print(f"{'mode':<9} {'records':>10} {'records/s':>10} {'peak RSS growth MiB':>20}")
    for (mode, n), r in rows.items():
        print(f"{mode:<9} {n:>10,} {r['rec_per_s']:>10,.0f} {r['growth_mib']:>20.1f}")
    small, large = min(args.sizes), max(args.sizes)
    s, l = rows[("stream", small)], rows[("stream", large)]
    print()
    print(f"ours (streaming), {large:,} vs {small:,} records: throughput ratio {l['rec_per_s'] / s['rec_per_s']:.2f}, "
          f"peak RSS growth ratio {l['growth_mib'] / max(s['growth_mib'], 0.1):.2f} "
          f"({s['growth_mib']:.1f} -> {l['growth_mib']:.1f} MiB for {large // small}x the records)")
    base_sizes = [n for (mode, n) in rows if mode == "load-all"]
    if len(base_sizes) >= 1:
        n = max(base_sizes)
        b, o = rows[("load-all", n)], rows[("stream", n)]
        print(f"at {n:,} records: load-all baseline grows {b['growth_mib']:.0f} MiB vs ours {o['growth_mib']:.1f} MiB "
              f"(memory ratio ours/baseline {o['growth_mib'] / b['growth_mib']:.3f}); throughput ratio ours/baseline "
              f"{o['rec_per_s'] / b['rec_per_s']:.2f}")


if __name__ == "__main__":
    main()
