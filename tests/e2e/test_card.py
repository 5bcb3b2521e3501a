"""`compass card` / `compass export` on a small chain of the tiny recipe (tiny models, a few training steps):
every figure of the card is checked against the ledger, an edited number fails the check, the export is a
loadable hub folder."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from compass.commands import card as card_cmd
from compass.ledger.flat import as_text, flatten
from compass.pipeline import run_recipe

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.models]

ARITH = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1, "operators": ["+", "-"],
         "allow_parentheses": False, "allow_negation": False}
TRAIN = {"global_batch_size": 2, "micro_batch_size": 2, "lora_r": 4, "lora_alpha": 8, "max_length": 256,
         "logging_steps": 1, "merge": True, "warmup_ratio": 0.0}
CHAIN = {
    "name": "card-chain", "seed": 42,
    "stages": [
        {"name": "models", "stage": "tiny-models"},
        {"name": "problems", "stage": "sources", "config": {"reasoning_gym": [{"generator": "basic_arithmetic", "size": 24, "config": ARITH}]}},
        {"name": "heldout", "stage": "sources",
         "config": {"reasoning_gym": [{"generator": "basic_arithmetic", "size": 6, "seed": 2026, "config": ARITH}]}},
        {"name": "clean", "stage": "decontaminate", "inputs": {"problems": "problems.problems", "eval": "heldout.problems"},
         "config": {"max_drop_rate": 0.9}},
        {"name": "traces", "stage": "distill", "inputs": {"problems": "clean.problems"}, "config": {"backend": "reference", "teacher": "reference"}},
        {"name": "pairs", "stage": "pairs", "inputs": {"traces": "traces.traces"}},
        {"name": "parts", "stage": "decompose", "inputs": {"vlm": "models.vlm"}},
        {"name": "sft", "stage": "sft", "inputs": {"model": "parts.llm", "data": "traces.traces"}, "config": {"max_steps": 3, **TRAIN}},
        {"name": "dpo", "stage": "dpo", "inputs": {"model": "sft.merged", "pairs": "pairs.pairs"}, "config": {"max_steps": 2, **TRAIN}},
        {"name": "vlm", "stage": "compose", "inputs": {"vision": "parts.vision", "llm": "dpo.merged", "projector_from": "parts.projector"}},
        {"name": "eval_sft", "stage": "eval", "inputs": {"model": "sft.merged", "problems": "heldout.problems"},
         "config": {"tasks": ["problems"], "max_new_tokens": 8, "batch_size": 8}},
        {"name": "eval_dpo", "stage": "eval", "inputs": {"model": "dpo.merged", "problems": "heldout.problems"},
         "config": {"tasks": ["problems"], "max_new_tokens": 8, "batch_size": 8}},
    ],
}


def with_preference_data(chain: dict, folder: Path) -> dict:
    """The chain with real preference pairs (UltraFeedback-shaped rows) mixed into the DPO pairs at 0.2."""
    from support import data_formats as F

    F.write_rows(folder / "uf.jsonl", F.ultrafeedback_rows() * 5)
    stages = []
    for stage in chain["stages"]:
        if stage["name"] == "pairs":
            stages.append({"name": "prefs", "stage": "preference-sources", "inputs": {"data": str(folder)},
                           "config": {"datasets": [{"path": "uf.jsonl", "name": "ultrafeedback"}]}})
            stage = {**stage, "inputs": {**stage["inputs"], "preference": "prefs.pairs"}, "config": {"preference_ratio": 0.2}}
        stages.append(stage)
    return {**chain, "stages": stages}


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    root = tmp_path_factory.mktemp("card-chain")
    recipe = root / "chain.yaml"
    recipe.write_text(yaml.safe_dump(with_preference_data(CHAIN, root / "prefdata"), sort_keys=False))
    results = run_recipe(recipe, root / "work", log=lambda _: None)
    return results, root


@pytest.fixture(scope="module")
def card(chain):
    results, root = chain
    out = root / "card" / "README.md"
    assert card_cmd.main([results["dpo"].manifest.run_id[:10], "--out", str(out), "--license", "apache-2.0"]) == 0
    return out, out.read_text(encoding="utf-8")


def test_front_matter_and_sections(card, chain):
    text = card[1]
    head = yaml.safe_load(text.split("---\n")[1])
    assert head["license"] == "apache-2.0" and head["language"] == ["en"] and head["pipeline_tag"] == "text-generation"
    assert {"compass", "sft", "dpo", "lora", "trl", "peft"} <= set(head["tags"])
    for section in ("## Architecture", "## Training procedure", "### sft (sft)", "### dpo (dpo)", "## Training data",
                    "### pairs (pairs)", "## Evaluation", "### problems", "## Lineage", "## Reproducing", "## Runs"):
        assert section in text, section
    dpo_id = chain[0]["dpo"].manifest.run_id
    assert f"compass runs reproduce {dpo_id[:12]}" in text and f'<a id="run-{dpo_id[:12]}"></a>' in text


def test_every_figure_is_the_ledgers_value_of_its_run(card, chain):
    results = chain[0]
    by_id = {r.manifest.run_id[:12]: r.manifest for r in results.values()}
    figures = card_cmd.FIGURE.findall(card[1])
    assert len(figures) > 100
    checked = 0
    for text, run, key in figures:
        scope, _, rest = key.partition(".")
        if scope == "arch":
            continue  # from the checkpoint files: checked against the weights below
        manifest = by_id[run]  # every linked run is one of this chain's runs
        values = flatten(manifest.config if scope == "config" else manifest.metrics)
        assert card_cmd.figure_text(values[rest]) == text, (key, text)
        checked += 1
    assert checked > 100
    # figures a reader looks for, where the card says they are
    dpo, sft, pairs = results["dpo"].manifest, results["sft"].manifest, results["pairs"].manifest
    assert f'[{as_text(dpo.config["beta"])}](#run-{dpo.run_id[:12]} "config.beta")' in card[1]
    assert f'[{as_text(sft.metrics["last_loss"])}](#run-{sft.run_id[:12]} "metrics.last_loss")' in card[1]
    for name, count in pairs.metrics["strategies"].items():
        row = f'| {name} | [{as_text(pairs.config["weights"][name])}](#run-{pairs.run_id[:12]} "config.weights.{name}") | ' \
              f'[{count}](#run-{pairs.run_id[:12]} "metrics.strategies.{name}") |'
        assert row in card[1]
    pid = pairs.run_id[:12]
    assert (f'| real preference pairs (share of all) | [0.2](#run-{pid} "config.preference_ratio") | '
            f'[{pairs.metrics["preference_pairs"]}](#run-{pid} "metrics.preference_pairs") |') in card[1]
    prefs = results["prefs"].manifest
    assert "### prefs (preference-sources)" in card[1] and pairs.metrics["preference_pairs"] > 0
    assert f'[{prefs.metrics["per_source"]["ultrafeedback"]}](#run-{prefs.run_id[:12]} "metrics.per_source.ultrafeedback")' in card[1]
    for stage in ("eval_sft", "eval_dpo"):
        m = results[stage].manifest
        assert f'[{as_text(flatten(m.metrics)["problems.accuracy"])}]' \
               f'(#run-{m.run_id[:12]} "metrics.problems.accuracy")' in card[1]


def test_architecture_counts_match_the_weights(card, chain):
    from safetensors import safe_open

    merged = chain[0]["dpo"].out_dir / "merged"
    total = 0
    with safe_open(str(merged / "model.safetensors"), "pt") as fh:
        for name in fh.keys():
            total += fh.get_tensor(name).numel()
    dpo_id = chain[0]["dpo"].manifest.run_id[:12]
    assert f'| total | [{total}](#run-{dpo_id} "arch.params.total") |' in card[1]
    config = json.loads((merged / "config.json").read_text())
    assert f'| hidden_size | [{config["hidden_size"]}](#run-{dpo_id} "arch.config.hidden_size") |' in card[1]


def test_check_passes_and_fails_on_an_edited_number(card, tmp_path, capsys):
    path, text = card
    assert card_cmd.main(["--check", str(path)]) == 0
    assert "card check passed" in capsys.readouterr().out
    match = re.search(r'\[([0-9.]+)\](\(#run-[0-9a-f]{12} "metrics\.last_loss"\))', text)
    edited = text.replace(match.group(0), f"[{match.group(1)}1]{match.group(2)}", 1)
    bad = tmp_path / "README.md"
    bad.write_text(edited)
    assert card_cmd.main(["--check", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "metrics.last_loss" in err and f"the card says '{match.group(1)}1'" in err and "1 of" in err
    # a link to a run the ledger does not have is unsupported too
    bad.write_text(text.replace(match.group(2), '(#run-000000000000 "metrics.last_loss")', 1))
    assert card_cmd.main(["--check", str(bad)]) == 1
    assert "no run supports it" in capsys.readouterr().err


def test_export_is_the_recorded_checkpoint_with_its_card_in_the_hub_layout(chain, tmp_path, capsys, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from compass.commands import export
    from compass.io import sha256_file

    results = chain[0]
    dpo = results["dpo"].manifest
    out = tmp_path / "export"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert export.main([dpo.run_id[:10], "--out", str(out), "--license", "apache-2.0"]) == 0
    recorded = {path.removeprefix("merged/"): sha for path, sha in dpo.outputs.items() if path.startswith("merged/")}
    assert {p.name for p in out.iterdir()} == set(recorded) | {"README.md"}
    assert {name: sha256_file(out / name) for name in recorded} == recorded  # the bytes the run recorded
    assert {"chat_template.jinja", "tokenizer.json", "model.safetensors", "config.json"} <= set(recorded)
    card = (out / "README.md").read_text()
    assert card_cmd.check_card(card_cmd.Ledger.open(), card).failures == []
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    assert "<|im_start|>assistant" in tokenizer.apply_chat_template([{"role": "user", "content": "1+1"}], tokenize=False,
                                                                    add_generation_prompt=True)
    assert AutoModelForCausalLM.from_pretrained(str(out)).num_parameters() > 0
    # a second export into the same place is refused; --push offline says so in one line, files stay ready
    from compass.cli import main as cli_main

    capsys.readouterr()
    assert cli_main(["export", dpo.run_id[:10], "--out", str(out)]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert cli_main(["export", dpo.run_id[:10], "--out", str(tmp_path / "again"), "--push", "me/tiny"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "offline" in err and "huggingface-cli upload me/tiny" in err
    assert (tmp_path / "again" / "model.safetensors").is_file()


def test_card_of_a_run_without_a_checkpoint_is_refused(chain):
    from compass.errors import CompassError

    with pytest.raises(CompassError, match="wrote no checkpoint"):
        card_cmd.build_card(card_cmd.Ledger.open(), card_cmd.CardInputs(chain[0]["pairs"].manifest.run_id))


def test_card_and_export_of_the_composed_vlm(chain, tmp_path):
    """The Phase 2 VLM (vision tower + projector + the DPO-merged LLM): parts counted from its weights, the evals of
    the LLM checkpoints it was made from, a processor in the export."""
    from compass.commands import export

    results = chain[0]
    vlm = results["vlm"].manifest
    ledger = card_cmd.Ledger.open()
    text = card_cmd.build_card(ledger, card_cmd.CardInputs(vlm.run_id))
    assert yaml.safe_load(text.split("---\n")[1])["pipeline_tag"] == "image-text-to-text"
    arch = card_cmd.arch_figures(ledger, ledger.run(vlm.run_id))
    decompose = results["parts"].manifest.metrics
    assert arch["params.vision_tower"] == decompose["parameters"]["vision"]  # counted by decompose from the model
    assert arch["params.projector"] == decompose["parameters"]["projector"]
    assert arch["params.total"] == arch["params.vision_tower"] + arch["params.projector"] + arch["params.language_model"] + \
        arch.get("params.lm_head", 0)
    for stage in ("eval_sft", "eval_dpo"):
        assert f"#run-{results[stage].manifest.run_id[:12]}" in text
    assert card_cmd.check_card(ledger, text).failures == []
    out = tmp_path / "vlm-export"
    export.export_run(ledger, card_cmd.CardInputs(vlm.run_id), out)
    assert (out / "processor_config.json").is_file() and (out / "README.md").read_text() == text
