"""Benchmark: the overhead of `compass sft` over a bare TRL script doing the same training.

Both train the tiny Llama with the same LoRA config, batch arithmetic, schedule, batching mode (padding-free,
the CPU default) and number of steps on the same Trace records, in this one process, alternating
ours / bare over --rounds. Timed end to end from the model directory and the JSONL file to a saved adapter:

- ours: `compass.stages.sft.run` (record validation, assistant-only tokenization, device plan, checkpoint
  bookkeeping, TRL SFTTrainer + PEFT, adapter save, log history);
- bare: the plain TRL recipe: `datasets` JSON loading of the messages, SFTConfig(assistant_only_loss=True,
  padding_free=True), SFTTrainer + LoraConfig, trainer.train(), trainer.save_model().

Reported: median seconds of each and the ratio ours / bare (goal <= 1.05), and the final losses of both.

    .venv/bin/python bench/train_overhead.py [--records 256 --steps 40 --rounds 3]
"""
from __future__ import annotations

import argparse
import os
import sys
import shutil
import statistics
import tempfile
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests"  # test support (support.*) lives there, not in the package
sys.path.insert(0, str(TESTS))
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH", "")]))

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

SHARED = dict(learning_rate=5e-3, micro_batch_size=2, global_batch_size=4, lora_r=8, lora_alpha=16, lora_dropout=0.05,
              warmup_ratio=0.03, logging_steps=10)


def bare_trl(model_dir: Path, data: Path, out_dir: Path, steps: int, seed: int) -> float:
    """What a user writes with TRL alone for the same run; returns the last logged loss."""
    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    dataset = load_dataset("json", data_files=str(data), split="train").select_columns(["messages"])
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    args = SFTConfig(
        output_dir=str(out_dir / "checkpoints"), learning_rate=SHARED["learning_rate"],
        per_device_train_batch_size=SHARED["micro_batch_size"],
        gradient_accumulation_steps=SHARED["global_batch_size"] // SHARED["micro_batch_size"],
        max_steps=steps, warmup_steps=SHARED["warmup_ratio"], logging_steps=SHARED["logging_steps"],
        save_steps=200, save_total_limit=2, seed=seed, bf16=False, use_cpu=True, gradient_checkpointing=False,
        report_to="none", assistant_only_loss=True, padding_free=True, max_length=None,
    )
    peft_config = LoraConfig(r=SHARED["lora_r"], lora_alpha=SHARED["lora_alpha"], lora_dropout=SHARED["lora_dropout"],
                             target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=peft_config)
    trainer.train()
    trainer.save_model(str(out_dir / "adapter"))
    return [e["loss"] for e in trainer.state.log_history if "loss" in e][-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=256)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    from compass.io import write_jsonl
    from compass.models.tiny import build_tiny_llm, build_tiny_tokenizer
    from support.traces import synthetic_trace
    from compass.stagekit import run_stage
    from compass.stages import sft

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-train-overhead-"))
    model_dir = build_tiny_llm(work / "llm", build_tiny_tokenizer(work / "tokenizer", seed=0), seed=0)
    data = work / "traces.jsonl"
    write_jsonl(data, [synthetic_trace(i) for i in range(args.records)])
    config = sft.Config(max_steps=args.steps, batching="padding_free", **SHARED)

    times: dict[str, list[float]] = {"ours": [], "bare": []}
    last_loss: dict[str, float] = {}
    # one untimed run of each first: imports and first-use costs are paid by neither timed run
    for warm in (True, False):
        for round_index in range(1 if warm else args.rounds):
            for engine in ("ours", "bare") if round_index % 2 == 0 else ("bare", "ours"):
                out = work / f"{engine}-{'warm' if warm else round_index}"
                shutil.rmtree(out, ignore_errors=True)
                t0 = time.perf_counter()
                if engine == "ours":
                    last_loss[engine] = run_stage(sft, config, {"model": model_dir, "data": data}, out)["last_loss"]
                else:
                    last_loss[engine] = bare_trl(model_dir, data, out, args.steps, config.seed)
                seconds = time.perf_counter() - t0
                if not warm:
                    times[engine].append(seconds)
                    print(f"  round {round_index + 1} {engine}: {seconds:.2f}s, last loss {last_loss[engine]:.5f}")

    ours, bare = statistics.median(times["ours"]), statistics.median(times["bare"])
    print()
    print(f"{args.steps} steps x {SHARED['global_batch_size']} traces, {args.records} records, CPU, padding-free")
    print(f"compass sft  {ours:6.2f}s (median of {args.rounds})")
    print(f"bare TRL     {bare:6.2f}s")
    print(f"ratio ours / bare: {ours / bare:.3f} (goal <= 1.05); last loss ours {last_loss['ours']:.5f}, "
          f"bare {last_loss['bare']:.5f}")


if __name__ == "__main__":
    main()
