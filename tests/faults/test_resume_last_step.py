"""A training run interrupted after its checkpoint at the LAST step (killed while writing the adapter or the
manifest) reruns to exactly max_steps: the trainer would otherwise train one step past the end on resume (it
checks the step limit only after a step). The outputs equal those of the run that was interrupted."""
from __future__ import annotations

import json

import pytest
import torch
from support.train_records import adapter_tensors, write_pairs, write_traces

from compass.runner import execute_stage
from compass.stages import dpo, sft

torch.set_num_threads(1)

TINY = dict(global_batch_size=4, micro_batch_size=2, lora_r=8, lora_alpha=16, learning_rate=5e-3,
            max_length=256, logging_steps=1, warmup_ratio=0.0)
STEPS = 3  # the data holds more steps than this: the trainer's epoch loop has batches left after the limit


def interrupted_after_last_checkpoint(out) -> None:
    """What a kill after the last checkpoint leaves: the checkpoint, but no manifest (the run is unfinished)."""
    assert (out / ".checkpoints" / f"checkpoint-{STEPS}" / "trainer_state.json").is_file()
    (out / "manifest.json").unlink()


@pytest.mark.parametrize("kind", ["sft", "dpo"])
def test_a_resume_from_the_last_step_checkpoint_trains_no_further(kind, tiny_models, tmp_path):
    if kind == "sft":
        data = {"model": tiny_models.llm, "data": write_traces(tmp_path / "traces.jsonl", 32)}
        config = sft.Config(max_steps=STEPS, save_steps=STEPS, keep_checkpoints=True, **TINY)
    else:
        data = {"model": tiny_models.llm, "pairs": write_pairs(tmp_path / "pairs.jsonl", 32)}
        config = dpo.Config(max_steps=STEPS, save_steps=STEPS, keep_checkpoints=True, **TINY)
    out = tmp_path / "run"
    first = execute_stage(kind, config, data, out)
    assert first.manifest.metrics["steps"] == STEPS
    adapter = adapter_tensors(out / "adapter")
    interrupted_after_last_checkpoint(out)

    resumed = execute_stage(kind, config, data, out)
    m, ref = resumed.manifest.metrics, first.manifest.metrics
    assert m["resumed_from_step"] == STEPS and m["steps"] == STEPS
    assert m["train_steps_this_run"] == 0 and m["train_tokens_this_run"] == 0
    assert m["train_tokens"] == ref["train_tokens"] and m["last_loss"] == ref["last_loss"]
    assert m["train_loss_mean"] == pytest.approx(ref["train_loss_mean"], abs=1e-4)
    history = json.loads((out / "log_history.json").read_text())
    assert max(entry.get("step", 0) for entry in history) == STEPS
    again = adapter_tensors(out / "adapter")
    assert again.keys() == adapter.keys()
    for key in adapter:
        torch.testing.assert_close(again[key], adapter[key], atol=0, rtol=0)
