"""Generation client throughput against a local OpenAI-compatible server with a known limit.

The server (support.scripted_server, its own process) answers each request after a fixed latency
and works on at most `slots` at once, so no client can exceed slots / latency requests per second. Side by
side, same server, same prompts:
  - compass OpenAIBackend (streaming pool), the backend alone and the whole `distill` stage
    (requests + parsing + answer checking + flushed shard writes);
  - a plain AsyncOpenAI loop with a semaphore (the usual hand-written client);
  - a sequential `openai` loop (fewer prompts; it is slow), for the ratio.
Client CPU per request is printed too: on a shared, loaded machine it is the figure that stays put.

    python bench/distill_client.py [--prompts 1000 --latency-s 0.2 --slots 32 --concurrency 64]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests"  # test support (support.*) lives there, not in the package
sys.path.insert(0, str(TESTS))
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH", "")]))

os.environ.setdefault("TQDM_DISABLE", "1")


def start_server(latency_s: float, slots: int) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "support.scripted_server", "--latency-s", str(latency_s), "--slots", str(slots)],
        stdout=subprocess.PIPE, text=True,
    )
    line = proc.stdout.readline().strip()
    if not line.startswith("listening on "):
        proc.kill()
        raise SystemExit(f"scripted server did not start: {line!r}")
    return proc, line.removeprefix("listening on ")


def messages(i: int) -> list[dict]:
    return [{"role": "system", "content": "You are a math assistant."}, {"role": "user", "content": f"What is {i} + 1?"}]


def bench_backend(base_url: str, n: int, concurrency: int) -> float:
    from compass.generate import GenRequest, OpenAIBackend

    backend = OpenAIBackend([base_url], "scripted", concurrency=concurrency)
    t0 = time.perf_counter()
    results = list(backend.generate(GenRequest(str(i), messages(i), max_tokens=64) for i in range(n)))
    elapsed = time.perf_counter() - t0
    assert len(results) == n and all(r.ok for r in results), [r.error for r in results if not r.ok][:3]
    return n / elapsed


def bench_distill_stage(base_url: str, n: int, concurrency: int) -> float:
    from compass.io import write_jsonl
    from compass.records import Problem
    from compass.stagekit import run_stage
    from compass.stages import distill

    with tempfile.TemporaryDirectory() as tmp:
        problems = Path(tmp) / "problems.jsonl"
        write_jsonl(problems, [Problem(id=f"b{i}", source="bench", question=f"What is {i} + 1?", reference_answer="1")
                               for i in range(n)])
        cfg = distill.Config(backend="openai", openai={"base_urls": [base_url], "model": "scripted", "concurrency": concurrency})
        t0 = time.perf_counter()
        metrics = run_stage(distill, cfg, {"problems": problems}, Path(tmp) / "out")
        elapsed = time.perf_counter() - t0
    assert metrics["traces"] == n, metrics
    return n / elapsed


def bench_async_openai(base_url: str, n: int, concurrency: int) -> float:
    from openai import AsyncOpenAI

    async def main() -> float:
        client = AsyncOpenAI(base_url=base_url, api_key="none", max_retries=0)
        gate = asyncio.Semaphore(concurrency)

        async def one(i: int) -> str:
            async with gate:
                response = await client.chat.completions.create(model="scripted", messages=messages(i), max_tokens=64)
                return response.choices[0].message.content

        t0 = time.perf_counter()
        texts = await asyncio.gather(*(one(i) for i in range(n)))
        elapsed = time.perf_counter() - t0
        await client.close()
        assert len(texts) == n
        return n / elapsed

    return asyncio.run(main())


def bench_sequential(base_url: str, n: int) -> float:
    from openai import OpenAI

    client = OpenAI(base_url=base_url, api_key="none", max_retries=0)
    t0 = time.perf_counter()
    for i in range(n):
        client.chat.completions.create(model="scripted", messages=messages(i), max_tokens=64)
    elapsed = time.perf_counter() - t0
    client.close()
    return n / elapsed


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # this process only: the server runs in its own
    return usage.ru_utime + usage.ru_stime


def measured(fn, *args) -> tuple[float, float]:
    """(requests per second, client CPU ms per request)."""
    c0 = cpu_s()
    rate = fn(*args)
    n = args[1]
    return rate, (cpu_s() - c0) * 1000 / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=1000)
    parser.add_argument("--sequential-prompts", type=int, default=40)
    parser.add_argument("--latency-s", type=float, default=0.2)
    parser.add_argument("--slots", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    limit = args.slots / args.latency_s
    proc, base_url = start_server(args.latency_s, args.slots)
    try:
        import compass.stages.distill  # noqa: F401  (imports outside the timed parts)
        import openai  # noqa: F401

        print(f"server: {args.latency_s * 1000:.0f} ms per request, {args.slots} slots -> limit {limit:.0f} req/s; "
              f"{args.prompts} prompts, client concurrency {args.concurrency}")
        rows = [
            ("compass OpenAIBackend", *measured(bench_backend, base_url, args.prompts, args.concurrency)),
            ("compass distill stage (end to end)", *measured(bench_distill_stage, base_url, args.prompts, args.concurrency)),
            ("AsyncOpenAI + semaphore", *measured(bench_async_openai, base_url, args.prompts, args.concurrency)),
            (f"sequential openai loop ({args.sequential_prompts} prompts)",
             *measured(bench_sequential, base_url, args.sequential_prompts)),
        ]
    finally:
        proc.terminate()
        proc.wait()
    sequential = rows[-1][1]
    print(f"{'client':<42} {'req/s':>8} {'of limit':>9} {'x sequential':>13} {'client CPU ms/req':>18}")
    for name, rate, cpu_ms in rows:
        print(f"{name:<42} {rate:8.1f} {rate / limit:9.3f} {rate / sequential:13.1f} {cpu_ms:18.2f}")


if __name__ == "__main__":
    main()
