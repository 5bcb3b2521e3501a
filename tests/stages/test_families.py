"""Every VLM family compass supports, on tiny random-weight models with the families' real chat templates: parts
resolved per family, SFT on DocExamples (loss falls, only the chosen parts change), task arithmetic 0.25, portable
outputs; text SFT + DPO on tiny Qwen3, Mistral, Gemma and Llama LLMs with their real templates."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from compass.errors import CompassError
from compass.models.families import FAMILIES, resolve, trainable_leaves
from compass.runner import execute_stage
from compass.stages import dpo, merge, sft
from support.tiny_families import TEXT_FAMILIES, VLM_BUILDERS, marked_mistral_template
from support.train_records import write_doc_examples, write_pairs, write_traces

torch.set_num_threads(1)

TINY = dict(global_batch_size=2, micro_batch_size=2, lora_r=4, lora_alpha=8, learning_rate=1e-2,
            max_length=1024, logging_steps=1, warmup_ratio=0.0)
VLMS = sorted(VLM_BUILDERS)


def load_vlm(path):
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(str(path))


@pytest.fixture(scope="module")
def mistral_template(tmp_path_factory):
    path = tmp_path_factory.mktemp("templates") / "mistral_small_3_1_training.jinja"
    path.write_text(marked_mistral_template(), encoding="utf-8")
    return path


def sft_inputs(model_dir, data, family, mistral_template) -> dict:
    inputs = {"model": model_dir, "data": data}
    if family in ("mistral3", "mistral"):  # TRL ships no training template for Mistral-Small-3.1
        inputs["chat_template"] = mistral_template
    return inputs


@pytest.mark.parametrize("family", VLMS)
def test_parts_cover_every_parameter_once(tiny_families, family):
    model = load_vlm(tiny_families(family))
    assert sum(p.numel() for p in model.parameters()) < 1_000_000
    parts = resolve(model)
    assert parts.family.model_type == family
    names = [n for n, _ in model.named_parameters()]
    owners = {n: parts.part_of(n) for n in names}
    assert {n for n, p in owners.items() if p is None} <= {"lm_head.weight"}
    for part in ("language_model", "vision_tower", "projector"):
        owned = {n for n, p in owners.items() if p == part}
        assert owned, part
        leaves = trainable_leaves(model, parts, [part])
        covered = {n for n in names if any(n == m or n.startswith(m + ".") for m in leaves.modules)}
        assert covered | set(leaves.parameters) == owned  # exactly the part, nothing more
        modules = dict(model.named_modules())
        assert not any(isinstance(modules[m], (torch.nn.ModuleList, torch.nn.ModuleDict)) for m in leaves.modules)
    projector = trainable_leaves(model, parts, ["projector"])
    if family == "qwen3_vl":
        assert {"model.visual.deepstack_merger_list.0", "model.visual.deepstack_merger_list.1",
                "model.visual.merger"} == set(projector.modules)
    if family == "llava_onevision":
        assert projector.parameters == ["model.image_newline"]


def test_unknown_class_fails_with_the_supported_list():
    with pytest.raises(CompassError, match=r"unsupported VLM class Linear; supported: LLaVA-OneVision .*Qwen3-VL"):
        resolve(torch.nn.Linear(2, 2))
    assert len(FAMILIES) == 7


@pytest.mark.slow
@pytest.mark.parametrize("family", VLMS)
def test_vlm_sft_merge_and_task_arithmetic(tiny_families, family, tmp_path, mistral_template):
    base_dir = tiny_families(family)
    data = write_doc_examples(tmp_path / "docs", 4)
    config = sft.Config(max_steps=6, merge=True, train="both", **TINY)
    result = execute_stage("sft", config, sft_inputs(base_dir, data, family, mistral_template), tmp_path / "sft")
    m = result.manifest.metrics
    assert m["last_loss"] < m["first_loss"]
    assert m["chat_template"] == {"llava_onevision": "model", "mistral3": "file:mistral_small_3_1_training.jinja"}.get(
        family, "trl")
    base_model = load_vlm(base_dir)
    base, merged = base_model.state_dict(), load_vlm(result.out_dir / "merged").state_dict()
    assert merged.keys() == base.keys()
    parts = resolve(base_model)
    family_of = parts.family
    by_part = {"language_model": [], "vision_tower": [], "projector": []}
    for key in base:
        part = parts.part_of(key)
        if part is not None:
            by_part[part].append(not torch.equal(base[key], merged[key]))
    assert not any(by_part["vision_tower"])  # frozen
    assert all(by_part["projector"])  # trained fully
    lora_layers = [not torch.equal(base[k], merged[k]) for k in base
                   if parts.part_of(k) == "language_model" and k.endswith(("q_proj.weight", "down_proj.weight"))]
    assert lora_layers and all(lora_layers)
    assert torch.equal(base["lm_head.weight"], merged["lm_head.weight"])

    # task arithmetic 0.25 on the files: every base key kept, shapes and dtypes equal
    from compass.models.merge import read_checkpoint

    merge_config = merge.Config(method="task_arithmetic", weights=[0.25])
    out = execute_stage("merge", merge_config, {"base": base_dir, "finetuned": result.out_dir / "merged"},
                        tmp_path / "ta").out_dir / "model"
    a, b = read_checkpoint(base_dir).tensors, read_checkpoint(out).tensors
    assert a.keys() == b.keys()
    assert all((a[k].shape, a[k].dtype) == (b[k].shape, b[k].dtype) for k in a)

    # portable: transformers alone, in a fresh process without compass imported, loads the model and sees the stock
    # processor class named in processor_config.json
    processor_class = json.loads((out / "processor_config.json").read_text())["processor_class"]
    assert processor_class == family_of.processor_class
    check_fresh_process_load(out, processor_class, family in ("gemma3", "idefics3"))


FRESH_LOAD = """
import json, sys
import transformers
from transformers import AutoModelForImageTextToText, AutoProcessor
path, processor_class, with_processor = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
model = AutoModelForImageTextToText.from_pretrained(path)
assert "compass" not in sys.modules
# the named class resolves to transformers' own
assert transformers.models.auto.processing_auto.processor_class_from_name(processor_class).__name__ == processor_class
if with_processor:
    processor = AutoProcessor.from_pretrained(path)
    assert type(processor).__name__ == processor_class, type(processor)
print(type(model).__name__)
"""


def check_fresh_process_load(path, processor_class: str, with_processor: bool) -> None:
    """Stock processors of OneVision / Qwen-VL / Pixtral / SmolVLM need torchvision, which this machine lacks: for
    those only the class name is checked; Gemma3 and Idefics3 load through AutoProcessor here."""
    done = subprocess.run([sys.executable, "-c", FRESH_LOAD, str(path), processor_class, "1" if with_processor else "0"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("ForConditionalGeneration")


@pytest.mark.slow
def test_train_vision_trains_the_tower_and_not_the_language_model(tiny_families, tmp_path):
    base_dir = tiny_families("qwen3_vl")
    data = write_doc_examples(tmp_path / "docs", 2)
    config = sft.Config(max_steps=2, merge=True, train="projector", train_vision=True, **TINY)
    result = execute_stage("sft", config, {"model": base_dir, "data": data}, tmp_path / "sft")
    assert result.manifest.metrics["lora"] is False
    base_model = load_vlm(base_dir)
    parts = resolve(base_model)
    base, merged = base_model.state_dict(), load_vlm(result.out_dir / "merged").state_dict()
    moved = {p: [] for p in ("language_model", "vision_tower", "projector")}
    for key in base:
        if parts.part_of(key) is not None and base[key].is_floating_point() and key.endswith("weight"):
            moved[parts.part_of(key)].append(not torch.equal(base[key], merged[key]))
    assert all(moved["projector"]) and any(moved["vision_tower"]) and not any(moved["language_model"])


def test_mistral_without_a_marked_template_refuses_with_the_advice(tiny_families, tmp_path):
    data = write_traces(tmp_path / "traces.jsonl", 4)
    with pytest.raises(CompassError, match=r"TRL ships no training template for it; pass --chat-template PATH"):
        execute_stage("sft", sft.Config(max_steps=1, **TINY), {"model": tiny_families("mistral"), "data": data},
                      tmp_path / "o")
    assert not (tmp_path / "o" / "manifest.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize("family", TEXT_FAMILIES)
def test_text_sft_and_dpo_with_the_real_template(tiny_families, family, tmp_path, mistral_template):
    from compass.models.merge import read_checkpoint

    base_dir = tiny_families(family)
    traces = write_traces(tmp_path / "traces.jsonl", 8)
    tied = family in ("qwen3", "gemma")
    # with tied embeddings, a fully trained embed_tokens stays tied (no extra lm_head.weight after the merge)
    extra = dict(modules_to_save=["embed_tokens"]) if tied else {}
    config = sft.Config(max_steps=6, merge=True, **TINY, **extra)
    result = execute_stage("sft", config, sft_inputs(base_dir, traces, family, mistral_template), tmp_path / "sft")
    m = result.manifest.metrics
    assert m["last_loss"] < m["first_loss"] and m["assistant_tokens"] > 0
    assert m["chat_template"] == ("file:mistral_small_3_1_training.jinja" if family == "mistral" else "trl")
    merged = result.out_dir / "merged"
    base_keys = read_checkpoint(base_dir).tensors.keys()
    assert read_checkpoint(merged).tensors.keys() == base_keys
    assert ("lm_head.weight" in base_keys) is (not tied)
    # the merged model keeps the base's own (inference) template
    assert (merged / "tokenizer_config.json").read_bytes() == (base_dir / "tokenizer_config.json").read_bytes()
    # portable: plain transformers loads it in a fresh process
    script = ("import sys; from transformers import AutoModelForCausalLM, AutoTokenizer; "
              "AutoModelForCausalLM.from_pretrained(sys.argv[1]); AutoTokenizer.from_pretrained(sys.argv[1]); "
              "assert 'compass' not in sys.modules")
    done = subprocess.run([sys.executable, "-c", script, str(merged)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]

    pairs = write_pairs(tmp_path / "pairs.jsonl", 4)
    # the published Mistral template cannot render a string system prompt: DPO takes the fixed copy too
    dpo_inputs = sft_inputs(merged, None, family, mistral_template)
    dpo_inputs.pop("data")
    out = execute_stage("dpo", dpo.Config(max_steps=2, merge=True, **{**TINY, "max_length": 512}),
                        {**dpo_inputs, "pairs": pairs}, tmp_path / "dpo")
    assert out.manifest.metrics["steps"] == 2
    assert read_checkpoint(out.out_dir / "merged").tensors.keys() == base_keys


def test_stop_ids_include_the_templates_end_of_turn(tiny_families):
    from transformers import GenerationConfig

    from compass.generate.local_model import stop_token_ids
    from compass.models.processors import load_processor

    processor = load_processor(tiny_families("gemma3"))
    tok = processor.tokenizer
    # a generation config naming only <eos>: the template's <end_of_turn> still stops generation
    ids = stop_token_ids(GenerationConfig(eos_token_id=tok.eos_token_id), tok, processor)
    assert ids == sorted({tok.eos_token_id, tok.convert_tokens_to_ids("<end_of_turn>")})
    qwen = load_processor(tiny_families("qwen3_vl"))
    assert qwen.tokenizer.convert_tokens_to_ids("<|im_end|>") in stop_token_ids(GenerationConfig(), qwen.tokenizer, qwen)


def fake_hub_cache(root, repo_id: str, model_dir, commit: str = "a" * 40):
    import shutil

    folder = root / f"models--{repo_id.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    shutil.copytree(model_dir, folder / "snapshots" / commit)
    return commit


@pytest.mark.slow
def test_model_by_hub_id_from_the_cache_offline(tiny_families, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    commit = fake_hub_cache(tmp_path / "hub", "tiny-org/tiny-qwen3", tiny_families("qwen3"))
    traces = write_traces(tmp_path / "traces.jsonl", 4)
    result = execute_stage("sft", sft.Config(max_steps=1, **TINY), {"model": "tiny-org/tiny-qwen3", "data": traces},
                           tmp_path / "sft")
    assert result.manifest.metrics["model_hub"] == f"tiny-org/tiny-qwen3@{commit}"
    hashed = json.dumps(result.manifest.model_dump(mode="json")["inputs"])
    assert "model.safetensors" in hashed  # the snapshot's files are the run's input hashes
    with pytest.raises(CompassError, match=r"'tiny-org/absent' \(revision main\) is not in the local hub cache"):
        execute_stage("sft", sft.Config(max_steps=1, **TINY), {"model": "tiny-org/absent", "data": traces},
                      tmp_path / "sft2")


HIDE_NUM2WORDS = ("import sys; sys.modules['num2words'] = None  # as if not installed\n"
                  "from compass.cli import main; sys.exit(main(sys.argv[1:]))")


def test_smolvlm_without_num2words_is_one_line(tiny_families, tmp_path):
    """With num2words hidden (a None entry in sys.modules makes both its import and find_spec fail), `compass sft` on a
    SmolVLM directory stops with one line naming the extra, exit 2, and writes nothing."""
    data = write_doc_examples(tmp_path / "docs", 1)
    done = subprocess.run([sys.executable, "-c", HIDE_NUM2WORDS, "sft", "--model", str(tiny_families("smolvlm")),
                           "--data", str(data), "--out", str(tmp_path / "sft"), "--max-steps", "1"],
                          capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stderr) == (
        2, "error: the SmolVLM processor needs the package 'num2words': pip install 'compass-vlm[smolvlm]'\n")
    assert not (tmp_path / "sft").exists()


@pytest.mark.parametrize("family", ["qwen3_vl", "gemma3", "mistral3"])
def test_images_are_capped_to_fit_the_budget_and_the_cap_is_reported(tiny_families, family):
    from PIL import Image

    from compass.models.processors import fit_images, load_processor, prompt_tokens

    processor = load_processor(tiny_families(family))

    def prompt_for(n: int) -> str:
        parts = [{"type": "image"} for _ in range(n)] + [{"type": "text", "text": "What were net sales?"}]
        return processor.apply_chat_template([{"role": "user", "content": parts}], add_generation_prompt=True,
                                             tokenize=False)

    pages = [Image.new("RGB", (200, 280), (i * 40, 90, 150)) for i in range(4)]
    full = prompt_tokens(processor, prompt_for(4), pages)
    kept, fit = fit_images(processor, prompt_for, pages, budget=full)
    assert (fit.max_long_side, fit.images_kept, fit.tokens) == (None, 4, full)  # fits as given: untouched
    one = prompt_tokens(processor, prompt_for(1), pages[:1])
    kept, fit = fit_images(processor, prompt_for, pages, budget=one + 1)
    assert fit.images_kept == len(kept) == 1 and fit.tokens == prompt_tokens(processor, prompt_for(1), kept) <= one + 1
    with pytest.raises(CompassError, match="over the budget of 3"):
        fit_images(processor, prompt_for, pages, budget=3)


@pytest.mark.slow
@pytest.mark.parametrize("family", VLMS)
def test_mmlongbench_eval_with_cot_both_runs_on_each_family(tiny_families, family, tmp_path):
    from compass.io import write_jsonl
    from compass.longdoc.synthetic_reports import generate_reports
    from compass.stages.evaluate import Config

    docs = tmp_path / "pdfs"
    docs.mkdir()
    reports = generate_reports(1, seed=3, min_extra_pages=0, max_extra_pages=0, ja_fraction=0.5)
    for report in reports:
        (docs / f"{report.doc_id}.pdf").write_bytes(report.pdf)
    questions = [q for r in reports for q in r.questions][:2]
    write_jsonl(tmp_path / "questions.jsonl", questions)
    config = Config(tasks=["mmlongbench"], cot="both", max_new_tokens=4, batch_size=2,
                    mmlongbench={"dpi": 20, "max_pages": 2})
    result = execute_stage("eval", config, {"model": tiny_families(family), "mmlongbench": tmp_path / "questions.jsonl",
                                            "mmlongbench_docs": docs}, tmp_path / "out")
    m = result.manifest.metrics
    assert m["mmlongbench.cot_on.n"] == m["mmlongbench.cot_off.n"] == len(questions)
    for variant in ("cot_on", "cot_off"):
        assert 0 <= m[f"mmlongbench.{variant}.mean_output_tokens"] <= 4


def test_a_failed_merge_leaves_no_merged_directory(tiny_families, tmp_path):
    from safetensors.torch import save_file

    from compass.train import model as M

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    save_file({"lm_head.weight": torch.zeros(3, 3)}, str(adapter / M.TRAINED_PARTS_FILE))
    with pytest.raises(CompassError, match=r"tensors \['lm_head.weight'\] do not fit the base model"):
        M.write_merged(tiny_families("idefics3"), adapter, tmp_path / "merged")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]  # nothing half-written, no temp dir left


def test_local_generation_caps_pages_to_the_models_positions_and_records_it(tiny_families, tmp_path):
    import shutil

    from PIL import Image

    from compass.generate.base import GenRequest
    from compass.generate.local_model import LocalModel
    from compass.models.processors import load_processor, prompt_tokens

    model_dir = tmp_path / "qwen3_vl"
    shutil.copytree(tiny_families("qwen3_vl"), model_dir)
    paths = []
    for i in range(4):
        Image.new("RGB", (200, 280), (i * 50, 90, 150)).save(tmp_path / f"p{i}.png")
        paths.append(str(tmp_path / f"p{i}.png"))
    parts = [{"type": "image"} for _ in paths] + [{"type": "text", "text": "Net sales?"}]
    messages = [{"role": "user", "content": parts}]
    processor = load_processor(model_dir)
    one = prompt_tokens(processor, processor.apply_chat_template(
        [{"role": "user", "content": parts[:1] + parts[-1:]}], add_generation_prompt=True, tokenize=False),
        [Image.open(paths[0]).convert("RGB")])
    config = json.loads((model_dir / "config.json").read_text())
    config["text_config"]["max_position_embeddings"] = one + 3  # room for one page and 3 new tokens
    (model_dir / "config.json").write_text(json.dumps(config))
    request = GenRequest(id="q", messages=messages, max_tokens=3, temperature=0.0, meta={"images": paths})
    [result] = list(LocalModel(model_dir, batch_size=1).generate([request]))
    assert result.ok and result.meta["image_fit"] == {"max_long_side": 224, "images_kept": 1, "tokens": one}
    assert result.meta["prompt_tokens"] == one
    text_only = prompt_tokens(processor, processor.apply_chat_template(
        [{"role": "user", "content": parts[-1:]}], add_generation_prompt=True, tokenize=False), [])
    assert result.meta["tokens_per_page"] == one - text_only


def test_local_generation_feeds_one_bos_where_the_template_writes_it(tiny_families, tmp_path):
    """Gemma3's template starts with <bos> and its tokenizer adds one too (the real one's post-processor does; the
    tiny one is given it here): the rendered chat is encoded without added special tokens, so the model sees
    exactly one BOS (two shift every figure of a Gemma eval)."""
    import shutil

    from PIL import Image

    from compass.generate.base import GenRequest
    from compass.generate.local_model import LocalModel

    model_dir = tmp_path / "gemma3"
    shutil.copytree(tiny_families("gemma3"), model_dir)
    tokenizer_json = json.loads((model_dir / "tokenizer.json").read_text())
    [bos_id] = [t["id"] for t in tokenizer_json["added_tokens"] if t["content"] == "<bos>"]
    bos_first = [{"SpecialToken": {"id": "<bos>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}]
    tokenizer_json["post_processor"] = {
        "type": "TemplateProcessing", "single": bos_first, "pair": bos_first + [{"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<bos>": {"id": "<bos>", "ids": [bos_id], "tokens": ["<bos>"]}}}
    (model_dir / "tokenizer.json").write_text(json.dumps(tokenizer_json))
    Image.new("RGB", (200, 280), (10, 90, 150)).save(tmp_path / "p0.png")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Net sales?"}]}]
    request = GenRequest(id="q", messages=messages, max_tokens=2, temperature=0.0, meta={"images": [str(tmp_path / "p0.png")]})
    model = LocalModel(model_dir, batch_size=1)
    model._load()
    assert model.tokenizer("x")["input_ids"][0] == bos_id  # the tokenizer adds BOS, as Gemma's does
    fed, generate = [], model._model.generate
    model._model.generate = lambda **kw: (fed.append(kw["input_ids"][0].tolist()), generate(**kw))[1]
    [result] = list(model.generate([request]))
    bos = model.tokenizer.bos_token_id
    assert result.ok and model.chat_prompt(messages).startswith(model.tokenizer.bos_token)
    assert fed[0][0] == bos and fed[0].count(bos) == 1
