"""japanese-lm-fin-harness (pfnet-research), 5 tasks, scored like its LM Evaluation Harness tasks: 0-shot,
context = the task's description + the document's prompt, one log-likelihood request per option
(continuation = target delimiter + option), prediction = the option with the highest summed log-probability
(`accuracy`) or the highest log-probability per character of the option (`accuracy_norm`, lm-eval's
acc_norm). chabsa adds macro-F1 over its two options.

The prompts and options are the harness's default task definitions (its <task>.yaml + utils.py, prompt
version "0.0"); this is an implementation of the same scoring, not lm-eval itself (not installed here).

Data, in the harness's own formats:
- chabsa: the chABSA-dataset JSON files (a directory of them, or one file): {"sentences": [{"sentence",
  "opinions": [{"target", "polarity"}, ...]}, ...]}; one item per opinion. Gold 'neutral' opinions are kept
  and can never be right (the harness offers only positive/negative), exactly as in the harness.
- cma_basics, fp2, security_sales_1: the harness's data.json, {"data": [{"id", "question", "context",
  "choices": [{"id", "text"}], "answer"}, ...]}.
- cpa_audit: the same JSON schema, or the harness's CPA_AUDIT.xlsx (needs openpyxl; rows with
  abnormal_flg == 1 or an empty question are skipped, answer = a_no - 1, as the harness's loader does).

chabsa macro-F1: the harness reports sklearn's macro-F1 over the labels present x 1.5, which equals the mean
F1 of 'positive' and 'negative' when gold 'neutral' items exist (their F1 is 0); here that 2-label mean is
computed directly, so it stays right on data without neutral items.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from compass.errors import CompassError
from compass.evals.data import read_json_rows, require
from compass.evals.metrics import macro_f1, mean
from compass.evals.registry import Benchmark, BenchmarkConfig, EvalTask, Requests, TaskOutput
from compass.stages import Port

TASKS = ("chabsa", "cma_basics", "cpa_audit", "fp2", "security_sales_1")

DESCRIPTIONS = {
    "chabsa": "以下のセンテンスにおける、ターゲットのセンチメントをpositiveかnegativeで答えてください。\n\n\n",
    "cma_basics": "以下の問題の適切な答えを選択肢から選んでアルファベットで答えなさい。\n\n\n",
    "cpa_audit": "以下の問題の答えとして適切な記号の組み合わせを選択肢から選んでアルファベットで答えなさい。\n\n\n",
    "fp2": "以下の問題の適切な答えを選択肢から選んで１～４の数字で答えなさい。\n\n\n",
    "security_sales_1": "以下の問題の適切な答えを選択肢から選んでアルファベットで答えなさい。\n\n\n",
}
CHABSA_OPTIONS = ("positive", "negative")


@dataclass(frozen=True)
class ChoiceItem:
    id: str
    context: str
    options: tuple[str, ...]
    delimiter: str
    gold: str  # the gold label text; may be outside `options` (chabsa 'neutral')


# --- loading -------------------------------------------------------------------------------------------


def _chabsa_items(path: Path) -> list[ChoiceItem]:
    files = sorted(path.glob("*.json")) if path.is_dir() else [path]
    if not files:
        raise CompassError(f"chabsa: no .json files in {path} (expected the chABSA-dataset files)")
    items = []
    for file in files:
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise CompassError(f"{file}:{err.lineno}: not valid JSON ({err.msg})") from None
        require(data, ("sentences",), str(file))
        for s_index, sentence in enumerate(data["sentences"]):
            require(sentence, ("sentence", "opinions"), f"{file} sentence {s_index}")
            for opinion in sentence["opinions"]:
                require(opinion, ("target", "polarity"), f"{file} sentence {s_index} opinion")
                text = f"センテンス: {sentence['sentence']}\nターゲット: {opinion['target']}\n回答:"
                items.append(ChoiceItem(f"chabsa/{len(items)}", DESCRIPTIONS["chabsa"] + text, CHABSA_OPTIONS, " ",
                                        opinion["polarity"]))
    return items


def _question_text(row: dict, with_options: bool) -> str:
    text = "【問題】\n" + row["question"] + "\n"
    if row["context"]:
        text += row["context"] + "\n"
    if with_options:
        text += "\n【選択肢】\n"
        for choice in row["choices"]:
            text += chr(int(choice["id"]) + 65) + ": " + choice["text"] + "\n"
    return text + "\n【答え】\n"


def _choice_items(task: str, rows: list[dict], origin: str) -> list[ChoiceItem]:
    items = []
    for index, row in enumerate(rows):
        where = f"{origin} record {index + 1}"
        require(row, ("question", "context", "choices", "answer"), where)
        for choice in row["choices"]:
            require(choice, ("id", "text"), f"{where} choice")
        ids = [int(c["id"]) for c in row["choices"]]
        answer = int(row["answer"])
        if answer not in ids:
            raise CompassError(f"{where}: answer {answer} is not one of the choice ids {ids}")
        if task == "fp2":  # options are the choice texts ('１'..'４'); no option list in the prompt
            options = tuple(c["text"] for c in row["choices"])
            gold = options[ids.index(answer)]
            context = DESCRIPTIONS[task] + _question_text(row, with_options=False)
        else:  # options are letters A, B, ... for the choice ids
            options = tuple(chr(i + 65) for i in ids)
            gold = chr(answer + 65)
            context = DESCRIPTIONS[task] + _question_text(row, with_options=True)
        item_id = f"{task}/{row['id']}" if "id" in row else f"{task}/{index}"
        items.append(ChoiceItem(item_id, context, options, "", gold))
    return items


def _cpa_audit_xlsx_rows(path: Path) -> list[dict]:
    """The harness's CPA_AUDIT.xlsx as rows of its data schema (statements ア..カ as context)."""
    import pandas as pd

    try:
        frame = pd.read_excel(path, index_col=0)
    except ImportError as err:
        raise CompassError(f"{path}: reading .xlsx needs openpyxl ({err}); pip install openpyxl, or convert the "
                           "sheet to the harness's JSON schema") from None
    rows = []
    for record in frame.to_dict(orient="records"):
        question = str(record["question"])
        if question in ("", "nan") or record["abnormal_flg"] == 1:
            continue
        statements = [f"{mark}: {record[mark]}" for mark in "アイウエオカ"
                      if mark in record and str(record[mark]) not in ("", "nan")]
        rows.append({"id": len(rows), "question": question, "context": "\n".join(statements),
                     "choices": [{"id": i, "text": str(record[i + 1])} for i in range(6)],
                     "answer": int(record["a_no"]) - 1})
    return rows


def load_items(task: str, path: Path) -> list[ChoiceItem]:
    if task not in TASKS:
        raise CompassError(f"unknown fin-harness task {task!r}; expected one of {TASKS}")
    path = Path(path)
    if task == "chabsa":
        return _chabsa_items(path)
    if task == "cpa_audit" and path.suffix.lower() == ".xlsx":
        return _choice_items(task, _cpa_audit_xlsx_rows(path), str(path))
    return _choice_items(task, read_json_rows(path), str(path))


# --- scoring -------------------------------------------------------------------------------------------


def requests(items: list[ChoiceItem]) -> list[tuple[str, str]]:
    """(context, continuation) pairs, item by item, option by option."""
    return [(item.context, item.delimiter + option) for item in items for option in item.options]


def score(task: str, items: list[ChoiceItem], logprobs: list[float]) -> tuple[list[dict], dict]:
    rows, at = [], 0
    for item in items:
        lls = logprobs[at:at + len(item.options)]
        at += len(item.options)
        best = max(range(len(lls)), key=lambda i: lls[i])
        # lm-eval's acc_norm divides by the option's length in characters (without the delimiter)
        best_norm = max(range(len(lls)), key=lambda i: lls[i] / len(item.options[i]))
        rows.append({
            "id": item.id,
            "input": item.context,
            "options": list(item.options),
            "logprobs": lls,
            "extracted": item.options[best],
            "extracted_norm": item.options[best_norm],
            "reference": item.gold,
            "score": float(item.options[best] == item.gold),
            "score_norm": float(item.options[best_norm] == item.gold),
            "output_tokens": 0,
        })
    if at != len(logprobs):
        raise CompassError(f"{task}: {len(logprobs)} log-likelihoods for {at} options")
    metrics = {
        "accuracy": mean([r["score"] for r in rows]),
        "accuracy_norm": mean([r["score_norm"] for r in rows]),
        "n": len(rows),
    }
    if task == "chabsa":
        golds = [r["reference"] for r in rows]
        metrics["macro_f1"] = macro_f1(golds, [r["extracted"] for r in rows], CHABSA_OPTIONS)
        metrics["macro_f1_norm"] = macro_f1(golds, [r["extracted_norm"] for r in rows], CHABSA_OPTIONS)
    return rows, metrics


# --- registry tasks ------------------------------------------------------------------------------------


class FinHarnessSettings(BenchmarkConfig):
    """japanese-lm-fin-harness: the five tasks share these settings."""


def _load(ctx) -> list[ChoiceItem]:
    return ctx.limited(load_items(ctx.name, ctx.data_path))


def _requests(ctx, items: list[ChoiceItem]) -> Requests:
    out = Requests()
    if "compass" in ctx.protocols():
        out.loglikelihood[ctx.output_name("compass")] = requests(items)
    return out


def _score(ctx, items: list[ChoiceItem], answers) -> list[TaskOutput]:
    produced = []
    if "compass" in ctx.protocols():
        name = ctx.output_name("compass")
        rows, metrics = score(ctx.name, items, answers.loglikelihoods[name])
        produced.append(TaskOutput(name, rows, metrics))
    return produced


def _check(ctx) -> None:
    if ctx.data_path is None:
        raise CompassError(f"task {ctx.name}: give the harness's data with --{ctx.name.replace('_', '-')} PATH "
                           "(japanese-lm-fin-harness has no hub dataset)")


_PORTS = {
    "chabsa": "chABSA-dataset JSON files (directory) or one such file",
    "cma_basics": "japanese-lm-fin-harness cma_basics data.json",
    "cpa_audit": "japanese-lm-fin-harness CPA_AUDIT.xlsx or data.json in the harness schema",
    "fp2": "japanese-lm-fin-harness fp2 data.json",
    "security_sales_1": "japanese-lm-fin-harness security_sales_1 data.json",
}

BENCHMARK = Benchmark("finharness", FinHarnessSettings, tuple(
    EvalTask(name=task, kind="loglikelihood", inputs={task: Port(help_text, required=False)}, load=_load,
             requests=_requests, score=_score, check=_check,
             summary="japanese-lm-fin-harness, 0-shot log-likelihood multiple choice: accuracy, accuracy_norm"
                     + (", macro_f1" if task == "chabsa" else ""))
    for task, help_text in _PORTS.items()), "japanese-lm-fin-harness settings (all five tasks)")
