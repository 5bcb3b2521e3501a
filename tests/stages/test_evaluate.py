"""The eval stage end to end: the tiny LLM on math + fin-harness + EDINET fixtures (local backend), the tiny
VLM on generated PDFs (MMLongBench style), and a real HTTP server (scripted replies) for the openai backend
with the LLM extractor, where the expected metrics are known exactly."""
import json
import re
from pathlib import Path

import pytest

from compass.evals import mmlongbench
from compass.io import read_jsonl
from compass.runner import execute_stage
from compass.stages.evaluate import Config

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "evals"
HARNESS = Path(__file__).resolve().parents[1] / "fixtures" / "finharness" / "checkout"


def rows_of(out: Path, name: str) -> list[dict]:
    return read_jsonl(out / "predictions" / f"{name}.jsonl")


@pytest.fixture(scope="module")
def llm_run(tiny_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval-llm")
    config = Config(tasks=["gsm8k", "problems", "chabsa", "fp2", "edinet_fraud", "edinet_industry"], cot="both",
                    max_new_tokens=8, batch_size=4, limit=3, finharness={"repo": str(HARNESS)})  # prompts: its task files
    inputs = {"model": tiny_models.llm, "gsm8k": FIXTURES / "gsm8k_test.jsonl", "problems": FIXTURES / "problems.jsonl",
              "chabsa": FIXTURES / "chabsa", "fp2": FIXTURES / "fp2.json", "edinet_fraud": FIXTURES / "edinet_fraud.jsonl",
              "edinet_industry": FIXTURES / "edinet_industry.jsonl"}
    result = execute_stage("eval", config, inputs, out)
    return config, inputs, result


def test_predictions_files_hold_input_output_extraction_score_and_tokens(llm_run):
    _, _, result = llm_run
    out = result.out_dir
    names = sorted(p.name for p in (out / "predictions").iterdir())
    assert names == ["chabsa.jsonl", "edinet_fraud.jsonl", "edinet_industry.jsonl", "fp2.jsonl", "gsm8k.cot_off.jsonl",
                     "gsm8k.cot_on.jsonl", "problems.cot_off.jsonl", "problems.cot_on.jsonl"]
    on, off = rows_of(out, "gsm8k.cot_on"), rows_of(out, "gsm8k.cot_off")
    assert len(on) == len(off) == 3
    for row in on + off:
        assert {"id", "input", "raw_output", "extracted", "reference", "score", "format_valid", "output_tokens"} <= set(row)
        assert isinstance(row["raw_output"], str) and 0 < row["output_tokens"] <= 8
    assert on[0]["input"][0]["content"].startswith("<cot>\n") and not off[0]["input"][0]["content"].startswith("<cot>")
    assert [r["reference"] for r in on] == ["7", "60", "2000"]
    chabsa = rows_of(out, "chabsa")
    assert len(chabsa) == 3 and all(len(r["logprobs"]) == 2 and r["extracted"] in ("positive", "negative") for r in chabsa)
    fraud = rows_of(out, "edinet_fraud")
    assert all(0.0 < r["p_positive"] < 1.0 for r in fraud) and [r["reference"] for r in fraud] == [1, 0, 0]


def test_metric_names_values_and_manifest(llm_run):
    _, _, result = llm_run
    metrics = result.manifest.metrics
    out = result.out_dir
    assert json.loads((out / "metrics.json").read_text()) == metrics
    for name in ("gsm8k.cot_on.accuracy", "gsm8k.cot_off.accuracy", "gsm8k.cot_on.format_valid_rate",
                 "gsm8k.cot_off.mean_output_tokens", "gsm8k.cot_gain.accuracy", "gsm8k.cot_token_ratio",
                 "problems.cot_on.accuracy", "chabsa.accuracy", "chabsa.accuracy_norm", "chabsa.macro_f1", "fp2.accuracy",
                 "edinet_fraud.accuracy", "edinet_fraud.f1", "edinet_fraud.mcc", "edinet_fraud.roc_auc_loglikelihood",
                 "edinet_fraud.unparseable_rate", "edinet_industry.macro_f1", "edinet_industry.mcc"):
        assert name in metrics, name
    assert "gsm8k.accuracy" not in metrics  # with cot both every math metric names its variant
    for name in ("gsm8k.cot_on", "gsm8k.cot_off", "problems.cot_off"):
        rows = rows_of(out, name)
        assert metrics[f"{name}.accuracy"] == sum(r["score"] for r in rows) / len(rows)
        assert metrics[f"{name}.mean_output_tokens"] == sum(r["output_tokens"] for r in rows) / len(rows)
    assert metrics["gsm8k.cot_gain.accuracy"] == metrics["gsm8k.cot_on.accuracy"] - metrics["gsm8k.cot_off.accuracy"]
    assert metrics["gsm8k.cot_token_ratio"] == (metrics["gsm8k.cot_on.mean_output_tokens"]
                                                / metrics["gsm8k.cot_off.mean_output_tokens"])
    assert metrics["chabsa.n"] == 3 and metrics["fp2.n"] == 1  # limit 3 applies per task
    assert "| gsm8k.cot_on |" in (out / "summary.md").read_text()


def test_rerun_with_same_inputs_is_cached(llm_run):
    config, inputs, result = llm_run
    again = execute_stage("eval", config, inputs, result.out_dir)
    assert again.cached and again.manifest.run_id == result.manifest.run_id


def test_compare_cli_prints_runs_side_by_side(llm_run, tmp_path, capsys):
    from compass.cli import main

    _, _, result = llm_run
    assert main(["eval", "compare", str(result.out_dir), str(result.out_dir), "--tasks", "chabsa"]) == 0
    out = capsys.readouterr().out
    name = result.out_dir.name
    assert out.splitlines()[0] == "chabsa" and f"1:{name}" in out and f"2:{name}" in out
    accuracy = result.manifest.metrics["chabsa.accuracy"]
    assert re.search(rf"accuracy\s+{accuracy:.3f}\s+{accuracy:.3f}", out)
    assert main(["eval", "compare", str(tmp_path)]) == 2  # not a run: one-line error


def test_mmlongbench_on_tiny_vlm_with_generated_pdfs(tiny_models, tmp_path):
    from compass.io import write_jsonl
    from compass.longdoc.synthetic_reports import generate_reports

    docs = tmp_path / "pdfs"
    docs.mkdir()
    reports = generate_reports(1, seed=3, min_extra_pages=0, max_extra_pages=0, ja_fraction=0.5)
    for report in reports:
        (docs / f"{report.doc_id}.pdf").write_bytes(report.pdf)
    questions = [q for r in reports for q in r.questions]
    write_jsonl(tmp_path / "questions.jsonl", questions)
    config = Config(tasks=["mmlongbench"], cot="on", max_new_tokens=6, batch_size=4,
                    mmlongbench={"dpi": 20, "max_pages": 4})
    result = execute_stage("eval", config, {"model": tiny_models.vlm, "mmlongbench": tmp_path / "questions.jsonl",
                                            "mmlongbench_docs": docs}, tmp_path / "out")
    metrics = result.manifest.metrics
    rows = rows_of(result.out_dir, "mmlongbench.cot_on")
    assert len(rows) == len(questions)
    pages = reports[0].num_pages
    assert all(r["input"]["pages_shown"] == min(pages, 4) for r in rows)
    assert rows[0]["input"]["prompt"].startswith("<cot> | Page 1:<image> Page 2:<image>")
    assert metrics["mmlongbench.cot_on.docs_truncated"] == int(pages > 4)
    n_single = sum(len(q.gold_pages) == 1 for q in questions)
    n_cross = sum(len(q.gold_pages) > 1 for q in questions)
    assert metrics["mmlongbench.cot_on.single_page.n"] == n_single and metrics["mmlongbench.cot_on.cross_page.n"] == n_cross
    assert metrics["mmlongbench.cot_on.unanswerable.n"] == len(questions) - n_single - n_cross
    assert metrics["mmlongbench.cot_on.n"] == len(questions)
    assert sum(r["score"] for r in rows) / len(rows) == metrics["mmlongbench.cot_on.accuracy"]
    rendered = sorted((result.out_dir / ".pages").rglob("*.png"))
    assert len(rendered) == min(pages, 4) and "outputs" not in rendered[0].name
    assert not any(k.startswith(".pages") for k in result.manifest.outputs)  # a cache, not an artifact


def _annual_report_pdf(path: Path) -> None:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("helvetica", size=14)
    for text in ("Employees: 1,250. Head office: Osaka.", "Operating margin: 12.5%. Retail segment grew."):
        pdf.add_page()
        pdf.cell(text=text)
    pdf.output(str(path))


def test_openai_backend_with_llm_extractor_gives_exact_metrics(tmp_path):
    from support.scripted_server import ScriptedServer

    docs = tmp_path / "docs"
    docs.mkdir()
    _annual_report_pdf(docs / "annual_report.pdf")
    # the "model" answers by question; with <cot> it gets the list question right, without it wrong
    answers = {"employees": "<think>Page 1 gives the headcount.</think>The company had FINAL=1250 employees",
               "margin": "FINAL=0.125 as a fraction", "segments": "FINAL=['Osaka', 'Retail']",
               "patents": "FINAL=Not answerable"}

    def reply(body):
        messages = body["messages"]
        if messages[0]["role"] == "system" and messages[0]["content"] == mmlongbench.EXTRACTOR_PROMPT:
            found = re.search(r"FINAL=(.*?)( employees| as a fraction)?$", messages[1]["content"], re.MULTILINE)
            return f"Extracted answer: {found.group(1)}\nAnswer format: String" if found else "no idea"
        question = messages[-1]["content"][-1]["text"]
        key = next(k for k in ("employees", "margin", "segments", "patents") if k in question)
        cot = messages[0]["role"] == "system" and messages[0]["content"] == "<cot>"
        if key == "segments" and not cot:
            return "FINAL=['Osaka', 'Kyoto']"
        return answers[key]

    with ScriptedServer(reply) as server:
        settings = {"base_urls": [server.base_url], "model": "scripted", "max_retries": 0}
        config = Config(tasks=["mmlongbench"], backend="openai", openai=settings, cot="both",
                        mmlongbench={"extractor": "llm", "extractor_openai": settings, "dpi": 30})
        result = execute_stage("eval", config, {"mmlongbench": FIXTURES / "mmlongbench_samples.json",
                                                "mmlongbench_docs": docs}, tmp_path / "out")
        seen = server.requests_seen
    m = result.manifest.metrics
    assert m["mmlongbench.cot_on.accuracy"] == 1.0 and m["mmlongbench.cot_on.f1"] == 1.0
    assert m["mmlongbench.cot_off.accuracy"] == 0.75
    assert m["mmlongbench.cot_off.recall"] == pytest.approx(2 / 3) and m["mmlongbench.cot_off.precision"] == pytest.approx(2 / 3)
    assert m["mmlongbench.cot_off.single_page.accuracy"] == 1.0 and m["mmlongbench.cot_off.cross_page.accuracy"] == 0.0
    assert m["mmlongbench.cot_off.unanswerable.accuracy"] == 1.0
    assert m["mmlongbench.cot_gain.accuracy"] == 0.25
    assert m["mmlongbench.cot_on.extraction_failures"] == 0
    on_tokens = sum(len(a.split()) for a in answers.values()) / 4
    assert m["mmlongbench.cot_on.mean_output_tokens"] == on_tokens
    rows = rows_of(result.out_dir, "mmlongbench.cot_off")
    assert [r["extracted"] for r in rows] == ["1250", "0.125", "['Osaka', 'Kyoto']", "Not answerable"]
    model_requests = [b for b in seen if b["messages"][0]["content"] != mmlongbench.EXTRACTOR_PROMPT]
    assert len(model_requests) == 8  # 4 questions x (cot on, cot off)
    parts = model_requests[0]["messages"][-1]["content"]
    assert [p["type"] for p in parts] == ["text", "image_url", "text", "image_url", "text"]
    assert parts[0]["text"] == "Page 1:\n" and parts[2]["text"] == "Page 2:\n"
    assert parts[1]["image_url"]["url"].startswith("data:image/png;base64,")


@pytest.mark.parametrize("args, message", [
    (["--tasks", "gsm8k,chabsa"], "task chabsa: give the harness's data with --chabsa PATH"),
    (["--tasks", "chabsa", "--chabsa", str(FIXTURES / "chabsa")], "fin-harness prompts are read from its task files: give "
     "a checkout of pfnet-research/japanese-lm-fin-harness with --finharness-repo DIR"),
    (["--tasks", "problems"], "task problems: give its data with --problems PATH"),
    (["--tasks", "mmlongbench"], "task mmlongbench needs --mmlongbench QUESTIONS and --mmlongbench-docs PDF_DIR"),
    (["--tasks", "gsm8k", "--cot", "maybe"], "cot"),
    (["--tasks", "gsm9k"], "tasks"),
])
def test_bad_requests_fail_in_one_line_before_any_generation(tiny_models, tmp_path, capsys, args, message):
    from compass.cli import main

    code = main(["eval", "--model", str(tiny_models.llm), "--gsm8k", str(FIXTURES / "gsm8k_test.jsonl"),
                 "--out", str(tmp_path / "out")] + args)
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out" / "predictions").exists()


def test_mmlongbench_needs_a_vlm_on_the_local_backend(tiny_models, tmp_path, capsys):
    from compass.cli import main

    (tmp_path / "docs").mkdir()
    code = main(["eval", "--model", str(tiny_models.llm), "--tasks", "mmlongbench", "--mmlongbench",
                 str(FIXTURES / "mmlongbench_samples.json"), "--mmlongbench-docs", str(tmp_path / "docs"),
                 "--out", str(tmp_path / "o")])
    assert code == 2 and "needs a vision-language model" in capsys.readouterr().err


# --- japanese-lm-fin-harness: lm-evaluation-harness (reference) beside compass's log-likelihoods ----------


@pytest.fixture(scope="module")
def finharness_run(tiny_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval-finharness")
    config = Config(tasks=["chabsa", "cma_basics"], finharness={"protocol": "both", "repo": str(HARNESS)}, batch_size=4)
    inputs = {"model": tiny_models.llm, "chabsa": FIXTURES / "chabsa"}  # cma_basics: the checkout's own data.json
    return execute_stage("eval", config, inputs, out)


def test_compass_log_likelihoods_equal_lm_eval_per_item(finharness_run):
    out = finharness_run.out_dir
    metrics = finharness_run.manifest.metrics
    for task, n in (("chabsa", 6), ("cma_basics", 4)):
        # the harness's default prompt version is the one compass's own path implements
        reference, compass = rows_of(out, f"{task}.reference.vdefault"), rows_of(out, f"{task}.compass")
        assert len(reference) == len(compass) == n and metrics[f"{task}.compass.n"] == n
        best = "v" + metrics[f"{task}.reference.prompt_version"].replace(".", "_")
        assert rows_of(out, f"{task}.reference") == rows_of(out, f"{task}.reference.{best}")
        for ref, own in zip(reference, compass):
            assert ref["id"] == own["id"] and ref["input"] == own["input"]  # the same prompt, built by lm-eval
            assert ref["options"] == [o if task == "cma_basics" else " " + o for o in own["options"]]
            assert own["logprobs"] == pytest.approx(ref["logprobs"], abs=1e-4)
    # the default version's figures are compass's (same prompts, same log-likelihoods)
    assert metrics["cma_basics.reference.vdefault.accuracy"] == metrics["cma_basics.compass.accuracy"]
    assert metrics["chabsa.reference.vdefault.accuracy"] == metrics["chabsa.compass.accuracy"]


def test_reference_takes_the_leaderboards_best_prompt_version(finharness_run):
    metrics = finharness_run.manifest.metrics
    averages = {}
    for version in ("default", "1.0-0.1"):
        key = "v" + version.replace(".", "_")
        # make_leaderboard.py: chabsa's f1, cma_basics' acc, averaged over the tasks (zeros left out)
        values = [v for v in (metrics[f"chabsa.reference.{key}.macro_f1"], metrics[f"cma_basics.reference.{key}.accuracy"]) if v]
        averages[version] = sum(values) / len(values) if values else 0.0
        assert metrics[f"chabsa.reference.{key}.leaderboard_average"] == pytest.approx(averages[version])
    best = "1.0-0.1" if averages["1.0-0.1"] > averages["default"] else "default"
    assert metrics["chabsa.reference.prompt_version"] == metrics["cma_basics.reference.prompt_version"] == best
    key = "v" + best.replace(".", "_")
    assert metrics["chabsa.reference.macro_f1"] == metrics[f"chabsa.reference.{key}.macro_f1"]
    assert metrics["cma_basics.reference.accuracy"] == metrics[f"cma_basics.reference.{key}.accuracy"]


def test_chabsa_macro_f1_the_harness_way_and_compass_way(finharness_run):
    from sklearn.metrics import f1_score

    out, metrics = finharness_run.out_dir, finharness_run.manifest.metrics
    reference = rows_of(out, "chabsa.reference")
    golds, preds = [r["reference"] for r in reference], [r["extracted"].strip() for r in reference]
    assert metrics["chabsa.reference.macro_f1"] == pytest.approx(f1_score(golds, preds, average="macro") * 1.5)
    compass = rows_of(out, "chabsa.compass")
    golds, preds = [r["reference"] for r in compass], [r["extracted"] for r in compass]
    two_labels = f1_score(golds, preds, labels=["positive", "negative"], average="macro", zero_division=0.0)
    assert metrics["chabsa.compass.macro_f1"] == pytest.approx(two_labels)
    assert (out / ".lm_eval_tasks" / "chabsa" / "chabsa.yaml").read_text().count("metric:") == 3  # f1_norm dropped


def test_reference_protocol_needs_the_checkout(tmp_path, capsys):
    from compass.cli import main

    code = main(["eval", "--tasks", "cma_basics", "--finharness-protocol", "reference", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "--finharness-repo DIR" in err and len(err.strip().splitlines()) == 1


# --- GSM8K / MGSM-ja: lm-eval's gsm8k and mgsm_native_cot_ja beside the recipe's XML protocol ---------------

GSM8K_CHECKOUT = Path(__file__).resolve().parents[1] / "fixtures" / "gsm8k"  # real openai/grade-school-math rows
MGSM_ROWS = Path(__file__).resolve().parents[1] / "fixtures" / "mgsm" / "mgsm_ja_rows.tsv"  # real url-nlp rows


def test_lm_eval_math_protocols_beside_the_xml_protocol(tiny_models, tmp_path):
    config = Config(tasks=["gsm8k", "mgsm_ja"], gsm8k={"protocol": "both", "repo": str(GSM8K_CHECKOUT)},
                    mgsm_ja={"protocol": "reference"}, limit=1, max_new_tokens=8, batch_size=2)  # lm-eval generates 256
    result = execute_stage("eval", config, {"model": tiny_models.llm, "mgsm_ja": MGSM_ROWS}, tmp_path / "out")
    metrics, out = result.manifest.metrics, result.out_dir
    for name in ("gsm8k.reference", "mgsm_ja.reference"):
        rows = rows_of(out, name)
        assert metrics[f"{name}.n"] == len(rows) == 1
        for kind in ("strict", "flexible"):  # lm-eval's two extractions, each its exact match
            assert metrics[f"{name}.exact_match_{kind}"] == rows[0][f"exact_match_{kind}"]
            assert all(f"extracted_{kind}" in r and isinstance(r["raw_output"], str) for r in rows)
    gsm = rows_of(out, "gsm8k.reference")
    shots = [json.loads(line)["question"] for line in (GSM8K_CHECKOUT / "grade_school_math/data/train.jsonl").open()]
    assert gsm[0]["input"].count("Question:") == 6 and all(q in gsm[0]["input"] for q in shots)  # 5-shot from train
    assert gsm[0]["input"].endswith("Question: Janet’s ducks lay 16 eggs per day. She eats three for breakfast every "
                                    "morning and bakes muffins for her friends every day with four. She sells the "
                                    "remainder at the farmers' market daily for $2 per fresh duck egg. How much in "
                                    "dollars does she make every day at the farmers' market?\nAnswer:")
    mgsm = rows_of(out, "mgsm_ja.reference")
    assert mgsm[0]["input"].startswith("問題： ジャネットのアヒルは") and mgsm[0]["input"].endswith("\nステップごとの答え:")
    assert [r["reference"] for r in mgsm] == ["18"]
    # the recipe's protocol on the checkout's test file, named beside the reference
    assert metrics["gsm8k.compass.n"] == 1 and "gsm8k.compass.format_valid_rate" in metrics
    assert [r["reference"] for r in rows_of(out, "gsm8k.compass")] == ["18"]
