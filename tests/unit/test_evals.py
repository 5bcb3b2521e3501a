"""Benchmark loaders, prompts, parsers and metrics (pure functions), and log-likelihoods on the tiny LLM."""
import math
from pathlib import Path

import pytest

from compass.errors import CompassError
from compass.evals import edinet, mmlongbench
from compass.evals import math as math_eval
from compass.evals.compare import compare_table
from compass.evals.metrics import binary_metrics, macro_f1, multiclass_metrics
from compass.generate.base import GenResult

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "evals"


def result(id_, text, tokens=5, error=None):
    return GenResult(id_, text, error, 1, tokens, 0.0, "stop")


# --- EDINET-Bench --------------------------------------------------------------------------------------


@pytest.mark.parametrize("task, text, expected", [
    ("edinet_fraud", 'JSON:\n```json\n{"reasoning": "ok", "prediction": 1}\n```', 1),
    ("edinet_fraud", 'I think {"prediction": 0}', 0),
    ("edinet_fraud", '{"prediction": "1"}', 1),
    ("edinet_fraud", '{"prediction": true}', None),
    ("edinet_fraud", '{"prediction": 2}', None),
    ("edinet_fraud", '{"prediction": 0.9}', None),
    ("edinet_fraud", "fraud: yes", None),
    ("edinet_fraud", '{"prediction": 1', None),
    ("edinet_fraud", '{"prob": 0.9}', None),
    ("edinet_fraud", None, None),
    ("edinet_earnings", '{"prediction": 0} then {"prediction": 1}', 1),
    ("edinet_industry", '{"prediction": "銀行"}', "銀行"),
    ("edinet_industry", '{"prediction": "金融（除く銀行）"}', "金融(除く銀行)"),
    ("edinet_industry", '{"prediction": "bank"}', None),
    ("edinet_industry", '{"prediction": 3}', None),
])
def test_edinet_strict_label_parsing(task, text, expected):
    assert edinet.parse_prediction(task, text) == expected


def test_edinet_prompt_from_statement_fields_and_label_checks(tmp_path):
    items = edinet.load_items("edinet_fraud", FIXTURES / "edinet_fraud.jsonl", None, ("summary", "bs"), 40)
    assert [i.label for i in items] == [1, 0, 0] and items[0].id == "edinet_fraud/S1000001"
    assert items[0].prompt.startswith(edinet.INSTRUCTIONS["edinet_fraud"])
    lines = items[0].prompt[len(edinet.INSTRUCTIONS["edinet_fraud"]):].split("\n")
    assert [line.split(":")[0] for line in lines] == ["summary", "bs"] and len(lines[0]) == len("summary: ") + 40
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"doc_id": "x", "summary": "", "bs": "", "pl": "", "cf": "", "label": 3}\n')
    with pytest.raises(CompassError, match="bad.jsonl record 1: label must be 0 or 1, got 3"):
        edinet.load_items("edinet_fraud", bad, None, ("summary",), None)
    with pytest.raises(CompassError, match="missing field"):
        edinet.load_items("edinet_industry", FIXTURES / "edinet_fraud.jsonl", None, ("summary",), None)


def test_binary_metrics_count_unparseable_as_wrong():
    golds, preds = [1, 1, 0, 0], [1, None, 0, 1]
    m = binary_metrics(golds, preds, [0.9, 0.4, 0.3, 0.6])
    # unparseable gold-1 item becomes a 0: tp 1, fn 1, fp 1, tn 1
    assert m["accuracy"] == 0.5 and m["f1"] == 0.5 and m["mcc"] == 0.0 and m["unparseable_rate"] == 0.25
    assert m["roc_auc"] == 0.75
    assert "roc_auc" not in binary_metrics([1, 1], [1, 1], [0.2, 0.3])  # one class: AUC undefined


def test_multiclass_metrics():
    m = multiclass_metrics(["銀行", "食品", "小売"], ["銀行", None, "銀行"], edinet.INDUSTRIES)
    assert m["accuracy"] == pytest.approx(1 / 3) and m["unparseable_rate"] == pytest.approx(1 / 3)
    assert m["macro_f1"] == pytest.approx((2 / 3) / 16)  # only 銀行 has an F1 (2/3), 16 labels
    assert macro_f1(["a", "b"], ["a", "a"], ["a", "b"]) == pytest.approx((2 / 3 + 0) / 2)


def test_edinet_score_rows_and_metrics():
    items = edinet.load_items("edinet_earnings", FIXTURES / "edinet_earnings.jsonl", None, ("summary",), None)
    texts = ['{"prediction": 1}', "increase!", '{"prediction": 0}']
    results = {i.id: result(i.id, t) for i, t in zip(items, texts)}
    requests = {r.id: r for r in edinet.build_requests(items, max_tokens=8, seed=0)}
    rows, m = edinet.score("edinet_earnings", items, results, requests, {items[0].id: 0.8, items[1].id: 0.3, items[2].id: 0.6})
    assert [r["extracted"] for r in rows] == [1, None, 0] and [r["score"] for r in rows] == [1.0, 0.0, 0.0]
    assert m["accuracy"] == pytest.approx(1 / 3) and m["unparseable_rate"] == pytest.approx(1 / 3)
    assert m["roc_auc_loglikelihood"] == 1.0 and "roc_auc" not in m  # golds 1,0,1 with P(1) .8,.3,.6: both positives rank above the negative
    assert rows[0]["input"][0] == {"role": "system", "content": edinet.SYSTEM_PROMPT}


# --- math ----------------------------------------------------------------------------------------------


def test_math_loaders_read_each_benchmarks_schema():
    gsm = math_eval.load_items("gsm8k", FIXTURES / "gsm8k_test.jsonl")
    assert [(i.id, i.answer, i.lang) for i in gsm] == [("gsm8k/0", "7", "en"), ("gsm8k/1", "60", "en"), ("gsm8k/2", "2000", "en")]
    mgsm = math_eval.load_items("mgsm_ja", FIXTURES / "mgsm_ja.tsv")
    assert [i.answer for i in mgsm] == ["7", "60", "5"] and mgsm[0].lang == "ja"
    problems = math_eval.load_items("problems", FIXTURES / "problems.jsonl")
    assert [(i.id, i.lang) for i in problems][2] == ("rg/basic_arithmetic/2", "ja")
    hub_mgsm = math_eval.items_from_rows("mgsm_ja", [{"question": "q", "answer": None, "answer_number": 12.0}], "hub")
    assert hub_mgsm[0].answer == "12"


def test_math_loader_errors_name_file_and_record(tmp_path):
    bad = tmp_path / "gsm.jsonl"
    bad.write_text('{"question": "q", "answer": "no marker"}\n')
    with pytest.raises(CompassError, match=r"gsm.jsonl record 1: GSM8K answer has no '#### <number>' line"):
        math_eval.load_items("gsm8k", bad)
    tsv = tmp_path / "m.tsv"
    tsv.write_text("q1\t1\nq2\n")
    with pytest.raises(CompassError, match=r"m.tsv:2: expected 2 tab-separated fields"):
        math_eval.load_items("mgsm_ja", tsv)


def test_math_requests_use_the_reasoning_system_prompt_and_cot_token():
    from compass.formats import SYSTEM_PROMPTS

    items = math_eval.load_items("mgsm_ja", FIXTURES / "mgsm_ja.tsv")
    off = math_eval.build_requests(items, cot=False, max_tokens=9, seed=1)[0]
    on = math_eval.build_requests(items, cot=True, max_tokens=9, seed=1)[0]
    assert off.messages == [{"role": "system", "content": SYSTEM_PROMPTS["ja"]}, {"role": "user", "content": items[0].question}]
    assert on.messages[0]["content"] == "<cot>\n" + SYSTEM_PROMPTS["ja"] and on.max_tokens == 9


def test_math_score_accuracy_format_validity_and_tokens():
    items = math_eval.load_items("gsm8k", FIXTURES / "gsm8k_test.jsonl")
    valid = "<Problem>\np\n</Problem>\n\n<Thinking>\n3+4=7\n</Thinking>\n\n<Answer>\n\\boxed{7}\n</Answer>"
    results = {"gsm8k/0": result("gsm8k/0", valid, 20), "gsm8k/1": result("gsm8k/1", "so \\boxed{60.0}", 4),
               "gsm8k/2": result("gsm8k/2", None, None, error="HTTP 500")}
    requests = {r.id: r for r in math_eval.build_requests(items, cot=False, max_tokens=8, seed=0)}
    rows, m = math_eval.score(items, results, requests)
    assert [r["score"] for r in rows] == [1.0, 1.0, 0.0]
    assert [r["format_valid"] for r in rows] == [True, False, False]
    assert m["accuracy"] == pytest.approx(2 / 3) and m["format_valid_rate"] == pytest.approx(1 / 3)
    assert m["boxed_rate"] == pytest.approx(2 / 3) and m["mean_output_tokens"] == 12.0
    assert m["error_rate"] == pytest.approx(1 / 3)


# --- MMLongBench-Doc loading and extraction -----------------------------------------------------------


def test_mmlongbench_loads_both_schemas_with_1_based_pages(tmp_path):
    items = mmlongbench.load_items(FIXTURES / "mmlongbench_samples.json")
    assert [i.evidence_pages for i in items] == [(1,), (2,), (1, 2), ()]  # page numbers as samples.json states them
    assert items[0].id == "annual_report.pdf#0" and items[2].answer_format == "List"
    docq = tmp_path / "q.jsonl"
    docq.write_text('{"id": "r/1", "doc_id": "r", "question": "q", "answer": "5", "answer_format": "Int", "gold_pages": [3]}\n')
    assert mmlongbench.load_items(docq)[0].evidence_pages == (4,)  # DocQuestion gold_pages are 0-based
    bad = tmp_path / "bad.json"
    bad.write_text('[{"doc_id": "d", "question": "q", "answer": "a", "answer_format": "Str", "evidence_pages": "[1, __import__]"}]')
    with pytest.raises(CompassError, match=r"evidence_pages must look like '\[1, 2\]'"):
        mmlongbench.load_items(bad)


@pytest.mark.parametrize("text, short", [
    ("<think>Page 3 says 42.</think>The answer is 42.", "The answer is 42"),
    ("<think>Page 3 says 42.</think>\\boxed{42}", "42"),
    ("<think>still thinking about page 3", ""),
    ("Looking at page 2 ...\nAnswer: Osaka", "Osaka"),
    ("Reasoning.\n**Final answer:** 12.5%", "12.5%"),
    ("回答：大阪", "大阪"),
    ("Not answerable. The document has no patent data.", "Not answerable"),
    ("<think>nothing</think>The document does not mention patents.", "Not answerable"),
    ("", ""),
    (None, ""),
])
def test_rule_extraction(text, short):
    assert mmlongbench.rule_extract(text).rstrip(".") == short


def test_extractor_reply_parsing():
    assert mmlongbench.parse_extractor_reply("Extracted answer: ['a', 'b']\nAnswer format: List") == "['a', 'b']"
    assert mmlongbench.parse_extractor_reply("I think it is 5") is None
    assert mmlongbench.parse_extractor_reply(None) is None


# --- config, compare ----------------------------------------------------------------------------------


def test_eval_config_cli_forms_and_cross_checks():
    from compass.stages.evaluate import Config

    config = Config.model_validate({"tasks": "gsm8k, mgsm_ja", "cot": True})
    assert config.tasks == ["gsm8k", "mgsm_ja"] and config.cot == "on"
    assert Config.model_validate({"cot": False}).cot == "off"
    with pytest.raises(ValueError, match="log-likelihood"):
        Config.model_validate({"tasks": ["chabsa"], "backend": "openai", "openai": {"model": "m"}})
    with pytest.raises(ValueError, match="unknown task"):
        Config.model_validate({"hub": {"gsm9k": "x:y:z"}})
    with pytest.raises(ValueError, match="listed twice"):
        Config.model_validate({"tasks": "gsm8k,gsm8k"})


def test_compare_table_side_by_side():
    runs = [("base", {"gsm8k.accuracy": 0.0, "gsm8k.n": 3}), ("sft", {"gsm8k.accuracy": 0.5, "gsm8k.n": 3, "chabsa.accuracy": 1.0})]
    assert compare_table(runs) == (
        "gsm8k\n"
        "  metric     base    sft\n"
        "  accuracy  0.000  0.500\n"
        "  n             3      3\n"
        "\n"
        "chabsa\n"
        "  metric    base    sft\n"
        "  accuracy     -  1.000\n"
    )
    assert "| metric | base | sft |" in compare_table(runs, ["gsm8k"], markdown=True)
    with pytest.raises(CompassError, match="no run has task"):
        compare_table(runs, ["edinet_fraud"])


# --- log-likelihoods on the tiny LLM ------------------------------------------------------------------


def test_loglikelihoods_match_a_direct_forward_and_do_not_depend_on_batching(tiny_models):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from compass.generate.local_model import LocalModel

    torch.set_num_threads(1)
    pairs = [("センテンス: 売上は増加した\n回答:", " positive"), ("short", " negative word"), ("【答え】\n", "A")]
    batched = LocalModel(tiny_models.llm, batch_size=3).loglikelihoods(pairs)
    single = LocalModel(tiny_models.llm, batch_size=1).loglikelihoods(pairs)
    for a, b in zip(batched, single):
        assert a.tokens == b.tokens and a.logprob == pytest.approx(b.logprob, abs=1e-4)

    tok = AutoTokenizer.from_pretrained(str(tiny_models.llm))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_models.llm)).eval()
    context, continuation = pairs[0]
    # lm-eval's split: the tokenizer's own special tokens (this one adds no BOS), context tokens then the rest
    ctx = tok.encode(context)
    cont = tok.encode(context + continuation)[len(ctx):]
    assert ctx[0] != tok.bos_token_id
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(ids).logits[0].float(), -1)
    expected = sum(float(logprobs[len(ctx) - 1 + i, t]) for i, t in enumerate(cont))
    assert batched[0].tokens == len(cont) and batched[0].logprob == pytest.approx(expected, abs=1e-4)
    assert math.isfinite(batched[1].logprob) and batched[1].logprob < 0


def test_trailing_context_spaces_move_to_the_continuation(tiny_models):
    from compass.generate.local_model import LocalModel

    model = LocalModel(tiny_models.llm)
    model._load()
    assert model._encode_pair("回答: ", "positive") == model._encode_pair("回答:", " positive")
    # newlines too, as lm-eval rstrips the whole trailing whitespace
    assert model._encode_pair("【答え】\n", "A") == model._encode_pair("【答え】", "\nA")
    tok = model._tokenizer
    assert model._encode_pair("", "A")[0] == [tok.bos_token_id]  # an empty context is the prefix token
    with_bos = model._encode_pair(tok.bos_token + "x", " y")[0]
    assert with_bos.count(tok.bos_token_id) == 1  # a context that starts with BOS gets no second one
