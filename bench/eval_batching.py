"""Benchmark: batched vs one-by-one local generation in `compass eval`, on the tiny models, same process.

1. Text (the math tasks' path): N GSM8K-style prompts with the XML system prompt through
   compass.generate.TransformersBackend, batch_size=1 (baseline, one generate() call per prompt) vs
   batch_size=B (ours: left-padded batches), greedy, max_new_tokens tokens each.
2. Pages (the mmlongbench path): N questions over rendered PDF pages ("Page N:" + image each) through the
   eval's LocalModel on the tiny LLaVA-OneVision, batch 1 vs B.
Each engine gets one warm-up call before the clock starts. Reported: wall time, generated tokens per second,
the speed-up (batched / one-by-one), and how many outputs are identical between the two (greedy decoding of
a padded batch can differ from the unpadded run only by float rounding).

    .venv/bin/python bench/eval_batching.py [--n 64] [--batch 32] [--max-new-tokens 48] [--threads 1]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def _run(backend, requests) -> tuple[float, dict]:
    t0 = time.perf_counter()
    results = {r.id: r for r in backend.generate(iter(requests))}
    return time.perf_counter() - t0, results


def _report(title: str, n: int, batch: int, base: tuple[float, dict], ours: tuple[float, dict]) -> float:
    (t_base, r_base), (t_ours, r_ours) = base, ours
    tokens = sum(r.output_tokens for r in r_ours.values())
    same = sum(r_base[k].text == r_ours[k].text for k in r_base)
    ratio = t_base / t_ours
    print(f"\n{title}: {n} prompts, {tokens} generated tokens")
    print(f"  one-by-one (batch 1)  {t_base:7.2f} s  {sum(r.output_tokens for r in r_base.values()) / t_base:8.1f} tok/s")
    print(f"  batched (batch {batch:<3d})  {t_ours:7.2f} s  {tokens / t_ours:8.1f} tok/s")
    print(f"  speed-up batched / one-by-one: {ratio:.2f}x   identical outputs: {same}/{n}")
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64, help="prompts per engine")
    parser.add_argument("--batch", type=int, default=32, help="batch size of the batched engine")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the project machine: 1)")
    parser.add_argument("--pages", type=int, default=3, help="pages per question in the mmlongbench part")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(args.threads)
    from compass.evals import math as math_eval
    from compass.evals import mmlongbench
    from compass.generate.local_model import LocalModel
    from compass.generate.local import TransformersBackend
    from compass.longdoc.synthetic_reports import generate_reports
    from compass.models.tiny import build_tiny_llm, build_tiny_tokenizer, build_tiny_vlm

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tokenizer = build_tiny_tokenizer(root / "tokenizer", seed=0)
        llm = build_tiny_llm(root / "llm", tokenizer, seed=0)
        vlm = build_tiny_vlm(root / "vlm", tokenizer, seed=0)
        print(f"tiny models built; torch threads {torch.get_num_threads()}, max_new_tokens {args.max_new_tokens}")

        # 1. text generation, the math tasks' engine
        rows = [{"question": f"A shop sells {3 + i} boxes with {7 + 2 * i} pencils each. How many pencils?",
                 "answer": f"#### {(3 + i) * (7 + 2 * i)}"} for i in range(args.n)]
        items = math_eval.items_from_rows("gsm8k", rows, "bench")
        requests = math_eval.build_requests(items, cot=False, max_tokens=args.max_new_tokens, seed=0)
        one, batched = TransformersBackend(llm, batch_size=1), TransformersBackend(llm, batch_size=args.batch)
        for engine in (one, batched):  # load + first-call warm-up outside the clock
            _run(engine, requests[:2])
        text_ratio = _report("text generation (TransformersBackend, tiny Llama)", args.n, args.batch,
                             _run(one, requests), _run(batched, requests))

        # 2. page-image generation, the mmlongbench engine
        report = generate_reports(1, seed=0, min_extra_pages=0, max_extra_pages=0, ja_fraction=0.5)[0]
        pdf = root / f"{report.doc_id}.pdf"
        pdf.write_bytes(report.pdf)
        pages, _ = mmlongbench.render_pages(pdf, root / "pages", dpi=36, max_long_side=400, max_pages=args.pages)
        doc_items = [mmlongbench.DocItem(f"q{i}", report.doc_id, q.question, q.answer, q.answer_format, tuple(q.gold_pages))
                     for i, q in enumerate(report.questions * (args.n // len(report.questions) + 1))][: args.n]
        doc_requests = [mmlongbench.build_request(item, pages, cot=True, for_http=False, max_tokens=args.max_new_tokens, seed=0)
                        for item in doc_items]
        vone, vbatched = LocalModel(vlm, batch_size=1), LocalModel(vlm, batch_size=args.batch)
        for engine in (vone, vbatched):
            _run(engine, doc_requests[:2])
        page_ratio = _report(f"page-image generation (LocalModel, tiny LLaVA-OneVision, {len(pages)} pages each)",
                             args.n, args.batch, _run(vone, doc_requests), _run(vbatched, doc_requests))

    print(f"\nsummary: text {text_ratio:.2f}x, pages {page_ratio:.2f}x (goal >= 3x)")


if __name__ == "__main__":
    main()
