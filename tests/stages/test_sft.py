"""compass sft on the tiny models: real TRL SFTTrainer + PEFT runs, a few steps each."""
from __future__ import annotations

import json

import pytest
import torch

from compass.errors import CompassError
from compass.runner import execute_stage
from compass.stages import sft
from compass.train import data as D
from compass.train import model as M
from support.train_records import (
    adapter_tensors,
    cli,
    initial_adapter,
    kill_after_checkpoint,
    logits,
    write_doc_examples,
    write_traces,
)

torch.set_num_threads(1)

# CPU-sized: a few steps with a learning rate that moves a hidden-64 model visibly
TINY = dict(global_batch_size=4, micro_batch_size=2, lora_r=8, lora_alpha=16, learning_rate=5e-3,
            max_length=256, logging_steps=1, warmup_ratio=0.0)


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    return write_traces(tmp_path_factory.mktemp("sft-data") / "traces.jsonl", 48)


@pytest.fixture(scope="module")
def text_run(tiny_models, traces, tmp_path_factory):
    config = sft.Config(max_steps=8, merge=True, **TINY)
    out = tmp_path_factory.mktemp("sft") / "run"
    return config, execute_stage("sft", config, {"model": tiny_models.llm, "data": traces}, out)


def test_outputs_and_metrics(text_run):
    _, result = text_run
    m = result.manifest.metrics
    assert (result.out_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert (result.out_dir / "merged" / "model.safetensors").is_file()
    assert not (result.out_dir / ".checkpoints").exists()  # removed after success (keep_checkpoints: false)
    assert "adapter/training_args.bin" not in result.manifest.outputs  # no pickles among the artifacts
    assert m["steps"] == 8 and m["batching"] == "padding_free" and m["device.device"] == "cpu"
    assert m["device.gradient_accumulation_steps"] == 2 and m["train_tokens"] > 0 and m["train_tokens_per_s"] > 0
    history = json.loads((result.out_dir / "log_history.json").read_text())
    assert [e["step"] for e in history if "loss" in e] == list(range(1, 9))


def test_loss_falls(text_run):
    m = text_run[1].manifest.metrics
    assert m["last_loss"] < m["first_loss"] - 0.1, m


def test_every_lora_parameter_changes(text_run, tiny_models):
    config, result = text_run
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(tiny_models.llm))
    start = initial_adapter(tiny_models.llm, M.lora_config(config, base, "llm", []), config.seed)
    trained = adapter_tensors(result.out_dir / "adapter")
    assert len(trained) == len(start) == 2 * 7 * 2  # A and B of q,k,v,o,gate,up,down in 2 layers
    for key, before in start.items():
        after = trained[key.replace(".default", "")]
        assert not torch.allclose(before, after), f"{key} did not change"
        assert (before != after).float().mean() > 0.5, f"{key}: most entries unchanged"


def test_merged_logits_equal_base_plus_adapter(text_run, tiny_models):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    result = text_run[1]
    ids = torch.tensor([[1, 40, 41, 42, 300, 301, 302, 7, 8]])
    merged = AutoModelForCausalLM.from_pretrained(str(result.out_dir / "merged"))
    with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_models.llm)),
                                             str(result.out_dir / "adapter"))
    base = logits(AutoModelForCausalLM.from_pretrained(str(tiny_models.llm)), ids)
    expected = logits(with_adapter.eval(), ids)
    assert (expected - base).abs().max() > 1e-3  # the adapter does something
    torch.testing.assert_close(logits(merged, ids), expected, atol=1e-5, rtol=0)


def test_modules_to_save_train_embeddings_and_output_head_fully(tiny_models, traces, tmp_path):
    """modules_to_save [embed_tokens, lm_head]: one epoch (12 steps x 4 = the 48 traces), LoRA plus both modules
    trained fully. Every output-head row changes (softmax reaches every token), exactly the embedding rows of
    the tokens in the data change (Adam moves no row without a gradient), both ride in the adapter, and the
    merged model is base + adapter."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    config = sft.Config(max_steps=12, merge=True, modules_to_save=["embed_tokens", "lm_head"], **TINY)
    result = execute_stage("sft", config, {"model": tiny_models.llm, "data": traces}, tmp_path / "run")
    base = AutoModelForCausalLM.from_pretrained(str(tiny_models.llm))
    base_state = base.state_dict()
    vocab, hidden = base_state["lm_head.weight"].shape
    lora = sum(t.numel() for t in initial_adapter(tiny_models.llm, M.lora_config(sft.Config(**TINY), base, "llm", []),
                                                  config.seed).values())
    assert result.manifest.metrics["trainable_params"] == lora + 2 * vocab * hidden
    saved = adapter_tensors(result.out_dir / "adapter")
    assert {k for k in saved if "lora_" not in k} == {"base_model.model.model.embed_tokens.weight",
                                                       "base_model.model.lm_head.weight"}

    merged = AutoModelForCausalLM.from_pretrained(str(result.out_dir / "merged")).state_dict()
    assert (merged["lm_head.weight"] != base_state["lm_head.weight"]).any(dim=1).all()
    tokenized = D.tokenize_sft(M.load_processing_class(tiny_models.llm, "llm"), D.read_sft_examples(traces), 256)
    in_data = torch.zeros(vocab, dtype=torch.bool)
    in_data[sorted({t for row in tokenized.dataset["input_ids"] for t in row})] = True
    changed = (merged["model.embed_tokens.weight"] != base_state["model.embed_tokens.weight"]).any(dim=1)
    assert torch.equal(changed, in_data)
    assert all(not torch.equal(merged[k], base_state[k]) for k in base_state if k.endswith("_proj.weight"))  # LoRA too

    ids = torch.tensor([[1, 40, 41, 42, 300, 301, 302, 7, 8]])
    with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_models.llm)),
                                             str(result.out_dir / "adapter"))
    reloaded = AutoModelForCausalLM.from_pretrained(str(result.out_dir / "merged"))
    torch.testing.assert_close(logits(reloaded, ids), logits(with_adapter.eval(), ids), atol=1e-5, rtol=0)


@pytest.mark.parametrize(("names", "message"), [
    (["embeddings"], "no module path of LlamaForCausalLM ends in 'embeddings'"),
    (["head"], "ends in 'head'"),  # PEFT would match it against the end of 'lm_head'; names end at a dot here
    (["q_proj"], "names LoRA targets"),
])
def test_modules_to_save_must_name_modules_that_are_not_lora_targets(tiny_models, traces, tmp_path, names, message):
    config = sft.Config(max_steps=1, modules_to_save=names, **TINY)
    with pytest.raises(CompassError, match=message):
        execute_stage("sft", config, {"model": tiny_models.llm, "data": traces}, tmp_path / "o")
    assert not (tmp_path / "o" / "manifest.json").exists()


def test_labels_are_trls_own_assistant_only_labels(tiny_models, traces, tmp_path):
    """Our pre-tokenization (needed for padding-free) gives exactly what TRL builds from messages with
    assistant_only_loss=True."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    tokenizer = M.load_processing_class(tiny_models.llm, "llm")
    examples = D.read_sft_examples(traces)[:6]
    ours = D.tokenize_sft(tokenizer, examples, max_length=10_000).dataset
    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(str(tiny_models.llm)), processing_class=tokenizer,
        train_dataset=Dataset.from_dict({"messages": [e.messages for e in examples]}),
        args=SFTConfig(output_dir=str(tmp_path), assistant_only_loss=True, use_cpu=True, bf16=False, report_to="none",
                       gradient_checkpointing=False, max_length=10_000),
    )
    assert trainer.train_dataset["input_ids"] == ours["input_ids"]
    assert trainer.train_dataset["labels"] == ours["labels"]
    assert all(-100 in row and any(t != -100 for t in row) for row in ours["labels"])


def test_padded_and_padding_free_give_the_same_loss(tiny_models, traces, tmp_path):
    losses = {}
    for mode in ("padded", "padding_free"):
        config = sft.Config(max_steps=2, batching=mode, lora_dropout=0.0, **TINY)  # dropout masks follow shapes
        result = execute_stage("sft", config, {"model": tiny_models.llm, "data": traces}, tmp_path / mode)
        losses[mode] = (result.manifest.metrics["first_loss"], result.manifest.metrics["last_loss"])
    assert losses["padded"] == pytest.approx(losses["padding_free"], abs=1e-5)


def test_killed_run_resumes_to_the_same_final_loss(tiny_models, traces, text_run, tmp_path):
    """`compass sft` killed (SIGKILL) right after its checkpoint at step 2, then rerun in the same out dir:
    it continues from the checkpoint and ends where the uninterrupted run ends (checkpointing itself changes
    nothing in training, so text_run is that uninterrupted run)."""
    uninterrupted_config, uninterrupted = text_run
    config = uninterrupted_config.model_copy(update={"save_steps": 2})
    out = tmp_path / "killed"
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in {**TINY, "max_steps": 8, "save_steps": 2}.items()]
    kill_after_checkpoint(cli("sft", "--model", str(tiny_models.llm), "--data", str(traces), "--out", str(out),
                              "--merge", *flags),
                          out / ".checkpoints" / "checkpoint-2")
    assert not (out / "manifest.json").exists()
    resumed = execute_stage("sft", config, {"model": tiny_models.llm, "data": traces}, out)
    m, ref = resumed.manifest.metrics, uninterrupted.manifest.metrics
    assert 2 <= m["resumed_from_step"] < 8 and m["steps"] == 8
    assert m["last_loss"] == pytest.approx(ref["last_loss"], abs=1e-5)
    # whole-run figures, not the resumed part's: same tokens and loss mean as the uninterrupted run
    assert m["train_tokens"] == ref["train_tokens"] and m["train_tokens_this_run"] < m["train_tokens"]
    assert m["train_steps_this_run"] == 8 - m["resumed_from_step"]
    assert m["train_loss_mean"] == pytest.approx(ref["train_loss_mean"], abs=1e-4)
    a, b = adapter_tensors(out / "adapter"), adapter_tensors(uninterrupted.out_dir / "adapter")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=0)


def test_rerun_with_another_config_discards_old_checkpoints(tiny_models, traces, tmp_path):
    config = sft.Config(max_steps=2, save_steps=1, keep_checkpoints=True, **TINY)
    execute_stage("sft", config, {"model": tiny_models.llm, "data": traces}, tmp_path)
    assert sorted(p.name for p in (tmp_path / ".checkpoints").glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    other = config.model_copy(update={"learning_rate": 1e-3})
    result = execute_stage("sft", other, {"model": tiny_models.llm, "data": traces}, tmp_path)
    assert result.manifest.metrics["resumed_from_step"] == 0


@pytest.mark.parametrize("train", ["both", "projector"])
def test_vlm_sft_trains_chosen_parts_and_keeps_the_vision_tower(tiny_models, tmp_path, train):
    from transformers import AutoModelForImageTextToText

    data = write_doc_examples(tmp_path / "docs", 6)
    config = sft.Config(max_steps=3, merge=True, train=train, **TINY)
    result = execute_stage("sft", config, {"model": tiny_models.vlm, "data": data}, tmp_path / "run")
    m = result.manifest.metrics
    assert m["model_kind"] == "vlm" and m["batching"] == "padded" and m["lora"] == (train == "both")
    # compared as loaded (module names), whatever key layout the files use
    base = AutoModelForImageTextToText.from_pretrained(str(tiny_models.vlm)).state_dict()
    merged = AutoModelForImageTextToText.from_pretrained(str(result.out_dir / "merged")).state_dict()
    assert merged.keys() == base.keys()

    def changed(prefix):
        keys = [k for k in base if k.startswith(prefix) and k.endswith("weight")]
        assert keys, prefix
        return {k: not torch.equal(base[k], merged[k]) for k in keys}

    assert not any(changed("model.vision_tower.").values())  # frozen
    assert all(changed("model.multi_modal_projector.").values())  # trained fully in both modes
    lm = changed("model.language_model.layers.")
    lora_layers = {k: v for k, v in lm.items() if k.endswith("_proj.weight")}
    if train == "both":
        assert all(lora_layers.values())  # every LoRA-targeted linear layer got its delta
    else:
        assert not any(lm.values())
    assert not changed("lm_head.")["lm_head.weight"]


def test_text_records_with_images_need_a_vlm(tiny_models, tmp_path):
    data = write_doc_examples(tmp_path / "docs", 2)
    with pytest.raises(CompassError, match="has images but the model is a text-only LLM"):
        execute_stage("sft", sft.Config(max_steps=1, **TINY), {"model": tiny_models.llm, "data": data}, tmp_path / "o")
    with pytest.raises(CompassError, match="need a VLM"):
        execute_stage("sft", sft.Config(max_steps=1, train="projector", **TINY),
                      {"model": tiny_models.llm, "data": data}, tmp_path / "o")
    assert not (tmp_path / "o" / "manifest.json").exists()


def test_vlm_modules_to_save_need_lora(tiny_models, tmp_path):
    data = write_doc_examples(tmp_path / "docs", 2)
    config = sft.Config(max_steps=1, train="projector", modules_to_save=["embed_tokens"], **TINY)
    with pytest.raises(CompassError, match="train: projector trains no LoRA; use train: both"):
        execute_stage("sft", config, {"model": tiny_models.vlm, "data": data}, tmp_path / "o")


def test_global_batch_must_split_over_micro_batches():
    with pytest.raises(ValueError, match="not a multiple of micro_batch_size"):
        sft.Config(global_batch_size=5, micro_batch_size=2)


def test_mixed_weighted_datasets_in_standard_formats_train(tiny_models, tmp_path):
    """messages + ShareGPT + alpaca + Trace rows mixed with weights in one SFT stage; counts per dataset recorded."""
    from support import data_formats as F

    data = tmp_path / "data"
    F.write_rows(data / "m.jsonl", F.messages_rows(8))
    F.write_rows(data / "sg.jsonl", F.sharegpt_rows(4))
    F.write_rows(data / "alpaca.jsonl", F.alpaca_rows())
    write_traces(data / "traces.jsonl", 6)
    mix = [{"path": "m.jsonl", "weight": 0.5}, {"path": "sg.jsonl", "weight": 2, "name": "sharegpt"},
           {"path": "alpaca.jsonl", "format": "alpaca"}, {"path": "traces.jsonl"}]
    config = sft.Config(max_steps=6, mix=mix, **TINY)
    result = execute_stage("sft", config, {"model": tiny_models.llm, "data": data}, tmp_path / "out")
    m = result.manifest.metrics
    taken = {name: m["sources"][name]["taken"] for name in ("m.jsonl", "sharegpt", "alpaca.jsonl", "traces.jsonl")}
    assert taken == {"m.jsonl": 4, "sharegpt": 8, "alpaca.jsonl": 2, "traces.jsonl": 6}
    assert m["examples"] == 20 and m["steps"] == 6 and m["last_loss"] < m["first_loss"], m
    formats = {name: m["sources"][name]["format"] for name in taken}
    assert formats == {"m.jsonl": "messages", "sharegpt": "sharegpt", "alpaca.jsonl": "alpaca", "traces.jsonl": "trace"}
    # a bad row in one dataset of the mix fails the stage with its file and line, nothing written
    F.write_rows(data / "alpaca.jsonl", F.alpaca_rows() + [{"instruction": "x", "output": None}])
    with pytest.raises(CompassError, match=r"alpaca.jsonl:3: output must be a string"):
        execute_stage("sft", config, {"model": tiny_models.llm, "data": data}, tmp_path / "out2")
    assert not (tmp_path / "out2" / "manifest.json").exists()


def test_data_format_flag_reads_sharegpt_through_the_cli(tiny_models, tmp_path):
    import subprocess

    from support import data_formats as F

    rows = F.write_rows(tmp_path / "sg.jsonl", F.sharegpt_rows(4))
    args = ["sft", "--model", str(tiny_models.llm), "--data", str(rows), "--data-format", "sharegpt", "--out",
            str(tmp_path / "out"), "--max-steps", "2", "--global-batch-size", "2", "--micro-batch-size", "2"]
    done = subprocess.run(cli(*args), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "data_format: sharegpt" in done.stdout and "examples: 4" in done.stdout
    bad = subprocess.run(cli(*args[:-6], "--data-format", "alpaca", "--out", str(tmp_path / "bad")),
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "sg.jsonl:1: missing 'instruction'" in bad.stderr
