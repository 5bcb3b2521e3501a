"""Search latency at 10k runs: the ledger's search (FTS5 trigram, figure filters with lineage and OR,
MiniLM meaning) beside MLflow's own search_runs on the same runs, in one process.

    python bench/ledger_search.py                 # 10,000 runs (built once into --home, reused after)
    python bench/ledger_search.py --runs 2000 --home bench-out/ledger-2k

The runs are recorded through the real path (compass.ledger.record_stage_run: store, MLflow sqlite,
index), as chains sources -> pairs -> sft -> dpo -> eval with varied configs, notes and metrics.
Building 10k runs takes several minutes (MLflow writes dominate); the timings are of queries only.
Prints p50/p95 per query and the ratio MLflow / ledger where both can answer.
"""
from __future__ import annotations

import tempfile
import argparse
import hashlib
import os
import random
import statistics
import sys
import time
import uuid
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

STRATEGIES = ("omit_thinking", "tamper_thinking_numbers", "tamper_answer")
POOLS = ("gsm8k", "math", "svamp", "aqua_rat", "mgsm_ja", "orca_math")
NOTES = ("tamper_answer dropped: rejected answers were too easy", "有価証券報告書のページで試した", "baseline rerun on new shards",
         "lower lr after loss spikes", "long context, 4096 tokens", "")


def build(home: Path, runs: int, seed: int = 0) -> None:
    from compass.ledger import Workspace, record_stage_run
    from compass.ledger.index import Index
    from compass.ledger.record import add_note
    from compass.manifest import InputRecord, Manifest, code_version, now_iso

    os.environ["COMPASS_HOME"] = str(home)
    workspace = Workspace(home)
    rng = random.Random(seed)
    code = code_version()
    work = home.parent / f"{home.name}-work"
    chains = max(1, runs // 5)
    t0 = time.perf_counter()
    count = 0

    def stage(kind: str, name: str, config: dict, metrics: dict, inputs: dict[str, Path], out: Path, files: dict[str, bytes]) -> tuple[str, Path]:
        nonlocal count
        out.mkdir(parents=True, exist_ok=True)
        outputs = {}
        for rel, data in files.items():
            (out / rel).write_bytes(data)
            outputs[rel] = hashlib.sha256(data).hexdigest()
        manifest = Manifest(
            stage=kind, name=name, run_id=uuid.uuid4().hex, config={"seed": 42, **config},
            config_hash=hashlib.sha256(repr(config).encode()).hexdigest(), seed=42, code=code, versions={"python": "3.11"},
            inputs={port: InputRecord(path=str(path), files={path.name: hashlib.sha256(path.read_bytes()).hexdigest()})
                    for port, path in inputs.items()},
            outputs=outputs, started_at=now_iso(), wall_time_s=round(rng.uniform(1, 500), 2), metrics=metrics)
        record_stage_run(manifest, out, workspace=workspace)
        count += 1
        if count % 500 == 0:
            print(f"  recorded {count} runs ({(time.perf_counter() - t0) / count * 1000:.0f} ms/run)", flush=True)
        return manifest.run_id, out

    for c in range(chains):
        pools = {p: rng.choice((250, 1000, 7500, 12500)) for p in rng.sample(POOLS, 3)}
        weights = {s: rng.choice((0.0, 0.33, 0.5)) for s in STRATEGIES}
        weights["omit_thinking"] = weights["omit_thinking"] or 0.34
        lr, beta = rng.choice((1e-4, 2e-4, 5e-4)), rng.choice((0.05, 0.1, 0.2))
        root = work / f"c{c:05d}"
        _, src = stage("sources", "sources", {"pools": pools}, {"records": sum(pools.values()), "counts": pools}, {},
                       root / "sources", {"problems.jsonl": f"{c} {pools}".encode()})
        _, pairs = stage("pairs", "pairs", {"weights": weights, "require_tags": True}, {"pairs": sum(pools.values())},
                         {"traces": src / "problems.jsonl"}, root / "pairs", {"pairs.jsonl": f"pairs {c} {weights}".encode()})
        _, sft = stage("sft", "sft", {"learning_rate": lr, "lora_r": 32, "num_train_epochs": 1}, {"train_loss": rng.uniform(0.3, 1.5)},
                       {"data": src / "problems.jsonl"}, root / "sft", {"model.safetensors": f"sft {c} {lr}".encode()})
        dpo_id, dpo = stage("dpo", "dpo", {"beta": beta, "learning_rate": 5e-6}, {"train_loss": rng.uniform(0.1, 0.7)},
                            {"model": sft / "model.safetensors", "pairs": pairs / "pairs.jsonl"}, root / "dpo",
                            {"model.safetensors": f"dpo {c} {beta}".encode()})
        stage("eval", "eval", {"tasks": ["gsm8k", "mgsm_ja"]},
              {"gsm8k": {"accuracy": round(rng.uniform(0.2, 0.8), 4)}, "mgsm_ja": {"accuracy": round(rng.uniform(0.1, 0.6), 4)}},
              {"model": dpo / "model.safetensors"}, root / "eval", {"scores.jsonl": f"eval {c}".encode()})
        note = rng.choice(NOTES)
        if note:
            index = Index(workspace.index_db)
            add_note(workspace, index.run(dpo_id), note)
            index.close()
    print(f"built {count} runs in {time.perf_counter() - t0:.0f} s", flush=True)


def timed(fn, repeat: int) -> tuple[float, float, object]:
    fn()  # warm: caches, first page of the db
    samples = []
    result = None
    for _ in range(repeat):
        t = time.perf_counter()
        result = fn()
        samples.append((time.perf_counter() - t) * 1000)
    samples.sort()
    return statistics.median(samples), samples[min(len(samples) - 1, int(round(0.95 * (len(samples) - 1))))], result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--home", type=Path, default=Path(tempfile.gettempdir()) / "compass-ledger-bench")
    parser.add_argument("--repeat", type=int, default=40)
    parser.add_argument("--rebuild", action="store_true")
    args = parser.parse_args()

    from compass.ledger import Workspace
    from compass.ledger.index import Index
    from compass.ledger.query import MeaningIndex, search
    from compass.ledger.record import tracker_for

    home = args.home.resolve()
    if args.rebuild or not (home / "index.db").is_file() or Index(home / "index.db").count() < args.runs:
        if home.exists():
            import shutil

            shutil.rmtree(home)
            shutil.rmtree(home.parent / f"{home.name}-work", ignore_errors=True)
        print(f"building a ledger of {args.runs} runs in {home} (once; reused by later runs of this bench)", flush=True)
        build(home, args.runs)
    os.environ["COMPASS_HOME"] = str(home)
    workspace = Workspace(home)
    index = Index(workspace.index_db)
    total = index.count()
    client = tracker_for(workspace).client
    experiment = tracker_for(workspace).experiment_id

    meaning = MeaningIndex(index)
    t = time.perf_counter()
    embedded = meaning.update()
    load_s = time.perf_counter() - t
    print(f"{total} runs; meaning index: embedded {embedded} new run(s) in {load_s:.1f} s (model load included)", flush=True)

    def mlflow(filter_string: str):
        return client.search_runs([experiment], filter_string=filter_string, max_results=100)

    # (label, ours, MLflow's equivalent or None when MLflow cannot express it)
    cases = [
        ("figures: beta = 0.1 and train_loss < 0.3",
         lambda: search(index, "", where="beta = 0.1 and train_loss < 0.3", limit=100),
         lambda: mlflow("params.beta = '0.1' and metrics.train_loss < 0.3")),
        ("figures: gsm8k.accuracy > 0.75",
         lambda: search(index, "", where="gsm8k.accuracy > 0.75", limit=100),
         lambda: mlflow("metrics.`gsm8k.accuracy` > 0.75")),
        ("text: 'tamper_answer dropped' in notes",
         lambda: search(index, "tamper_answer dropped", mode="text", limit=100),
         lambda: mlflow("tags.`mlflow.note.content` LIKE '%tamper_answer dropped%'")),
        ("text: Japanese substring 証券報告",
         lambda: search(index, "証券報告", mode="text", limit=100),
         lambda: mlflow("tags.`mlflow.note.content` LIKE '%証券報告%'")),
        ("figures through lineage: gsm8k.accuracy > 0.7 and dpo.beta = 0.1", lambda: search(index, "", where="gsm8k.accuracy > 0.7 and dpo.beta = 0.1", limit=100), None),
        ("figures with OR: dpo.beta = 0.05 or sft.learning_rate = 0.0005", lambda: search(index, "", where="dpo.beta = 0.05 or sft.learning_rate = 0.0005", limit=100), None),
        ("meaning: 'runs where the rejected answers were too easy'", lambda: search(index, "runs where the rejected answers were too easy", mode="meaning", meaning=meaning, limit=100), None),
        ("all: words + meaning + figures", lambda: search(index, "tamper_answer dropped", where="gsm8k.accuracy > 0.5", meaning=meaning, limit=100), None),
    ]
    print(f"\n{'query':<68} {'ledger p50/p95 ms':>18} {'MLflow p50/p95 ms':>18} {'p95 ratio':>9}  hits")
    worst = 0.0
    for label, ours, theirs in cases:
        p50, p95, hits = timed(ours, args.repeat)
        worst = max(worst, p95)
        line = f"{label:<68} {p50:>8.1f} /{p95:>7.1f}"
        if theirs is not None:
            m50, m95, mhits = timed(theirs, args.repeat)
            line += f" {m50:>8.1f} /{m95:>7.1f} {m95 / p95:>8.1f}x  {len(hits)} vs {len(mhits)}"
        else:
            line += f" {'(cannot)':>18} {'':>9}  {len(hits)}"
        print(line, flush=True)
    print(f"\nworst ledger p95: {worst:.1f} ms (goal < 50 ms at 10k runs) over {total} runs")
    index.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
