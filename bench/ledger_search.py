"""`compass runs search` at 10k runs, measured as a process (what a user waits for), text and with meaning.

    python bench/ledger_search.py                  # 10,000 runs (built once into --home, reused after)
    python bench/ledger_search.py --runs 2000 --home bench-out/ledger-2k --repeat 10

The ledger: chains sources -> pairs -> sft -> dpo -> eval with varied configs, metrics and notes (English
and Japanese). Each run's index rows are made by the ledger's own row builders, as record_stage_run makes
them (figures, full text, segmented words, data-recipe summary, lineage, the e5 embedding of its
description); the MLflow run and the content store are skipped, because search reads neither and writing
10k MLflow runs takes hours on a small machine (tests/unit/test_ledger_record.py covers that path).

Printed per query: p50/p95 wall time of `python -m compass.cli runs search ...` as a fresh process, its CPU
time (user + sys, p50: what the load of a shared machine does not change much), and, as the same-process
baseline, the wall time of a bare `python -c pass` (the ratio says how much of the wait is compass). The load
average before and after is printed. Goals (issue 15): p95 < 1 s for --mode text, < 2 s with meaning.

Bytecode: the processes run with PYTHONDONTWRITEBYTECODE unset and a private PYTHONPYCACHEPREFIX under --home,
as an installed compass has its .pyc files; where that variable is set (some sandboxes), every start compiles
compass's sources again, ~0.06 s of CPU (a third of a text search) that no user pays. --no-bytecode keeps the environment as it is.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

STRATEGIES = ("omit_thinking", "tamper_thinking_numbers", "tamper_answer")
POOLS = ("gsm8k", "math", "svamp", "aqua_rat", "mgsm_ja", "orca_math")
NOTES = ("tamper_answer dropped: rejected answers were too easy", "有価証券報告書のページで試した", "baseline rerun on new shards",
         "lower lr after loss spikes", "長い文脈、4096トークン", "学習率を下げたら損失が安定した", "", "", "")


def build(home: Path, runs: int, seed: int = 0) -> None:
    from compass.ledger.embed import embedder
    from compass.ledger.index import Index
    from compass.ledger.recipe_summary import build_summary
    from compass.ledger.search_text import figures_of, meaning_text, search_body, text_sha, words_body

    home.mkdir(parents=True, exist_ok=True)
    index = Index(home / "index.db")
    embed = embedder()
    rng = random.Random(seed)
    t0 = time.perf_counter()
    count = 0
    clock = 0

    def stage(kind: str, config: dict, metrics: dict, parents: list[tuple[str, str]], note: str = "") -> str:
        nonlocal count, clock
        run_id = uuid.uuid4().hex
        clock += 1
        stamp = f"2026-01-01T00:00:00.{clock:06d}+00:00"
        config = {"seed": rng.choice((1, 7, 42)), **config}
        out_sha = hashlib.sha256(run_id.encode()).hexdigest()
        manifest = {"stage": kind, "name": kind, "run_id": run_id, "recipe": None, "config": config, "metrics": metrics,
                    "config_hash": hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest(), "seed": config["seed"],
                    "code": {"commit": None, "dirty": None}, "versions": {}, "launch": None, "started_at": stamp, "wall_time_s": 1.0,
                    "inputs": {port: {"path": f"/bench/{p[:8]}/out", "files": {"out.jsonl": hashlib.sha256(p.encode()).hexdigest()}}
                               for p, port in parents},
                    "outputs": {"out.jsonl": out_sha}}
        depths = {run_id: 0}
        for parent, _ in parents:
            for ancestor, depth in index.ancestors(parent):
                depths[ancestor] = min(depths.get(ancestor, depth + 1), depth + 1)
        summary = build_summary(index, manifest, depths, [], parents)
        body = search_body(manifest, summary, [("out.jsonl", out_sha, 100)])
        description = meaning_text(kind, kind, note, summary, config, metrics)
        index.begin_recording({
            "run_id": run_id, "tracking_uri": "bench", "name": kind, "stage": kind, "recipe": None, "started_at": stamp,
            "recorded_at": stamp, "wall_time_s": 1.0, "config_hash": manifest["config_hash"], "code_commit": None, "code_dirty": None,
            "out_dir": f"/bench/{run_id[:8]}/out", "manifest": json.dumps(manifest, ensure_ascii=False),
            "summary": json.dumps(summary, ensure_ascii=False)})
        index.complete_recording(
            run_id, out_dir=f"/bench/{run_id[:8]}/out", out_files=[("out.jsonl", out_sha, 100)],
            in_files=[(port, "out.jsonl", hashlib.sha256(p.encode()).hexdigest(), 100, False) for p, port in parents],
            inputs=[(port, f"/bench/{p[:8]}/out", False) for p, port in parents], parents=parents, depths=depths,
            figures=figures_of(config, metrics, []), history=[], name=kind, body=body, words=words_body(kind, note, body),
            stage=kind, embedding=(text_sha(description), embed.passages([description])[0].tobytes()))
        if note:
            index.set_note(run_id, note, words_body("", note, "")[1], (text_sha(description), embed.passages([description])[0].tobytes()))
        count += 1
        if count % 1000 == 0:
            print(f"  {count} runs ({(time.perf_counter() - t0) / count * 1000:.0f} ms/run)", flush=True)
        return run_id

    # a few data recipes, many hyperparameters: the descriptions the embedding model reads repeat (each distinct
    # one is embedded once, ~0.5 s on a loaded core), while the facts search matches vary run by run
    pool_choices = [{"gsm8k": 7473, "math": 7500, "svamp": 700}, {"gsm8k": 1000, "mgsm_ja": 250, "aqua_rat": 2500},
                    {"orca_math": 12500, "math": 1000, "gsm8k": 250}]
    weight_choices = [dict(zip(STRATEGIES, w)) for w in ((0.34, 0.33, 0.33), (0.5, 0.5, 0.0), (0.34, 0.33, 0.0), (0.0, 0.5, 0.5))]
    for c in range(max(1, runs // 5)):
        pools = rng.choice(pool_choices)
        weights = rng.choice(weight_choices)
        lr, beta = rng.choice((1e-4, 2e-4, 5e-4)), rng.choice((0.05, 0.1, 0.2))
        src = stage("sources", {"pools": pools}, {"records": sum(pools.values()), "counts": pools}, [])
        pairs = stage("pairs", {"weights": weights, "require_tags": True}, {"pairs": sum(pools.values())}, [(src, "traces")],
                      note=rng.choice(NOTES))
        sft = stage("sft", {"learning_rate": lr, "lora_r": rng.choice((16, 32)), "max_steps": rng.choice((100, 200, 400))},
                    {"train_loss": round(rng.uniform(0.3, 1.5), 4)}, [(src, "data")])
        dpo = stage("dpo", {"beta": beta, "learning_rate": 5e-6}, {"train_loss": round(rng.uniform(0.1, 0.7), 4),
                    "eval_after": {"reward_accuracy": round(rng.uniform(0.5, 1.0), 4)}}, [(sft, "model"), (pairs, "pairs")],
                    note=rng.choice(NOTES))
        stage("eval", {"tasks": ["gsm8k", "mgsm_ja"], "max_new_tokens": rng.choice((512, 1024))},
              {"gsm8k": {"accuracy": round(rng.uniform(0.2, 0.8), 4)}, "mgsm_ja": {"accuracy": round(rng.uniform(0.1, 0.6), 4)}},
              [(dpo, "model")])
    index.close()
    print(f"built {count} runs in {time.perf_counter() - t0:.0f} s", flush=True)


def wall(command: list[str], env: dict[str, str]) -> tuple[float, str, float]:
    """(wall s, stdout, CPU s of the child: user + sys)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()[-400:]}")
    return seconds, done.stdout, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def percentiles(samples: list[float]) -> tuple[float, float]:
    samples = sorted(samples)
    return statistics.median(samples), samples[min(len(samples) - 1, int(round(0.95 * (len(samples) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--home", type=Path, default=Path(tempfile.gettempdir()) / "compass-ledger-bench")
    parser.add_argument("--repeat", type=int, default=10, help="processes per query (p95 of these)")
    parser.add_argument("--rebuild", action="store_true")
    parser.add_argument("--no-bytecode", action="store_true", help="keep PYTHONDONTWRITEBYTECODE as the environment has it")
    args = parser.parse_args()

    from compass.ledger.index import Index

    home = args.home.resolve()
    have = Index(home / "index.db").count() if (home / "index.db").is_file() else 0
    if args.rebuild or have < args.runs:
        shutil.rmtree(home, ignore_errors=True)
        print(f"building a ledger of {args.runs} runs in {home} (once; reused by later runs of this bench)", flush=True)
        build(home, args.runs)
    env = {**os.environ, "COMPASS_HOME": str(home)}
    if not args.no_bytecode:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(home / "pycache")
    total = Index(home / "index.db").count()
    load_before = os.getloadavg()

    baseline = [wall([sys.executable, "-c", "pass"], env)[0] for _ in range(args.repeat)]
    base50, base95 = percentiles(baseline)
    cases = [
        ("text", "tamper_answer dropped"), ("text", "dpo with beta 0.1 and lora_r 32"),
        ("text", "eval of the model trained on pairs with tamper_answer 0"), ("text", "dpo with the best reward accuracy"),
        ("text", "有価証券報告書のページ"), ("text", "学習率を下げたら損失が安定した"),
        ("all", "runs where the rejected answers were too easy"), ("all", "長い文脈で試した実行"),
        ("all", "報酬精度が一番高いDPO"),
    ]
    print(f"{total} runs; bare interpreter start p50/p95 {base50 * 1000:.0f}/{base95 * 1000:.0f} ms; "
          f"bytecode {'as the environment has it' if args.no_bytecode else 'cached'}\n")
    print(f"{'mode':<5} {'query':<58} {'p50 ms':>7} {'p95 ms':>7} {'CPU ms':>7} {'goal ms':>7} {'p95/goal':>8} {'p95/bare':>8}  first hit")
    worst = {"text": 0.0, "all": 0.0}
    for mode, query in cases:
        command = [sys.executable, "-m", "compass.cli", "runs", "search", "--mode", mode, "--limit", "3", query]
        wall(command, env)  # warm: page cache, bytecode
        samples, cpus, out = [], [], ""
        for _ in range(args.repeat):
            seconds, out, cpu = wall(command, env)
            samples.append(seconds)
            cpus.append(cpu)
        p50, p95 = percentiles(samples)
        goal = 1.0 if mode == "text" else 2.0
        worst[mode] = max(worst[mode], p95)
        first = next((line.strip() for line in out.splitlines() if line.strip().startswith("1.")), "(no hit)")
        print(f"{mode:<5} {query:<58} {p50 * 1000:>7.0f} {p95 * 1000:>7.0f} {statistics.median(cpus) * 1000:>7.0f} {goal * 1000:>7.0f} "
              f"{p95 / goal:>8.2f} {p95 / base95:>8.1f}  {first[:60]}", flush=True)
    load_after = os.getloadavg()
    print(f"\nworst p95 over {total} runs: text {worst['text'] * 1000:.0f} ms (goal < 1000), "
          f"with meaning {worst['all'] * 1000:.0f} ms (goal < 2000); load average (1/5/15 min) before "
          f"{' '.join(f'{x:.2f}' for x in load_before)}, after {' '.join(f'{x:.2f}' for x in load_after)} on {os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
