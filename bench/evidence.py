"""Per-page evidence extraction throughput and memory against a local OpenAI-compatible server.

The server (support.scripted_server, its own process) answers every request with a valid
evidence JSON after a fixed latency and works on at most `slots` requests at once, so nothing can exceed
slots / latency pages per second. Side by side, same server, same page images (rendered by `compass pages`
at the default 1400 px long side, sent as data URLs):
  - `compass evidence --backend openai` (the whole stage: page index, lazy request building with base64
    images, the streaming pool, strict parsing, ordered output), as a fraction of the server's limit;
  - a sequential loop (one request after the other, same messages), for the ratio;
  - peak traced memory of the stage at 50, 500 and 5000 pages beside the bare OpenAIBackend on the same
    requests: what the stage adds must stay flat (requests are built lazily, only those in flight hold an
    image, finished pages go straight to the resume journal on disk, two small integers per page stay).

    python bench/evidence.py [--pages 4000 --latency-s 0.2 --slots 32 --concurrency 64]
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests"  # test support (support.*) lives there, not in the package
sys.path.insert(0, str(TESTS))
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH", "")]))

os.environ.setdefault("TQDM_DISABLE", "1")

REPLY = json.dumps({"evidence": "The page shows a table of revenue by segment: Consumer 4,812; Industrial 4,457.",
                    "relevance_score": 7})
SERVER = ("import asyncio, sys\n"
          "from support.scripted_server import ScriptedServer, fixed_reply\n"
          "server = ScriptedServer(fixed_reply(sys.argv[1]), latency_s=float(sys.argv[2]), slots=int(sys.argv[3]))\n"
          "asyncio.run(server.serve_forever())\n")


def start_server(latency_s: float, slots: int) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-c", SERVER, REPLY, str(latency_s), str(slots)], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()
    if not line.startswith("listening on "):
        proc.kill()
        raise SystemExit(f"scripted server did not start: {line!r}")
    return proc, line.removeprefix("listening on ")


def build_corpus(root: Path) -> tuple[Path, list]:
    """One generated 10-page report rendered at 1400 px; returns pages.jsonl and its planted questions."""
    from compass.io import read_jsonl
    from compass.records import DocQuestion
    from compass.stagekit import run_stage
    from compass.stages import pages, pdf_fixtures

    run_stage(pdf_fixtures, pdf_fixtures.Config(n_docs=1, min_extra_pages=1, max_extra_pages=1, seed=1), {}, root / "fx")
    run_stage(pages, pages.Config(), {"pdfs": root / "fx" / "pdfs"}, root / "pages")
    return root / "pages" / "pages.jsonl", read_jsonl(root / "fx" / "questions.jsonl", DocQuestion)


def questions_for(root: Path, base: list, n_pages: int, per_doc: int) -> Path:
    """Enough copies of the planted questions that questions x pages = n_pages."""
    from compass.io import write_jsonl

    n_questions = n_pages // per_doc
    rows = [base[i % len(base)].model_copy(update={"id": f"q{i}"}) for i in range(n_questions)]
    path = root / f"questions-{n_pages}.jsonl"
    write_jsonl(path, rows)
    return path


def run_evidence(pages_path: Path, questions: Path, out: Path, base_url: str, concurrency: int) -> dict:
    from compass.stagekit import run_stage
    from compass.stages import evidence

    cfg = evidence.Config(backend="openai", openai={"base_urls": [base_url], "model": "scripted", "concurrency": concurrency,
                                                    "max_retries": 0})
    return run_stage(evidence, cfg, {"pages": pages_path, "questions": questions}, out)


def sequential(pages_path: Path, questions: Path, base_url: str, n: int) -> float:
    """The plain loop: one request at a time, same messages, same parsing; returns seconds for n pages."""
    import httpx

    from compass.io import read_jsonl
    from compass.longdoc.evidence import evidence_messages, parse_evidence
    from compass.records import DocQuestion, Page

    page_records = read_jsonl(pages_path, Page)
    tasks = [(q, p) for q in read_jsonl(questions, DocQuestion) for p in page_records][:n]
    t0 = time.perf_counter()
    with httpx.Client(timeout=60) as client:
        for q, p in tasks:
            body = {"model": "scripted", "messages": evidence_messages(q, pages_path.parent / p.image, p.page_index in q.gold_pages),
                    "max_tokens": 1024, "temperature": 0.0}
            response = client.post(f"{base_url}/chat/completions", json=body)
            parse_evidence(response.json()["choices"][0]["message"]["content"])
    return time.perf_counter() - t0


def peak_memory(pages_path: Path, questions: Path, out: Path, base_url: str, concurrency: int) -> tuple[int, int]:
    """(peak, retained after a full collection) traced bytes of one stage run."""
    gc.collect()
    tracemalloc.start()
    run_evidence(pages_path, questions, out, base_url, concurrency)
    _, peak = tracemalloc.get_traced_memory()
    gc.collect()
    retained = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return peak, retained


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=4000, help="(question, page) pairs for the throughput run")
    parser.add_argument("--latency-s", type=float, default=0.2)
    parser.add_argument("--slots", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--sequential-pages", type=int, default=40)
    parser.add_argument("--mem-concurrency", type=int, default=16, help="pool size of the 50-vs-500-page memory runs")
    args = parser.parse_args()
    limit = args.slots / args.latency_s

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        pages_path, base = build_corpus(root)
        per_doc = sum(1 for _ in open(pages_path))
        image_kb = sum(f.stat().st_size for f in (root / "pages" / "images").rglob("*.png")) / per_doc / 1024
        print(f"corpus: one {per_doc}-page report rendered at 1400 px (mean PNG {image_kb:.0f} KB, sent base64)")
        proc, url = start_server(args.latency_s, args.slots)
        try:
            questions = questions_for(root, base, args.pages, per_doc)
            run_evidence(pages_path, questions_for(root, base, per_doc * 8, per_doc), root / "warm", url, args.concurrency)
            t0 = time.perf_counter()
            metrics = run_evidence(pages_path, questions, root / "ours", url, args.concurrency)
            ours_s = time.perf_counter() - t0
            n = metrics["pages"]
            ours_rate = n / ours_s
            seq_s = sequential(pages_path, questions, url, args.sequential_pages)
            seq_rate = args.sequential_pages / seq_s
            print(f"server limit: {limit:.1f} pages/s ({args.slots} slots x {args.latency_s:g} s)")
            print(f"compass evidence (pool of {args.concurrency}): {n} pages in {ours_s:.2f} s = {ours_rate:.1f} pages/s "
                  f"= {ours_rate / limit:.3f} of the limit (goal >= 0.95)")
            print(f"sequential loop: {args.sequential_pages} pages in {seq_s:.2f} s = {seq_rate:.2f} pages/s "
                  f"= {seq_rate / limit:.3f} of the limit")
            print(f"ratio compass / sequential: {ours_rate / seq_rate:.1f}x")
        finally:
            proc.kill()
            proc.wait()

        # Memory: what is held is the requests in flight (2 x concurrency, each with its base64 page image),
        # so it is flat in the number of pages once they outnumber that window (a pool of 16: 32 requests).
        # The bare backend on the same requests is the baseline: what the stage adds must not grow.
        proc, url = start_server(0.005, args.slots)
        try:
            image = sorted((root / "pages" / "images").rglob("*.png"))[3]
            backend_peak(url, image, 50, args.mem_concurrency)  # warm imports outside the measurements
            sizes = (50, 500, 5000)
            stage = [peak_memory(pages_path, questions_for(root, base, n, per_doc), root / f"mem-{n}", url,
                                 args.mem_concurrency) for n in sizes]
            bare = [backend_peak(url, image, n, args.mem_concurrency) for n in sizes]
            print(f"peak traced memory, pool of {args.mem_concurrency} (pages: stage / bare backend):")
            for n, (peak, retained), alone in zip(sizes, stage, bare):
                print(f"  {n:>5} pages: {peak / 2**20:5.1f} MiB / {alone / 2**20:5.1f} MiB "
                      f"(stage adds {(peak - alone) / 2**20:+.1f} MiB; retained after the run {retained / 2**20:.2f} MiB)")
            print(f"  stage peak 5000 / 500 pages: {stage[2][0] / stage[1][0]:.2f}; bare backend: {bare[2] / bare[1]:.2f}")
            # Both creep up together: httpx's Request/Response objects of finished requests sit in reference
            # cycles holding each request body (the base64 image) until the cyclic collector runs.
        finally:
            proc.kill()
            proc.wait()


def backend_peak(base_url: str, image: Path, n: int, concurrency: int) -> int:
    """Peak traced bytes of compass.generate's OpenAIBackend alone on n requests with one page image each."""
    from compass.generate import GenRequest, OpenAIBackend
    from compass.longdoc.evidence import image_data_url

    backend = OpenAIBackend([base_url], "scripted", concurrency=concurrency, max_retries=0)
    requests = (GenRequest(str(i), [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": image_data_url(image)}}, {"type": "text", "text": f"question {i}"}]}])
        for i in range(n))
    gc.collect()
    tracemalloc.start()
    for _ in backend.generate(requests):
        pass
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


if __name__ == "__main__":
    main()
