"""EDINET-Bench (SakanaAI), 3 tasks on Japanese annual-report financials: accounting fraud detection
(binary), earnings forecast (binary: will net income attributable to owners of the parent rise next year),
industry prediction (16 classes).

The prompt is built from the statement fields of a record (`summary`, `bs`, `pl`, `cf`, optionally `text`;
JSON strings in the dataset) under a task instruction that asks for a JSON object {"prediction": ...}.
Parsing is strict: the answer must contain a JSON object (a ```json block or a bare {...}) whose
"prediction" is 0 or 1 (binary) or exactly one of the 16 category names (industry). Anything else is
unparseable: it counts as wrong in every metric and is reported as `unparseable_rate` (the reference
evaluation dropped such answers from its denominators). ROC-AUC of the binary tasks comes from the label
log-likelihoods on the local backend: P(1) = softmax over the log-probabilities of the two answers
'{"prediction": 0}' and '{"prediction": 1}' after the same prompt; it needs both classes among the golds.

Data: the dataset's own rows (hub parquet, or a local .jsonl / .json / .parquet with the same fields):
meta, summary, bs, pl, cf, text, edinet_code, doc_id, and `label` (0/1) or `industry` (category name).
"""
from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field

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
    prompt: str
    label: int | str


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
        items.append(EdinetItem(f"{task}/{row['doc_id']}", INSTRUCTIONS[task] + "\n".join(parts), label))
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
    metrics["mean_output_tokens"] = mean([float(r["output_tokens"]) for r in rows if r["output_tokens"] is not None])
    metrics["n"] = len(rows)
    return rows, metrics


# --- registry tasks ------------------------------------------------------------------------------------


class EdinetSettings(BenchmarkConfig):
    """EDINET-Bench: the three tasks share these settings."""

    sheets: list[Literal["summary", "bs", "pl", "cf", "text"]] = Field(
        ["summary", "bs", "pl", "cf"], description="EDINET-Bench record fields put into the prompt")
    max_chars_per_sheet: int | None = Field(None, ge=1, description="cut each EDINET sheet to this many characters "
                                            "(for short-context models; None: whole)")


def _load(ctx) -> list[EdinetItem]:
    sheets, cap = tuple(ctx.settings.sheets), ctx.settings.max_chars_per_sheet
    if ctx.data_path is not None:
        return ctx.limited(load_items(ctx.name, ctx.data_path, None, sheets, cap))
    return ctx.limited(load_items(ctx.name, None, ctx.hub_rows(), sheets, cap))


def _with_label_likelihoods(ctx) -> bool:
    """ROC-AUC from label log-likelihoods: binary tasks on the local backend."""
    return ctx.config.backend == "local" and ctx.name != "edinet_industry"


def _requests(ctx, items: list[EdinetItem]) -> Requests:
    name = ctx.output_name("compass")
    out = Requests(generate={name: build_requests(items, max_tokens=ctx.config.max_new_tokens, seed=ctx.config.seed)})
    if _with_label_likelihoods(ctx):
        out.chat_loglikelihood[name] = [(messages(item), c) for item in items for c in label_continuations(ctx.name)]
    return out


def _score(ctx, items: list[EdinetItem], answers) -> list[TaskOutput]:
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
    return [TaskOutput(name, rows, metrics)]


BENCHMARK = Benchmark("edinet", EdinetSettings, tuple(
    EvalTask(name=task, kind="generate", load=_load, requests=_requests, score=_score,
             inputs={task: Port(f"EDINET-Bench {config} rows (.jsonl/.json/.parquet with the dataset's fields)",
                                required=False)},
             hub=f"SakanaAI/EDINET-Bench:{config}:{'train' if task == 'edinet_industry' else 'test'}",
             summary=f"EDINET-Bench {config}: strict JSON label parsing, accuracy, "
                     + ("macro_f1, MCC" if task == "edinet_industry" else "F1, MCC, ROC-AUC from label log-likelihoods"))
    for task, config in TASKS.items()), "EDINET-Bench settings (all three tasks)")
