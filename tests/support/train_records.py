"""Small fixture records and helpers shared by the training-stage tests (sft, dpo, accelerate)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from compass.io import write_jsonl
from compass.data.pairs import make_pair
from support.traces import synthetic_trace
from compass.records import DocExample, Message

WEIGHTS = {"omit_thinking": 0.34, "tamper_thinking_numbers": 0.33, "tamper_answer": 0.33}


def write_traces(path: Path, count: int, start: int = 0) -> Path:
    write_jsonl(path, [synthetic_trace(i) for i in range(start, start + count)])
    return path


def write_pairs(path: Path, count: int, start: int = 0) -> Path:
    pairs = []
    index = start
    while len(pairs) < count:
        outcome = make_pair(synthetic_trace(index), seed=42, weights=WEIGHTS, require_tags=True, require_verified=True)
        if outcome.pair is not None:
            pairs.append(outcome.pair)
        index += 1
    write_jsonl(path, pairs)
    return path


def write_doc_examples(folder: Path, count: int) -> Path:
    """DocExample records with two small page images each, placed with <image> marks in the user turn."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(count):
        names = []
        for page in range(2):
            name = f"doc{i}_page{page}.png"
            Image.new("RGB", (36 + 10 * page, 30), ((40 * i) % 256, 90 * page, 150)).save(folder / name)
            names.append(name)
        records.append(DocExample(
            id=f"doc{i}/q0", question_id=f"doc{i}/q0", doc_id=f"doc{i}", images=names,
            messages=[Message(role="system", content="<cot>"),
                      Message(role="user", content=f"Page 1: <image> Page 2: <image> What were net sales in year {i}?"),
                      Message(role="assistant", content=f"<think>Page 1: net sales were {i * 7} million yen.</think>\\boxed{{{i * 7}}}")],
            cot_placement="system", branch="vision", has_trace=True))
    write_jsonl(folder / "examples.jsonl", records)
    return folder / "examples.jsonl"


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "compass.cli", *args]


def kill_after_checkpoint(argv: list[str], checkpoint: Path, timeout_s: float = 120) -> None:
    """Start `argv`, SIGKILL it as soon as `checkpoint` is complete (its trainer_state.json, written last, exists):
    an interruption like a preempted job's. Fails if the run ends on its own first."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=os.environ.copy())
    deadline = time.monotonic() + timeout_s
    try:
        while not (checkpoint / "trainer_state.json").is_file():
            if proc.poll() is not None:
                raise AssertionError(f"run ended (rc {proc.returncode}) before {checkpoint} appeared: "
                                     f"{proc.stderr.read().decode()[-2000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {checkpoint} after {timeout_s}s")
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
        proc.stderr.close()


def initial_adapter(model_dir: Path, peft_config, seed: int) -> dict:
    """The LoRA weights TRL starts from: it calls set_seed(args.seed) right before get_peft_model."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, set_seed

    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    set_seed(seed)
    model = get_peft_model(model, peft_config)
    return {k: v.detach().clone() for k, v in model.state_dict().items() if "lora_" in k}


def adapter_tensors(adapter_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(adapter_dir / "adapter_model.safetensors"))


def logits(model, input_ids):
    import torch

    with torch.no_grad():
        return model(input_ids=input_ids).logits
