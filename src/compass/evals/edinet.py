"""EDINET-Bench (SakanaAI), 3 tasks on Japanese annual-report financials: accounting fraud detection
(binary), earnings forecast (binary: will net income attributable to owners of the parent rise next year),
industry prediction (16 classes). Two protocols (`edinet.protocol`: reference | compass | both):

reference -- the benchmark's own pipeline, comparable with its published leaderboard (see the section
"the reference protocol" below): the repo's prompt files read from the user's checkout (`edinet.repo`,
`--edinet-repo DIR`), answers asked for as {"reasoning", "prob", "prediction"}, the first JSON found, rows
without prediction or prob dropped from the metrics and counted, accuracy / precision / recall / F1 / MCC /
ROC-AUC from the stated prob, industry accuracy as mean +- std over 3 runs. Metrics: TASK.reference.METRIC.

compass -- the prompt is built from the statement fields of a record (`summary`, `bs`, `pl`, `cf`, optionally
`text`; JSON strings in the dataset) under a task instruction that asks for a JSON object {"prediction": ...}.
Parsing is strict: the answer must contain a JSON object (a ```json block or a bare {...}) whose
"prediction" is 0 or 1 (binary) or exactly one of the 16 category names (industry); the last such object
counts. Anything else is unparseable: it counts as wrong in every metric and is reported as
`unparseable_rate` (nothing is dropped from a denominator). ROC-AUC of the binary tasks comes from the label
log-likelihoods on the local backend, named `roc_auc_loglikelihood`: P(1) = softmax over the
log-probabilities of the two answers '{"prediction": 0}' and '{"prediction": 1}' after the same prompt; it
needs both classes among the golds.

Data: the dataset's own rows as published on the hub (parquet), or a local .jsonl / .json / .parquet with the
same fields: meta, summary, bs, pl, cf, text, edinet_code, doc_id and `label` (0/1; fraud_detection adds
explanation, ammended_doc_id, file_path; earnings_forecast naive_prediction, previous_year_file_path,
current_year_file_path) or `industry` (category name; plus file_path).
"""
from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from compass.errors import CompassError
from compass.evals.data import read_json_rows, require
from compass.evals.metrics import binary_metrics, mean, multiclass_metrics
from compass.evals.registry import Benchmark, BenchmarkConfig, EvalTask, Requests, TaskOutput
from compass.generate.base import GenRequest, GenResult
from compass.stages import Port

TASKS = {"edinet_fraud": "fraud_detection", "edinet_earnings": "earnings_forecast", "edinet_industry": "industry_prediction"}
INDUSTRIES = ("食品", "電気・ガス・エネルギー資源", "建設・資材", "素材・化学", "医薬品", "自動車・輸送機", "鉄鋼・非鉄",
              "機械", "電機・精密", "情報通信・サービスその他", "運輸・物流", "商社・卸売", "小売", "銀行",
              "金融(除く銀行)", "不動産")
# compass protocol's system prompt: its own choice, in the same words as the reference's (whose own is read from
# the checkout's predict script, `load_reference_system_prompt`)
SYSTEM_PROMPT = "You are a financial analyst."
SHEETS = ("summary", "bs", "pl", "cf", "text")

_FORMAT = ("Some values may be missing and shown as \"-\" because of parsing errors.\n"
           "Reply with a JSON object only, in this form:\n```json\n{\"prediction\": %s}\n```\n"
           "The extracted report follows.\n")
INSTRUCTIONS = {
    "edinet_fraud": (
        "Below is information extracted from a Japanese company's annual securities report (有価証券報告書). "
        "Decide whether the report shows signs of accounting fraud. The figures were audited and add up, so "
        "look for inconsistencies and red flags beyond arithmetic.\n"
        + _FORMAT % "0 or 1 (0: no fraud, 1: fraud)"
    ),
    "edinet_earnings": (
        "Below is information extracted from a Japanese company's annual securities report (有価証券報告書) for "
        "the current fiscal year. Predict whether net income attributable to owners of the parent "
        "(親会社株主に帰属する当期純利益) will increase in the next fiscal year.\n"
        + _FORMAT % "0 or 1 (0: decrease, 1: increase)"
    ),
    "edinet_industry": (
        "Below is information extracted from a Japanese company's annual securities report (有価証券報告書). "
        "Classify the company into exactly one of these industries: " + ", ".join(INDUSTRIES) + ".\n"
        + _FORMAT % "\"<one industry name from the list, in Japanese>\""
    ),
}


@dataclass(frozen=True)
class EdinetItem:
    id: str
    prompt: str  # the compass protocol's prompt
    label: int | str
    sheet_values: tuple[tuple[str, str], ...] = ()  # (field, value as the reference formats it) for each sheet present


def load_items(task: str, path: Path | None, rows: list[dict] | None, sheets: tuple[str, ...],
               max_chars_per_sheet: int | None) -> list[EdinetItem]:
    if task not in TASKS:
        raise CompassError(f"unknown EDINET-Bench task {task!r}; expected one of {sorted(TASKS)}")
    for sheet in sheets:
        if sheet not in SHEETS:
            raise CompassError(f"unknown EDINET-Bench sheet {sheet!r}; expected some of {SHEETS}")
    origin = str(path) if path is not None else f"hub {TASKS[task]}"
    rows = read_json_rows(Path(path)) if path is not None else rows
    label_key = "industry" if task == "edinet_industry" else "label"
    items = []
    for index, row in enumerate(rows):
        where = f"{origin} record {index + 1}"
        require(row, (label_key, "doc_id") + sheets, where)
        label = row[label_key]
        if task == "edinet_industry":
            if label not in INDUSTRIES:
                raise CompassError(f"{where}: industry {label!r} is not one of the 16 categories {INDUSTRIES}")
        elif isinstance(label, bool) or label not in (0, 1):
            raise CompassError(f"{where}: label must be 0 or 1, got {label!r}")
        parts = []
        for sheet in sheets:
            value = row[sheet] if isinstance(row[sheet], str) else json.dumps(row[sheet], ensure_ascii=False)
            if max_chars_per_sheet is not None:
                value = value[:max_chars_per_sheet]
            parts.append(f"{sheet}: {value}")
        published = tuple((sheet, str(row[sheet])) for sheet in SHEETS if sheet in row)  # the reference's f"{value}"
        items.append(EdinetItem(f"{task}/{row['doc_id']}", INSTRUCTIONS[task] + "\n".join(parts), label, published))
    return items


def messages(item: EdinetItem) -> list[dict]:
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": item.prompt}]


def build_requests(items: list[EdinetItem], *, max_tokens: int, seed: int) -> list[GenRequest]:
    return [GenRequest(id=i.id, messages=messages(i), max_tokens=max_tokens, temperature=0.0, seed=seed) for i in items]


# --- strict parsing ------------------------------------------------------------------------------------

_FENCED = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)


def _json_objects(text: str) -> list[dict]:
    """JSON objects in the text: fenced blocks first, then every balanced {...}; parsed with json.loads."""
    candidates = [m.group(1).strip() for m in _FENCED.finditer(text)]
    depth, start = 0, None
    for i, char in enumerate(text):
        if char == "{":
            if depth == 0:
                start = i
            depth += 1
        elif char == "}" and depth > 0:
            depth -= 1
            if depth == 0:
                candidates.append(text[start:i + 1])
    objects = []
    for candidate in candidates:
        try:
            value = json.loads(candidate)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            objects.append(value)
    return objects


def parse_prediction(task: str, text: str | None) -> int | str | None:
    """The label an answer states, or None when it states none validly (see the module docstring)."""
    if text is None:
        return None
    for obj in reversed(_json_objects(text)):
        if "prediction" not in obj:
            continue
        value = obj["prediction"]
        if task == "edinet_industry":
            if isinstance(value, str):
                name = unicodedata.normalize("NFKC", value).strip()
                canonical = {unicodedata.normalize("NFKC", c): c for c in INDUSTRIES}
                return canonical[name] if name in canonical else None
            return None
        if isinstance(value, bool):
            return None
        if isinstance(value, int) and value in (0, 1):
            return value
        if isinstance(value, str) and value.strip() in ("0", "1"):
            return int(value.strip())
        return None
    return None


def label_continuations(task: str) -> list[str]:
    """The answer texts whose log-likelihoods give P(label) (binary tasks)."""
    return ['{"prediction": 0}', '{"prediction": 1}']


def score(task: str, items: list[EdinetItem], results: dict[str, GenResult], requests: dict[str, GenRequest],
          positive_probs: dict[str, float] | None) -> tuple[list[dict], dict]:
    rows = []
    for item in items:
        result = results[item.id]
        raw = result.text if result.ok else None
        pred = parse_prediction(task, raw)
        row = {
            "id": item.id,
            "input": requests[item.id].messages,
            "raw_output": raw,
            "error": result.error,
            "extracted": pred,
            "reference": item.label,
            "score": float(pred == item.label),
            "output_tokens": result.output_tokens,
        }
        if positive_probs is not None:
            row["p_positive"] = positive_probs[item.id]
        rows.append(row)
    golds = [r["reference"] for r in rows]
    preds = [r["extracted"] for r in rows]
    if task == "edinet_industry":
        metrics = multiclass_metrics(golds, preds, INDUSTRIES)
    else:
        probs = [positive_probs[i.id] for i in items] if positive_probs is not None else None
        metrics = binary_metrics(golds, preds, probs)
        if "roc_auc" in metrics:  # named for where P(1) comes from; the reference's roc_auc is the stated prob
            metrics["roc_auc_loglikelihood"] = metrics.pop("roc_auc")
    metrics["mean_output_tokens"] = mean([float(r["output_tokens"]) for r in rows if r["output_tokens"] is not None])
    metrics["n"] = len(rows)
    return rows, metrics


# --- the reference protocol ----------------------------------------------------------------------------
#
# SakanaAI/EDINET-Bench as its scripts run it: predict.py / industry_prediction/predict.py and the two
# make_leaderboard.py (read, not copied):
# - prompt: the task's prompt/<config>.yaml `prompt` (read from the user's checkout) followed by
#   "\n".join(f"{sheet}: {value}") over the sheets the row has (default summary, bs, pl, cf), uncut;
#   system prompt: the task script's --system_prompt default ("You are a financial analyst." in the repo), read
#   from the checkout's source with ast; temperature 0,
#   max_tokens 4096, seed 0 (model.py's OpenAI call).
# - parsing (utils.extract_json_between_markers): the first ```json ... ``` block that json.loads (also after
#   deleting control characters), else the first non-greedy {...} that does; its "prob", "prediction" and
#   "reasoning" by .get. JSON that parses to something other than an object makes .get raise in the
#   reference, which aborts the run; here that row is left out and counted (`reference_crash_rows`).
# - binary metrics (make_leaderboard.py): rows whose prob or prediction is missing are dropped (counted,
#   `dropped_rows`); the rest give accuracy, precision, recall, F1, MCC (sklearn, int(prediction)) and ROC-AUC
#   from the stated prob when both labels remain. A prediction int() cannot read ('yes', '1.0'), one outside
#   {0, 1} or a prob that is not a finite number would make the reference raise: left out, counted as crash rows.
# - industry: rows without a prediction dropped; accuracy by exact string match; 3 runs, reported as the mean
#   and the population std (numpy's default) over runs, as industry_prediction/make_leaderboard.py does.

PROMPT_FILES = {task: Path("prompt") / f"{config}.yaml" for task, config in TASKS.items()}
REFERENCE_MAX_TOKENS = 4096  # model.py GenerationConfig
REFERENCE_SEED = 0  # model.py passes seed=0 to the OpenAI API
REFERENCE_INDUSTRY_RUNS = 3  # industry_prediction/make_leaderboard.py: result_0, result_1, result_2


def load_reference_prompt(repo: Path, task: str) -> str:
    """The task's prompt from the user's checkout of EDINET-Bench (prompt/<config>.yaml, key `prompt`)."""
    import yaml

    path = Path(repo) / PROMPT_FILES[task]
    if not path.is_file():
        raise CompassError(f"{repo} is not a checkout of EDINET-Bench: no {PROMPT_FILES[task]} "
                           "(git clone https://github.com/SakanaAI/EDINET-Bench)")
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not isinstance(data.get("prompt"), str):
        raise CompassError(f"{path}: expected a YAML mapping with a string `prompt`")
    return data["prompt"]


# the script that runs each task in the checkout; its `--system_prompt` default is the system message it sends
PREDICT_SCRIPTS = {"edinet_fraud": Path("src/edinet_bench/predict.py"), "edinet_earnings": Path("src/edinet_bench/predict.py"),
                   "edinet_industry": Path("src/edinet_bench/industry_prediction/predict.py")}


def load_reference_system_prompt(repo: Path, task: str) -> str:
    """The system prompt the task's script sends: the string default of its `--system_prompt` argument, read from
    the checkout's source with `ast` (nothing of the checkout is executed)."""
    import ast

    path = Path(repo) / PREDICT_SCRIPTS[task]
    if not path.is_file():
        raise CompassError(f"{repo} is not a checkout of EDINET-Bench: no {PREDICT_SCRIPTS[task]} "
                           "(git clone https://github.com/SakanaAI/EDINET-Bench)")
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except SyntaxError as err:
        raise CompassError(f"{path}:{err.lineno}: not readable Python ({err.msg})") from None
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "add_argument"
                and node.args and isinstance(node.args[0], ast.Constant) and node.args[0].value == "--system_prompt"):
            defaults = [k.value for k in node.keywords if k.arg == "default"]
            if defaults and isinstance(defaults[0], ast.Constant) and isinstance(defaults[0].value, str):
                return defaults[0].value
            raise CompassError(f"{path}:{node.lineno}: --system_prompt has no string default")
    raise CompassError(f"{path}: no --system_prompt argument (expected EDINET-Bench's predict script)")


def reference_prompt(prompt: str, item: EdinetItem, sheets: tuple[str, ...]) -> str:
    values = dict(item.sheet_values)
    return prompt + "\n".join(f"{sheet}: {values[sheet]}" for sheet in sheets if sheet in values)


def reference_requests(items: list[EdinetItem], prompt: str, system_prompt: str, sheets: tuple[str, ...], *,
                       max_tokens: int, seed: int = REFERENCE_SEED) -> list[GenRequest]:
    return [GenRequest(id=i.id, messages=[{"role": "system", "content": system_prompt},
                                          {"role": "user", "content": reference_prompt(prompt, i, sheets)}],
                       max_tokens=max_tokens, temperature=0.0, seed=seed) for i in items]


_JSON_FENCE = re.compile(r"```json(.*?)```", re.DOTALL)
_BRACES = re.compile(r"\{.*?\}", re.DOTALL)
_CONTROL = re.compile(r"[\x00-\x1F\x7F]")


def reference_json(text: str | None):
    """What the reference's JSON reader returns for an answer: the first candidate that parses (any JSON
    value), or None."""
    if text is None:
        return None
    candidates = _JSON_FENCE.findall(text) or _BRACES.findall(text)
    for candidate in candidates:
        candidate = candidate.strip()
        for attempt in (candidate, _CONTROL.sub("", candidate)):
            try:
                return json.loads(attempt)
            except json.JSONDecodeError:
                continue
    return None


@dataclass(frozen=True)
class ReferenceAnswer:
    """One answer as the reference reads it; `status` is ok, dropped (no prediction, or no prob on a binary
    task) or crash (the reference would raise on it), with `why`."""

    prediction: int | str | None
    prob: float | None
    reasoning: object
    status: str
    why: str | None = None


def _finite_number(value) -> bool:
    import math

    return isinstance(value, (int, float)) and math.isfinite(value)


def reference_answer(task: str, text: str | None) -> ReferenceAnswer:
    parsed = reference_json(text)
    if parsed is None:
        return ReferenceAnswer(None, None, None, "dropped", "no JSON found")
    if not isinstance(parsed, dict):
        return ReferenceAnswer(None, None, None, "crash", f"the JSON is a {type(parsed).__name__}, not an object")
    prediction, prob, reasoning = parsed.get("prediction"), parsed.get("prob"), parsed.get("reasoning")
    if task == "edinet_industry":
        if prediction is None:
            return ReferenceAnswer(None, None, reasoning, "dropped", "no prediction")
        if not isinstance(prediction, str):
            return ReferenceAnswer(None, None, reasoning, "crash", f"prediction {prediction!r} is not a string")
        return ReferenceAnswer(prediction, None, reasoning, "ok")
    if prob is None or prediction is None:
        return ReferenceAnswer(None, None, reasoning, "dropped", "no prob" if prob is None else "no prediction")
    try:
        label = int(prediction)
    except (TypeError, ValueError, OverflowError):
        return ReferenceAnswer(None, None, reasoning, "crash", f"int() cannot read prediction {prediction!r}")
    if label not in (0, 1):
        return ReferenceAnswer(None, None, reasoning, "crash", f"prediction {label} is not 0 or 1")
    if not _finite_number(prob):
        return ReferenceAnswer(None, None, reasoning, "crash", f"prob {prob!r} is not a finite number")
    return ReferenceAnswer(label, float(prob), reasoning, "ok")


def reference_binary_metrics(labels: list[int], predictions: list[int], probs: list[float]) -> dict:
    """make_leaderboard.py's figures over the kept rows (sklearn, its default arguments)."""
    from sklearn.metrics import (accuracy_score, f1_score, matthews_corrcoef, precision_score, recall_score,
                                 roc_auc_score)

    if not labels:
        return {}
    out = {"accuracy": float(accuracy_score(labels, predictions)),
           "precision": float(precision_score(labels, predictions, zero_division=0.0)),
           "recall": float(recall_score(labels, predictions, zero_division=0.0)),
           "f1": float(f1_score(labels, predictions, zero_division=0.0)),
           "mcc": float(matthews_corrcoef(labels, predictions))}
    if len(set(labels)) == 2:
        out["roc_auc"] = float(roc_auc_score(labels, probs))
    return out


def score_reference_run(task: str, items: list[EdinetItem], results: dict[str, GenResult]) -> tuple[list[dict], dict]:
    """Rows and the reference figures of one run; dropped and crash rows are counted, not scored."""
    rows, kept = [], []
    for item in items:
        result = results[item.id]
        raw = result.text if result.ok else None
        answer = reference_answer(task, raw)
        rows.append({"id": item.id, "raw_output": raw, "error": result.error, "prediction": answer.prediction,
                     "prob": answer.prob, "reasoning": answer.reasoning, "status": answer.status, "why": answer.why,
                     "reference": item.label, "output_tokens": result.output_tokens})
        if answer.status == "ok":
            kept.append((item.label, answer))
    if task == "edinet_industry":
        metrics = {"accuracy": mean([float(label == a.prediction) for label, a in kept])} if kept else {}
    else:
        metrics = reference_binary_metrics([label for label, _ in kept], [a.prediction for _, a in kept],
                                           [a.prob for _, a in kept])
    metrics.update(n=len(items), scored_rows=len(kept),
                   dropped_rows=sum(r["status"] == "dropped" for r in rows),
                   reference_crash_rows=sum(r["status"] == "crash" for r in rows))
    return rows, metrics


def runs_summary(per_run: list[dict]) -> dict:
    """Mean and population std over runs of each figure every run has (numpy's std, as the leaderboard)."""
    import numpy as np

    out: dict = {"runs": len(per_run)}
    shared = set.intersection(*(set(m) for m in per_run)) if per_run else set()
    for key in sorted(shared):
        values = [m[key] for m in per_run]
        if key in ("n", "scored_rows", "dropped_rows", "reference_crash_rows"):
            out[key] = int(sum(values))
            continue
        out[key] = float(np.mean(values))
        out[f"{key}_std"] = float(np.std(values))
    return out


# --- registry tasks ------------------------------------------------------------------------------------


class EdinetSettings(BenchmarkConfig):
    """EDINET-Bench: the three tasks share these settings. protocol reference: the repo's prompts (from
    `repo`), its JSON reading, its metrics (dropped rows counted; industry over `reference_runs` runs);
    compass: compass's prompt, strict parsing, unparseable answers wrong, ROC-AUC from label log-likelihoods."""

    repo: Path | None = Field(None, description="checkout of EDINET-Bench (github.com/SakanaAI/EDINET-Bench); the "
                              "reference protocol reads prompt/<task>.yaml from it")
    sheets: list[Literal["summary", "bs", "pl", "cf", "text"]] = Field(
        ["summary", "bs", "pl", "cf"], description="EDINET-Bench record fields put into the prompt (both protocols; "
                                                   "the reference's --sheets default)")
    max_chars_per_sheet: int | None = Field(None, ge=1, description="cut each EDINET sheet to this many characters "
                                            "(compass protocol, for short-context models; None: whole)")
    reference_max_tokens: int = Field(REFERENCE_MAX_TOKENS, ge=1, description="generation limit under the reference "
                                      "protocol (its default)")
    reference_runs: int = Field(REFERENCE_INDUSTRY_RUNS, ge=1, description="runs of edinet_industry under the "
                                "reference protocol, reported as mean and std")

    @model_validator(mode="after")
    def _checkout(self):
        if self.protocol in ("reference", "both") and self.repo is None:
            raise ValueError(f"protocol {self.protocol} needs repo: a checkout of EDINET-Bench (--edinet-repo DIR)")
        return self


def _load(ctx) -> list[EdinetItem]:
    sheets, cap = tuple(ctx.settings.sheets), ctx.settings.max_chars_per_sheet
    if "reference" in ctx.protocols():  # read before any generation: a wrong checkout fails now
        ctx.state["prompt"] = load_reference_prompt(ctx.settings.repo, ctx.name)
        ctx.state["system_prompt"] = load_reference_system_prompt(ctx.settings.repo, ctx.name)
    if ctx.data_path is not None:
        return ctx.limited(load_items(ctx.name, ctx.data_path, None, sheets, cap))
    return ctx.limited(load_items(ctx.name, None, ctx.hub_rows(), sheets, cap))


def _with_label_likelihoods(ctx) -> bool:
    """ROC-AUC from label log-likelihoods: binary tasks on the local backend."""
    return ctx.config.backend == "local" and ctx.name != "edinet_industry"


def _reference_runs(ctx) -> list[str]:
    """Output names of the reference runs: one for a binary task, `reference_runs` for industry."""
    base = ctx.output_name("reference")
    if ctx.name != "edinet_industry":
        return [base]
    return [f"{base}.run{k + 1}" for k in range(ctx.settings.reference_runs)]


def _requests(ctx, items: list[EdinetItem]) -> Requests:
    out = Requests()
    if "compass" in ctx.protocols():
        name = ctx.output_name("compass")
        out.generate[name] = build_requests(items, max_tokens=ctx.config.max_new_tokens, seed=ctx.config.seed)
        if _with_label_likelihoods(ctx):
            out.chat_loglikelihood[name] = [(messages(item), c) for item in items for c in label_continuations(ctx.name)]
    if "reference" in ctx.protocols():
        for run in _reference_runs(ctx):  # the same settings each run, as the reference reruns its script
            out.generate[run] = reference_requests(items, ctx.state["prompt"], ctx.state["system_prompt"],
                                                   tuple(ctx.settings.sheets),
                                                   max_tokens=ctx.settings.reference_max_tokens)
    return out


def _score_compass(ctx, items: list[EdinetItem], answers) -> TaskOutput:
    import math

    name = ctx.output_name("compass")
    probs = None
    if _with_label_likelihoods(ctx):
        lls = answers.loglikelihoods[name]
        probs = {}
        for index, item in enumerate(items):
            l0, l1 = lls[2 * index], lls[2 * index + 1]
            top = max(l0, l1)
            probs[item.id] = math.exp(l1 - top) / (math.exp(l0 - top) + math.exp(l1 - top))
    requests = build_requests(items, max_tokens=ctx.config.max_new_tokens, seed=ctx.config.seed)
    rows, metrics = score(ctx.name, items, answers.generated[name], {r.id: r for r in requests}, probs)
    return TaskOutput(name, rows, metrics)


def _score_reference(ctx, items: list[EdinetItem], answers) -> list[TaskOutput]:
    runs = _reference_runs(ctx)
    scored_runs = [score_reference_run(ctx.name, items, answers.generated[run]) for run in runs]
    if len(runs) == 1:
        rows, metrics = scored_runs[0]
        return [TaskOutput(runs[0], rows, metrics)]
    outputs = [TaskOutput(run, rows, metrics) for run, (rows, metrics) in zip(runs, scored_runs)]
    return outputs + [TaskOutput(ctx.output_name("reference"), [], runs_summary([m for _, m in scored_runs]))]


def _score(ctx, items: list[EdinetItem], answers) -> list[TaskOutput]:
    produced = []
    for protocol in ctx.protocols():
        if protocol == "reference":
            produced += _score_reference(ctx, items, answers)
        else:
            produced.append(_score_compass(ctx, items, answers))
    return produced


BENCHMARK = Benchmark("edinet", EdinetSettings, tuple(
    EvalTask(name=task, kind="generate", load=_load, requests=_requests, score=_score, protocols=("reference", "compass"),
             inputs={task: Port(f"EDINET-Bench {config} rows (.jsonl/.json/.parquet with the dataset's fields)",
                                required=False)},
             hub=f"SakanaAI/EDINET-Bench:{config}:{'train' if task == 'edinet_industry' else 'test'}",
             summary=f"EDINET-Bench {config}: compass: strict JSON label parsing, accuracy, "
                     + ("macro_f1, MCC" if task == "edinet_industry" else "F1, MCC, ROC-AUC from label log-likelihoods")
                     + "; reference: the repo's prompts and metrics"
                     + (" (mean +- std over 3 runs)" if task == "edinet_industry" else " (ROC-AUC from the stated prob)"))
    for task, config in TASKS.items()), "EDINET-Bench settings (all three tasks)")
