"""Benchmark: text SFT batching modes on length-skewed traces, tokens/s of real (non-pad) tokens.

`compass sft` (the stage function, same process) on the tiny Llama with the same LoRA config and the same
length-skewed Trace records (heavy-tailed reasoning lengths, like distilled data), once per batching mode:

- padded: TRL's default collator, each micro batch padded to its longest sequence;
- padding_free: the sequences of a micro batch flattened into one row (no pads, same loss as padded);
- packing: TRL's bfd packing into rows of max_length. A packing micro batch is `micro_batch` ROWS, so the
  same config trains on many more tokens (and sequences) per step: a different batch, not only a speed-up.
  It runs twice: with the same config (fewer steps, it is slow), and with one row per micro batch, which
  holds about as many tokens as a micro batch of the other modes.

The runs alternate over --rounds; medians are reported as tokens/s and the ratio to padded, with the pad
fraction of the padded batches and the mode `batching: auto` picks on this device. auto only chooses among
modes that train exactly the same batches (padded, padding_free); packing is opt-in.
Goal: auto >= 1.8x padded on CPU and the fastest of those.

    .venv/bin/python bench/sft_padding.py [--records 96 --steps 12 --micro-batch 8 --rounds 3 --no-slow-packing]
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

STEP = ("Step {i}: the running total was {a}, we add {b} and get {c}. "
        "Then we check the units and carry on with the next quantity. ")
SYSTEM = ("You are an advanced mathematical AI assistant. Your task is to solve the given math problem "
          "step-by-step and provide a final answer.")


def skewed_traces(count: int, seed: int) -> list:
    """Trace records whose reasoning length is heavy-tailed (most short, a few very long), like distilled data."""
    from compass.records import Message, Trace

    rng = random.Random(seed)
    records = []
    for index in range(count):
        steps = min(60, max(1, int(rng.lognormvariate(1.6, 1.0))))
        total, lines = 0, []
        for i in range(steps):
            b = rng.randint(2, 99)
            lines.append(STEP.format(i=i + 1, a=total, b=b, c=total + b))
            total += b
        problem = f"A shop receives {steps} deliveries. What is the total number of boxes?"
        answer = f"<Problem>\n{problem}\n</Problem>\n\n<Thinking>\n{''.join(lines)}\n</Thinking>\n\n<Answer>\n\\boxed{{{total}}}\n</Answer>"
        records.append(Trace(
            id=f"skewed/{index}#0", problem_id=f"skewed/{index}", source="bench", lang="en",
            messages=[Message(role="system", content=SYSTEM), Message(role="user", content=problem),
                      Message(role="assistant", content=answer)],
            raw_output=answer, reference_answer=str(total), verified=True, teacher="bench"))
    return records


def pad_fraction(lengths: list[int], micro: int, seed: int) -> float:
    """Share of pad tokens in padded micro batches drawn in a seeded random order (as the Trainer samples)."""
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    real = padded = 0
    for start in range(0, len(order) - micro + 1, micro):
        batch = [lengths[i] for i in order[start:start + micro]]
        real += sum(batch)
        padded += max(batch) * len(batch)
    return 1 - real / padded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=96)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--no-slow-packing", action="store_true",
                        help="skip packing with the same config (micro_batch rows of max_length: minutes per run on CPU)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    from compass.io import write_jsonl
    from compass.models.tiny import build_tiny_llm, build_tiny_tokenizer
    from compass.stagekit import run_stage
    from compass.stages import sft
    from compass.train.data import read_sft_examples, tokenize_sft
    from compass.train.device import choose_batching
    from compass.train.model import load_processing_class

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-sft-padding-"))
    tokenizer_dir = build_tiny_tokenizer(work / "tokenizer", seed=0)
    model_dir = build_tiny_llm(work / "llm", tokenizer_dir, seed=0)
    data = work / "traces.jsonl"
    write_jsonl(data, skewed_traces(args.records, seed=0))
    lengths = [len(row) for row in tokenize_sft(load_processing_class(model_dir, "llm"), read_sft_examples(data),
                                                args.max_length).dataset["input_ids"]]
    print(f"{len(lengths)} traces, tokens per trace: min {min(lengths)}, median {int(statistics.median(lengths))}, "
          f"max {max(lengths)}; pad fraction of padded micro batches of {args.micro_batch}: "
          f"{pad_fraction(lengths, args.micro_batch, seed=42):.2f}")

    # (label, batching, micro batch, steps)
    runs = [("padded", "padded", args.micro_batch, args.steps),
            ("padding_free", "padding_free", args.micro_batch, args.steps),
            ("packing", "packing", args.micro_batch, 2),
            ("packing 1 row", "packing", 1, args.steps)]
    if args.no_slow_packing:
        runs = [run for run in runs if run[0] != "packing"]
    speeds: dict[str, list[float]] = {label: [] for label, *_ in runs}
    first_loss: dict[str, float] = {}
    for round_index in range(args.rounds):
        for label, mode, micro, steps in runs if round_index % 2 == 0 else runs[::-1]:
            config = sft.Config(batching=mode, max_steps=steps, micro_batch_size=micro, global_batch_size=micro,
                                max_length=args.max_length, lora_r=8, lora_alpha=16, lora_dropout=0.0,
                                learning_rate=1e-3, logging_steps=1)
            out = work / f"{label.replace(' ', '-')}-{round_index}"
            t0 = time.perf_counter()
            metrics = run_stage(sft, config, {"model": model_dir, "data": data}, out)
            speeds[label].append(metrics["train_tokens_per_s"])
            first_loss[label] = metrics["first_loss"]
            print(f"  round {round_index + 1} {label:<14} {metrics['train_tokens_per_s']:>7.0f} tokens/s "
                  f"({metrics['train_tokens']} tokens, {steps} steps of {micro} x {mode}, "
                  f"{metrics['train_runtime_s']:.1f}s train, {time.perf_counter() - t0:.1f}s stage)")

    # ratios are taken within each round (the modes of a round run back to back), then the median over
    # rounds: on a shared machine the load drifts between rounds more than within one
    median = {label: statistics.median(v) for label, v in speeds.items()}
    ratio = {label: statistics.median(s / p for s, p in zip(speeds[label], speeds["padded"], strict=True))
             for label in speeds}
    auto = choose_batching("auto", vision=False)
    same_batches = ("padded", "padding_free")
    best = max(same_batches, key=ratio.get)
    print()
    print(f"{'mode':<16}{'tokens/s':>9}{'vs padded':>11}   (median over {args.rounds} rounds)")
    for label, *_ in runs:
        print(f"{label:<16}{median[label]:>9.0f}{ratio[label]:>10.2f}x")
    print(f"batching: auto on {'cuda' if torch.cuda.is_available() else 'cpu'} -> {auto}: "
          f"{ratio[auto]:.2f}x padded (goal >= 1.8x); fastest of the modes that train the same "
          f"batches: {best} ({'OK' if auto == best else 'NOT auto'}); fastest overall: {max(ratio, key=ratio.get)}")
    print(f"first-step loss padded {first_loss['padded']:.6f}, padding_free {first_loss['padding_free']:.6f} "
          f"(same batches, same loss)")


if __name__ == "__main__":
    main()
