"""EDINET-Bench reference protocol: the repo's prompt files read from a checkout, its JSON reading (first
object, reasoning/prob/prediction), its metrics with dropped rows counted, industry as mean +- std over 3
runs; compass protocol beside it with its log-likelihood ROC-AUC named as such; rows in the hub's schema load
from .jsonl and .parquet as published."""
import json
import math
from pathlib import Path

import pytest

from compass.errors import CompassError
from compass.evals import edinet
from compass.generate.base import GenResult
from compass.runner import execute_stage
from compass.stages.evaluate import Config
from support.scripted_server import ScriptedServer, prompt_key

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "evals"
# hub features per config (dataset card of SakanaAI/EDINET-Bench, revision dcb683b)
HUB_FIELDS = {
    "edinet_fraud": {"meta", "summary", "bs", "pl", "cf", "text", "label", "explanation", "edinet_code",
                     "ammended_doc_id", "doc_id", "file_path"},
    "edinet_earnings": {"meta", "summary", "bs", "pl", "cf", "text", "label", "naive_prediction", "edinet_code",
                        "doc_id", "previous_year_file_path", "current_year_file_path"},
    "edinet_industry": {"meta", "summary", "bs", "pl", "cf", "text", "industry", "edinet_code", "doc_id", "file_path"},
}
FILES = {"edinet_fraud": "edinet_fraud.jsonl", "edinet_earnings": "edinet_earnings.jsonl",
         "edinet_industry": "edinet_industry.jsonl"}


@pytest.fixture
def checkout(tmp_path):
    """A stand-in checkout: prompt/<config>.yaml as block scalars, like the repo's (texts written for the test)."""
    root = tmp_path / "EDINET-Bench"
    (root / "prompt").mkdir(parents=True)
    for task, config in edinet.TASKS.items():
        (root / "prompt" / f"{config}.yaml").write_text(
            f"prompt: |\n  STAND-IN {config} instruction.\n  Respond with JSON.\n  The report is as follows:\n",
            encoding="utf-8")
    # the predict scripts' --system_prompt argument, in the layout of the repo's argparse call (text written for the test)
    for script in set(edinet.PREDICT_SCRIPTS.values()):
        (root / script).parent.mkdir(parents=True, exist_ok=True)
        (root / script).write_text('import argparse\nparser = argparse.ArgumentParser()\nparser.add_argument(\n'
                                   '    "--system_prompt",\n    type=str,\n    default="STAND-IN analyst.",\n)\n', encoding="utf-8")
    return root


@pytest.mark.parametrize("task", sorted(FILES))
def test_fixture_rows_have_the_hub_schema_and_load_from_parquet(task, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [json.loads(line) for line in (FIXTURES / FILES[task]).read_text(encoding="utf-8").splitlines()]
    assert all(set(r) == HUB_FIELDS[task] for r in rows)
    assert all(isinstance(r[k], str) for r in rows for k in ("meta", "summary", "bs", "pl", "cf", "text"))
    parquet = tmp_path / "train-00000-of-00001.parquet"
    pq.write_table(pa.Table.from_pylist(rows), parquet)
    from_jsonl = edinet.load_items(task, FIXTURES / FILES[task], None, ("summary", "bs", "pl", "cf"), None)
    from_parquet = edinet.load_items(task, parquet, None, ("summary", "bs", "pl", "cf"), None)
    assert from_parquet == from_jsonl and len(from_jsonl) == len(rows)
    assert dict(from_jsonl[0].sheet_values)["text"] == rows[0]["text"]  # every sheet kept as published


def test_prompt_is_read_from_the_checkout(checkout, tmp_path):
    prompt = edinet.load_reference_prompt(checkout, "edinet_fraud")
    assert prompt == "STAND-IN fraud_detection instruction.\nRespond with JSON.\nThe report is as follows:\n"
    with pytest.raises(CompassError, match="not a checkout of EDINET-Bench"):
        edinet.load_reference_prompt(tmp_path, "edinet_fraud")
    item = edinet.load_items("edinet_fraud", FIXTURES / "edinet_fraud.jsonl", None, ("summary",), 5)[0]
    system_prompt = edinet.load_reference_system_prompt(checkout, "edinet_fraud")
    assert system_prompt == "STAND-IN analyst." == edinet.load_reference_system_prompt(checkout, "edinet_industry")
    (checkout / edinet.PREDICT_SCRIPTS["edinet_fraud"]).write_text("parser.add_argument('--model')\n", encoding="utf-8")
    with pytest.raises(CompassError, match="no --system_prompt argument"):
        edinet.load_reference_system_prompt(checkout, "edinet_fraud")
    (request,) = edinet.reference_requests([item], prompt, system_prompt, ("summary", "bs"), max_tokens=4096)
    rows = [json.loads(line) for line in (FIXTURES / "edinet_fraud.jsonl").read_text(encoding="utf-8").splitlines()]
    assert request.messages == [{"role": "system", "content": "STAND-IN analyst."},
                                {"role": "user", "content": prompt + f"summary: {rows[0]['summary']}\nbs: {rows[0]['bs']}"}]
    assert (request.temperature, request.seed, request.max_tokens) == (0.0, 0, 4096)  # uncut, unlike max_chars 5


@pytest.mark.parametrize("text, expected", [
    ('JSON:\n```json\n{"reasoning": "r", "prob": 0.8, "prediction": 1}\n```', {"reasoning": "r", "prob": 0.8, "prediction": 1}),
    ('```json\n{"prob": 0.2, \n"prediction": 0}```\nlater {"prob": 0.9, "prediction": 1}', {"prob": 0.2, "prediction": 0}),
    ('```json\nnot json```\n```json\n{"prediction": 1, "prob": 0.6}\n```', {"prediction": 1, "prob": 0.6}),  # next block
    ('{"prob": 0.3, "prediction": 0} then {"prob": 0.9, "prediction": 1}', {"prob": 0.3, "prediction": 0}),  # the first
    ('{"reasoning": "line one\nline two", "prob": 0.7, "prediction": 1}', {"reasoning": "line oneline two", "prob": 0.7,
                                                                          "prediction": 1}),  # control chars deleted
    ('{"detail": {"x": 1}, "prob": 0.5, "prediction": 1}', None),  # nested object without a fence: non-greedy {...}
    ('```json\n[1, 2]\n```', [1, 2]),
    ("no json here", None),
    (None, None),
])
def test_reference_json_reading(text, expected):
    assert edinet.reference_json(text) == expected


@pytest.mark.parametrize("task, text, status, prediction", [
    ("edinet_fraud", '{"reasoning": "r", "prob": 0.8, "prediction": 1}', "ok", 1),
    ("edinet_fraud", '{"prob": 0.8, "prediction": "1"}', "ok", 1),
    ("edinet_fraud", '{"prob": 0.8, "prediction": 0.7}', "ok", 0),  # int() truncates
    ("edinet_fraud", '{"prob": 0.8, "prediction": true}', "ok", 1),
    ("edinet_fraud", '{"prediction": 1}', "dropped", None),  # no prob: dropped
    ("edinet_fraud", '{"prob": 0.4}', "dropped", None),
    ("edinet_fraud", '{"prob": 0.8, "prediction": null}', "dropped", None),
    ("edinet_fraud", "fraud: yes", "dropped", None),
    ("edinet_fraud", '{"prob": 0.8, "prediction": "yes"}', "crash", None),
    ("edinet_fraud", '{"prob": 0.8, "prediction": "1.0"}', "crash", None),
    ("edinet_fraud", '{"prob": 0.8, "prediction": 2}', "crash", None),
    ("edinet_fraud", '{"prob": "0.8", "prediction": 1}', "crash", None),
    ("edinet_fraud", '{"prob": NaN, "prediction": 1}', "crash", None),
    ("edinet_fraud", '```json\n[1]\n```', "crash", None),
    ("edinet_industry", '{"reasoning": "r", "prediction": "銀行"}', "ok", "銀行"),
    ("edinet_industry", '{"prediction": "bank"}', "ok", "bank"),  # any string: scored wrong, not dropped
    ("edinet_industry", '{"reasoning": "r"}', "dropped", None),
    ("edinet_industry", '{"prediction": 3}', "crash", None),
])
def test_reference_answer_status(task, text, status, prediction):
    answer = edinet.reference_answer(task, text)
    assert (answer.status, answer.prediction) == (status, prediction)


def _results(items, texts):
    return {i.id: GenResult(i.id, t, None, 1, 7, 0.0) for i, t in zip(items, texts)}


def test_reference_binary_metrics_drop_and_count(tmp_path):
    rows = [json.loads(line) for line in (FIXTURES / "edinet_fraud.jsonl").read_text(encoding="utf-8").splitlines()]
    many = tmp_path / "fraud.jsonl"
    labels = [1, 0, 1, 0, 1, 0, 1]
    many.write_text("".join(json.dumps({**rows[k % 3], "doc_id": f"S{k}", "label": labels[k]}, ensure_ascii=False) + "\n"
                            for k in range(7)), encoding="utf-8")
    items = edinet.load_items("edinet_fraud", many, None, ("summary",), None)
    texts = ['{"prob": 0.9, "prediction": 1}', '{"prob": 0.6, "prediction": 1}', '{"prob": 0.4, "prediction": 0}',
             '{"prob": 0.1, "prediction": 0}', '{"prediction": 1}', "no answer", '{"prob": 0.8, "prediction": "yes"}']
    out_rows, m = edinet.score_reference_run("edinet_fraud", items, _results(items, texts))
    # kept: labels 1,0,1,0 predicted 1,1,0,0 with probs .9,.6,.4,.1
    assert (m["scored_rows"], m["dropped_rows"], m["reference_crash_rows"], m["n"]) == (4, 2, 1, 7)
    assert m["accuracy"] == 0.5 and m["precision"] == 0.5 and m["recall"] == 0.5 and m["f1"] == 0.5
    assert m["mcc"] == 0.0
    assert m["roc_auc"] == 0.75  # positives .9,.4 vs negatives .6,.1: 3 of 4 pairs ranked right
    assert [r["status"] for r in out_rows] == ["ok"] * 4 + ["dropped", "dropped", "crash"]


def test_industry_runs_mean_and_population_std():
    summary = edinet.runs_summary([{"accuracy": 0.5, "n": 4, "scored_rows": 4, "dropped_rows": 0, "reference_crash_rows": 0},
                                   {"accuracy": 0.75, "n": 4, "scored_rows": 4, "dropped_rows": 0, "reference_crash_rows": 0},
                                   {"accuracy": 1.0, "n": 4, "scored_rows": 3, "dropped_rows": 1, "reference_crash_rows": 0}])
    assert summary["runs"] == 3 and summary["accuracy"] == 0.75
    assert summary["accuracy_std"] == pytest.approx(math.sqrt(((0.25 ** 2) * 2) / 3))  # ddof 0
    assert summary["dropped_rows"] == 1 and summary["scored_rows"] == 11


def test_settings_need_a_checkout_for_the_reference():
    with pytest.raises(ValueError, match="needs repo"):
        edinet.EdinetSettings(protocol="both")
    assert edinet.EdinetSettings().protocol == "compass"


def test_both_protocols_through_the_stage_over_http(checkout, tmp_path):
    """fraud + industry, protocol both, openai backend: reference replies vary by run (the server's
    nondeterminism the 3 runs measure); compass replies are compass-style."""
    state: dict = {}
    industry_runs = ['{"reasoning": "r", "prediction": "銀行"}', '{"reasoning": "r", "prediction": "小売"}',
                     '{"reasoning": "r"}']

    def reply(body):
        user = body["messages"][-1]["content"]
        if user.startswith("STAND-IN industry_prediction"):
            return industry_runs[state["server"].arrivals[prompt_key(body)] - 1]
        if user.startswith("STAND-IN fraud_detection"):
            return 'JSON:\n```json\n{"reasoning": "r", "prob": 0.7, "prediction": 1}\n```'
        if "industries" in user:
            return '{"prediction": "銀行"}'
        return '{"prediction": 1}'

    with ScriptedServer(reply) as server:
        state["server"] = server
        settings = {"base_urls": [server.base_url], "model": "scripted", "max_retries": 0}
        config = Config(tasks=["edinet_fraud", "edinet_industry"], backend="openai", openai=settings,
                        edinet={"protocol": "both", "repo": str(checkout)})
        result = execute_stage("eval", config, {"edinet_fraud": FIXTURES / "edinet_fraud.jsonl",
                                                "edinet_industry": FIXTURES / "edinet_industry.jsonl"}, tmp_path / "out")
        seen = list(server.requests_seen)
    m = result.manifest.metrics
    # fraud golds 1, 0, 0; the reference model says 1 (prob .7) for all
    assert m["edinet_fraud.reference.accuracy"] == pytest.approx(1 / 3) and m["edinet_fraud.reference.precision"] == pytest.approx(1 / 3)
    assert m["edinet_fraud.reference.recall"] == 1.0 and m["edinet_fraud.reference.roc_auc"] == 0.5
    assert m["edinet_fraud.compass.accuracy"] == pytest.approx(1 / 3)
    assert "edinet_fraud.compass.roc_auc_loglikelihood" not in m  # log-likelihoods need the local backend
    # industry golds 銀行, 不動産, 食品: run 1 right once, run 2 never, run 3 nothing to score (all dropped)
    assert m["edinet_industry.reference.run1.accuracy"] == pytest.approx(1 / 3)
    assert m["edinet_industry.reference.run2.accuracy"] == 0.0
    assert "edinet_industry.reference.run3.accuracy" not in m and m["edinet_industry.reference.run3.dropped_rows"] == 3
    assert m["edinet_industry.reference.runs"] == 3 and m["edinet_industry.reference.dropped_rows"] == 3
    assert m["edinet_industry.compass.accuracy"] == pytest.approx(1 / 3)
    reference_requests = [b for b in seen if b["messages"][-1]["content"].startswith("STAND-IN")]
    assert len(reference_requests) == 3 + 3 * 3 and all(b["max_tokens"] == 4096 and b["seed"] == 0 for b in reference_requests)
    assert all(b["messages"][0] == {"role": "system", "content": "STAND-IN analyst."} for b in reference_requests)


def test_json_reading_equals_the_benchmark_reader():
    """Values from EDINET-Bench's own extract_json_between_markers (tests/support/edinet_reference_values.py)."""
    answers = json.loads((FIXTURES / "edinet_reference_cases.json").read_text(encoding="utf-8"))["answers"]
    values = json.loads((FIXTURES / "edinet_reference_values.json").read_text(encoding="utf-8"))["values"]
    assert len(answers) == len(values) >= 15
    for answer, value in zip(answers, values):
        assert edinet.reference_json(answer) == value, answer
