"""compass dpo on the tiny LLM: real TRL DPOTrainer + PEFT (reference = adapter disabled), a few steps each."""
from __future__ import annotations

import json

import pytest
import torch

from compass.errors import CompassError
from compass.runner import execute_stage
from compass.stages import dpo
from compass.train import model as M
from support.train_records import (
    adapter_tensors,
    cli,
    initial_adapter,
    kill_after_checkpoint,
    logits,
    write_pairs,
)

torch.set_num_threads(1)

TINY = dict(global_batch_size=8, micro_batch_size=4, lora_r=8, lora_alpha=16, learning_rate=5e-3,
            max_length=256, logging_steps=1, warmup_ratio=0.0)
STEPS = 12


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dpo-data")
    # held-out pairs come from other traces than the training pairs
    return write_pairs(folder / "train.jsonl", 96), write_pairs(folder / "heldout.jsonl", 24, start=1000)


@pytest.fixture(scope="module")
def dpo_run(tiny_models, pairs, tmp_path_factory):
    config = dpo.Config(max_steps=STEPS, merge=True, **TINY)
    out = tmp_path_factory.mktemp("dpo") / "run"
    inputs = {"model": tiny_models.llm, "pairs": pairs[0], "eval_pairs": pairs[1]}
    return config, execute_stage("dpo", config, inputs, out)


def test_reward_accuracy_and_margin_rise_on_held_out_pairs(dpo_run):
    m = dpo_run[1].manifest.metrics
    # before training the adapter is a no-op, so policy == reference: every reward and margin is exactly 0
    assert m["eval_before.reward_margin"] == 0 and m["eval_before.reward_accuracy"] == 0
    assert m["eval_before.loss"] == pytest.approx(0.6931, abs=1e-4)  # -log(sigmoid(0))
    assert m["eval_after.reward_accuracy"] >= 0.6, m
    assert m["eval_after.reward_margin"] > 0.05, m
    assert m["eval_after.loss"] < m["eval_before.loss"]


def test_loss_falls_and_outputs(dpo_run):
    m, out = dpo_run[1].manifest.metrics, dpo_run[1].out_dir
    assert m["first_loss"] == pytest.approx(0.6931, abs=1e-4) and m["last_loss"] < m["first_loss"] - 0.02, m
    assert m["steps"] == STEPS and m["pairs"] == 96 and m["eval_pairs"] == 24
    assert (out / "adapter" / "adapter_model.safetensors").is_file() and (out / "merged" / "model.safetensors").is_file()
    history = json.loads((out / "log_history.json").read_text())
    assert sum("rewards/accuracies" in e for e in history) == STEPS  # TRL's DPO metrics, every step


def test_every_lora_parameter_changes(dpo_run, tiny_models):
    from transformers import AutoModelForCausalLM

    config, result = dpo_run
    base = AutoModelForCausalLM.from_pretrained(str(tiny_models.llm))
    start = initial_adapter(tiny_models.llm, M.lora_config(config, base, "llm", []), config.seed)
    trained = adapter_tensors(result.out_dir / "adapter")
    assert len(trained) == len(start) == 28
    for key, before in start.items():
        after = trained[key.replace(".default", "")]
        assert (before != after).float().mean() > 0.5, f"{key}: most entries unchanged"


def test_merged_logits_equal_base_plus_adapter(dpo_run, tiny_models):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = dpo_run[1].out_dir
    ids = torch.tensor([[1, 50, 60, 70, 80, 90, 100, 110]])
    merged = AutoModelForCausalLM.from_pretrained(str(out / "merged"))
    with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_models.llm)), str(out / "adapter"))
    torch.testing.assert_close(logits(merged, ids), logits(with_adapter.eval(), ids), atol=1e-5, rtol=0)


def test_killed_run_resumes_to_the_same_final_loss(dpo_run, tiny_models, pairs, tmp_path):
    """`compass dpo` SIGKILLed right after its checkpoint at step 4, rerun in the same out dir: same end as
    the uninterrupted run (dpo_run; checkpointing changes nothing in training)."""
    config = dpo_run[0].model_copy(update={"save_steps": 4})
    out = tmp_path / "killed"
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in {**TINY, "max_steps": STEPS, "save_steps": 4}.items()]
    kill_after_checkpoint(cli("dpo", "--model", str(tiny_models.llm), "--pairs", str(pairs[0]),
                              "--eval-pairs", str(pairs[1]), "--out", str(out), "--merge", *flags),
                          out / ".checkpoints" / "checkpoint-4")
    assert not (out / "manifest.json").exists()
    resumed = execute_stage("dpo", config, {"model": tiny_models.llm, "pairs": pairs[0], "eval_pairs": pairs[1]}, out)
    m, ref = resumed.manifest.metrics, dpo_run[1].manifest.metrics
    assert 4 <= m["resumed_from_step"] < STEPS and m["steps"] == STEPS
    assert m["last_loss"] == pytest.approx(ref["last_loss"], abs=1e-5)
    # whole-run figures, not the resumed part's
    assert m["train_tokens"] == ref["train_tokens"] and m["train_tokens_this_run"] < m["train_tokens"]
    assert m["train_loss_mean"] == pytest.approx(ref["train_loss_mean"], abs=1e-4)
    assert m["eval_after.reward_margin"] == pytest.approx(ref["eval_after.reward_margin"], abs=1e-5)
    a, b = adapter_tensors(out / "adapter"), adapter_tensors(dpo_run[1].out_dir / "adapter")
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=0)


def test_sft_loss_weight_adds_the_chosen_nll(dpo_run, tiny_models, pairs, tmp_path):
    """sft_loss_weight (RPO): at step 1 policy == reference, so the DPO term is exactly log 2 and the rest of
    the loss is weight x the chosen answers' NLL: twice the weight, twice the extra. Preference learning on
    held-out pairs still happens with the NLL term in."""
    inputs = {"model": tiny_models.llm, "pairs": pairs[0], "eval_pairs": pairs[1]}
    runs = {w: execute_stage("dpo", dpo.Config(max_steps=steps, sft_loss_weight=w, **TINY), inputs, tmp_path / str(w))
            .manifest.metrics for w, steps in ((1.0, STEPS), (2.0, 1))}
    log2 = dpo_run[1].manifest.metrics["first_loss"]  # plain DPO's first loss
    nll = runs[1.0]["first_loss"] - log2
    assert nll > 1.0, runs[1.0]  # an untrained model: the chosen answers are far from likely
    assert runs[2.0]["first_loss"] - log2 == pytest.approx(2 * nll, rel=1e-5)
    m = runs[1.0]
    assert m["eval_after.reward_accuracy"] >= 0.6 and m["eval_after.reward_margin"] > 0.05, m
    assert m["last_loss"] < m["first_loss"] - 0.1, m


def test_dpo_refuses_a_vlm(tiny_models, pairs, tmp_path):
    with pytest.raises(CompassError, match="is a VLM"):
        execute_stage("dpo", dpo.Config(max_steps=1, **TINY), {"model": tiny_models.vlm, "pairs": pairs[0]}, tmp_path)


def test_method_defaults():
    config = dpo.Config()
    assert (config.learning_rate, config.global_batch_size, config.micro_batch_size, config.beta, config.max_length,
            config.epochs, config.lora_r, config.lora_alpha) == (5e-6, 32, 1, 0.1, 2048, 1.0, 32, 64)


def test_dpo_trains_on_ultrafeedback_rows_directly(tiny_models, tmp_path):
    """openbmb/UltraFeedback-shaped rows as the pairs input: best vs worst by rating, ties left out."""
    from support import data_formats as F

    rows = F.write_rows(tmp_path / "uf.jsonl", F.ultrafeedback_rows() * 4)
    config = dpo.Config(max_steps=2, **{**TINY, "global_batch_size": 4, "micro_batch_size": 2})
    result = execute_stage("dpo", config, {"model": tiny_models.llm, "pairs": rows}, tmp_path / "out")
    m = result.manifest.metrics
    assert m["pairs"] == 8 and m["steps"] == 2  # 16 rows: 4 ties and 4 with one rated completion dropped
    assert m["first_loss"] == pytest.approx(0.6931, abs=1e-4)
