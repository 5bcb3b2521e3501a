"""japanese-lm-fin-harness (pfnet-research), 5 tasks on lm-evaluation-harness, in two protocols.

protocol reference (`finharness.repo` = a checkout of the harness): lm-evaluation-harness itself (the
`lm-eval` extra) runs the checkout's own task files, every prompt version (`<task>.yaml` = 'default' and each
`<task>-<version>.yaml`, as they are, with their utils.py), 0-shot on the local model through lm-eval's HFLM;
the data are the checkout's data files (or the task's input) converted to JSONL in its dataset scripts' schema,
because `datasets` no longer runs loading scripts. The figures are the leaderboard's (make_leaderboard.py):
per version, chabsa's f1 (sklearn macro-F1 over the labels present x 1.5, the harness's aggregation, registered
by importing the checkout's jlm_fin_eval) and the others' acc; the best version is the one with the highest
average over the run's tasks (zeros left out), and every version's figures are reported beside it
(TASK.reference.v<version>.*). The harness's map*/f1_norm come from a patch in its main.py that no longer
imports under lm-eval 0.4.13; those metric entries are dropped from the prepared task files.

protocol compass: the harness's default prompts (prompt version "0.0") scored by compass's own
log-likelihood path, which splits and encodes each (context, continuation) exactly as lm-eval's HF backend
(tested equal per item to 1e-4 against lm-eval on the tiny model): one request per option (continuation =
target delimiter + option), prediction = the option with the highest summed log-probability (`accuracy`) or
the highest log-probability per character of the option (`accuracy_norm`, lm-eval's acc_norm). chabsa adds
macro-F1 over its two offered labels.

Data, in the harness's own formats:
- chabsa: the chABSA-dataset JSON files (a directory of them, or one file): {"sentences": [{"sentence",
  "opinions": [{"target", "polarity"}, ...]}, ...]}; one item per opinion. Gold 'neutral' opinions are kept
  and can never be right (the harness offers only positive/negative), exactly as in the harness.
- cma_basics, fp2, security_sales_1: the harness's data.json, {"data": [{"id", "question", "context",
  "choices": [{"id", "text"}], "answer"}, ...]}.
- cpa_audit: the same JSON schema, or the harness's CPA_AUDIT.xlsx (needs openpyxl; rows with
  abnormal_flg == 1 or an empty question are skipped, answer = a_no - 1, as the harness's loader does).

chabsa macro-F1 (compass): the mean F1 of 'positive' and 'negative'. The harness's figure (sklearn's macro-F1
over the labels present x 1.5) equals it only when gold 'neutral' items exist (their F1 is 0) and every
present label is predicted or gold; the 2-label mean stays right on data without neutral items.
"""
from __future__ import annotations

import importlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field, model_validator

from compass.errors import CompassError
from compass.evals.data import read_json_rows, require
from compass.evals.metrics import macro_f1, mean
from compass.evals.registry import Benchmark, BenchmarkConfig, EvalTask, LmEvalJob, Requests, TaskOutput
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


# --- the reference protocol: lm-evaluation-harness on the harness's own task files ----------------------

TASK_FILES = "jlm_fin_eval/tasks"  # in a checkout of pfnet-research/japanese-lm-fin-harness
# the harness's own data files, used when the task's data input is not given (chabsa: the harness downloads the
# chABSA-dataset from Kaggle, so it has no file in the checkout: give --chabsa DIR)
CHECKOUT_DATA = {"cma_basics": "jlm_fin_eval/datasets/cma_basics/data.json",
                 "cpa_audit": "jlm_fin_eval/datasets/cpa/CPA_AUDIT.xlsx",
                 "fp2": "jlm_fin_eval/datasets/fp2/data.json",
                 "security_sales_1": "jlm_fin_eval/datasets/security_sales_1/data.json"}
# metrics lm-eval computes itself for multiple_choice; the harness's map*/f1_norm come from a process_results
# patch in its main.py, whose CLI imports no longer exist in lm-eval 0.4.13, so those entries are dropped
LM_EVAL_METRICS = ("acc", "acc_norm", "f1", "mcc")
DEFAULT_VERSION = "default"  # the task file without a version suffix (<task>.yaml)


def harness_rows(task: str, path: Path) -> list[dict]:
    """The task's data as rows of the harness's dataset scripts (what its doc_to_text functions read)."""
    path = Path(path)
    if task == "chabsa":
        files = sorted(path.glob("*.json")) if path.is_dir() else [path]
        rows = []
        for file in files:
            data = json.loads(file.read_text(encoding="utf-8"))
            require(data, ("sentences",), str(file))
            for sentence in data["sentences"]:
                for opinion in sentence["opinions"]:
                    rows.append({"id": len(rows), "sentence": sentence["sentence"], "target": opinion["target"],
                                 "polarity": opinion["polarity"]})
        return rows
    raw = _cpa_audit_xlsx_rows(path) if task == "cpa_audit" and path.suffix.lower() == ".xlsx" else read_json_rows(path)
    rows = []
    for index, row in enumerate(raw):
        require(row, ("question", "context", "choices", "answer"), f"{path} record {index + 1}")
        rows.append({"id": int(row["id"]) if "id" in row else index, "question": row["question"], "context": row["context"],
                     # a datasets Sequence of dicts reads back as a dict of lists, as the harness's utils expect
                     "choices": {"id": [int(c["id"]) for c in row["choices"]], "text": [c["text"] for c in row["choices"]]},
                     "answer": int(row["answer"])})
    return rows


def prompt_versions(repo: Path, task: str) -> list[str]:
    """The prompt versions of a task in the checkout: 'default' (<task>.yaml) and each <task>-<version>.yaml."""
    folder = Path(repo) / TASK_FILES / task
    if not (folder / f"{task}.yaml").is_file():
        raise CompassError(f"{folder}/{task}.yaml not found: finharness.repo must be a checkout of "
                           "pfnet-research/japanese-lm-fin-harness")
    found = [f.stem[len(task) + 1:] for f in folder.glob(f"{task}-*.yaml")]
    return [DEFAULT_VERSION] + sorted(found)


def lm_eval_task_name(task: str, version: str) -> str:
    return task if version == DEFAULT_VERSION else f"{task}-{version}"


def version_files(repo: Path, tasks: list[str], versions: list[str] | None) -> dict[str, dict[str, str]]:
    """version -> task -> the lm-eval task that runs it. A version is the union over the tasks' files; a task
    without that version's file runs its parent version (chabsa has no 1.0-0.1.2: it runs 1.0-0.1), as the
    harness's own run scripts do."""
    found = {task: prompt_versions(repo, task) for task in tasks}
    union = sorted({v for vs in found.values() for v in vs}, key=lambda v: (v != DEFAULT_VERSION, v))
    if versions is not None:
        missing = [v for v in versions if v not in union]
        if missing:
            raise CompassError(f"finharness.prompt_versions {missing} not in the checkout's task files {union}")
        union = list(versions)
    table: dict[str, dict[str, str]] = {}
    for version in union:
        table[version] = {}
        for task in tasks:
            own = version
            while own not in found[task]:
                head, _, tail = own.rpartition(".")
                if "-" not in head or not tail:  # no parent left within the version's own numbering
                    raise CompassError(f"{task} has no prompt version {version} nor a parent of it ({found[task]})")
                own = head
            table[version][task] = lm_eval_task_name(task, own)
    return table


_METRIC_ENTRY = re.compile(r"^\s*-\s*metric:\s*(\S+)\s*$")


def _rewrite_base_yaml(text: str, data_file: Path) -> str:
    """The task's base YAML with its dataset script replaced by the converted rows (datasets no longer runs
    loading scripts) and its metric list cut to what lm-eval computes; every prompt line stays as written."""
    lines, out, in_metrics, keep_entry = text.splitlines(), [], False, True
    for line in lines:
        if line.startswith("dataset_path:"):
            out += ["dataset_path: json", "dataset_kwargs:", "  data_files:", f"    test: {json.dumps(str(data_file))}"]
            continue
        if line.startswith("dataset_name:"):
            out.append("dataset_name: null")
            continue
        if line.startswith("metric_list:"):
            in_metrics = True
            out.append(line)
            continue
        if in_metrics and line and not line[0].isspace() and not line.startswith("-"):
            in_metrics = False
        if in_metrics:
            entry = _METRIC_ENTRY.match(line)
            if entry:
                keep_entry = entry.group(1) in LM_EVAL_METRICS
            if keep_entry:
                out.append(line)
            continue
        out.append(line)
    return "\n".join(out) + "\n"


def prepare_task_dir(repo: Path, data: dict[str, Path], dest: Path) -> Path:
    """An lm-eval include path holding, per task, the checkout's own task files (every prompt version and
    its utils.py, as they are) beside its data converted to JSONL; returns `dest`."""
    import shutil

    for task, data_path in data.items():
        source = Path(repo) / TASK_FILES / task
        target = dest / task
        target.mkdir(parents=True, exist_ok=True)
        rows_file = target / "data.jsonl"
        rows_file.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in harness_rows(task, data_path)),
                             encoding="utf-8")
        for file in sorted(source.iterdir()):
            if file.suffix == ".py":
                shutil.copyfile(file, target / file.name)
            elif file.suffix == ".yaml":
                text = file.read_text(encoding="utf-8")
                if file.name == f"{task}.yaml":
                    text = _rewrite_base_yaml(text, rows_file.resolve())
                (target / file.name).write_text(text, encoding="utf-8")
    return dest


def _leaderboard_value(task_results: dict) -> float:
    """The figure the harness's make_leaderboard.py takes per task: f1 if the task reports it, else acc."""
    return float(task_results["f1,none"] if "f1,none" in task_results else task_results["acc,none"])


def best_version(results: dict, table: dict[str, dict[str, str]]) -> tuple[str, dict[str, float]]:
    """The leaderboard's choice: the prompt version with the highest average over the tasks (a zero figure is
    left out of that average, as make_leaderboard.py does); returns it and every version's average."""
    averages = {}
    for version, names in table.items():
        values = [_leaderboard_value(results[name]) for name in names.values()]
        nonzero = [v for v in values if v]
        averages[version] = sum(nonzero) / len(nonzero) if nonzero else 0.0
    versions = list(table)
    best = versions[0]
    for version in versions:  # strictly greater: the first of equal averages wins
        if averages[version] > averages[best]:
            best = version
    return best, averages


def _version_key(version: str) -> str:
    return "v" + version.replace(".", "_")


def reference_outputs(task: str, table: dict[str, dict[str, str]], result: dict) -> list[tuple[str, list[dict], dict]]:
    """(name suffix, rows, metrics) of one task from the lm-eval result of all tasks x versions: '' = the
    leaderboard's figure (the best version's), then '.v<version>' for each version."""
    results = result["results"]
    best, averages = best_version(results, table)
    versions = list(table)

    def figures(version: str) -> tuple[list[dict], dict]:
        name = table[version][task]
        values = results[name]
        rows = [reference_row(task, sample) for sample in result["samples"][name]]
        metrics = {"accuracy": float(values["acc,none"]), "accuracy_norm": float(values["acc_norm,none"])}
        if "f1,none" in values:
            metrics["macro_f1"] = float(values["f1,none"])  # the harness's figure: sklearn macro-F1 x 1.5
        metrics.update(leaderboard_average=averages[version], n=len(rows))
        return rows, metrics

    rows, metrics = figures(best)
    out = [("", rows, {"prompt_version": best, **metrics})]
    out += [(f".{_version_key(v)}", *figures(v)) for v in versions]
    return out


def reference_row(task: str, sample: dict) -> dict:
    """One lm-eval sample as a predictions row: the context, options, per-option log-likelihoods, the pick."""
    context = sample["arguments"][0][0]  # one (context, continuation) request per option
    options = [continuation for _, continuation in sample["arguments"]]
    lls = [float(r[0]) for r in sample["filtered_resps"]]
    best = max(range(len(lls)), key=lambda i: lls[i])
    return {"id": f"{task}/{sample['doc_id']}", "input": context, "options": options, "logprobs": lls,
            "extracted": options[best], "reference": sample["target"], "score": float(sample["acc"]),
            "score_norm": float(sample["acc_norm"]), "output_tokens": 0}


# --- registry tasks ------------------------------------------------------------------------------------


class FinHarnessSettings(BenchmarkConfig):
    """japanese-lm-fin-harness: the five tasks share these settings. protocol reference: lm-evaluation-harness
    on the checkout's task files (every prompt version; the leaderboard's best-of-versions figure), needs
    `repo`; compass: compass's own log-likelihood path on the harness's default prompts (equal to lm-eval's per
    item) with macro-F1 over the two offered labels."""

    repo: Path | None = Field(None, description="a checkout of pfnet-research/japanese-lm-fin-harness (its task "
                              "files and data; needed by protocol reference)")
    prompt_versions: list[str] | None = Field(None, description="reference protocol: the prompt versions to run "
                                              "('default', '1.0-0.1', ...); None: every version in the checkout")

    @model_validator(mode="after")
    def _repo_for_reference(self):
        if self.protocol in ("reference", "both") and self.repo is None:
            raise ValueError(f"finharness protocol {self.protocol} needs repo: a checkout of "
                             "pfnet-research/japanese-lm-fin-harness (--finharness-repo DIR)")
        return self


def data_path(ctx) -> Path | None:
    """The task's data: its input, else (with a checkout) the harness's own file."""
    if ctx.data_path is not None:
        return ctx.data_path
    if ctx.settings.repo is not None and ctx.name in CHECKOUT_DATA:
        return Path(ctx.settings.repo) / CHECKOUT_DATA[ctx.name]
    return None


def _fin_tasks_of(ctx) -> list[str]:
    return [t for t in ctx.config.tasks if t in TASKS]


def _version_table(ctx) -> dict[str, dict[str, str]]:
    return version_files(Path(ctx.settings.repo), _fin_tasks_of(ctx), ctx.settings.prompt_versions)


def _load(ctx) -> list[ChoiceItem]:
    return ctx.limited(load_items(ctx.name, data_path(ctx))) if "compass" in ctx.protocols() else []


def _reference_job(ctx) -> LmEvalJob:
    """One job for every fin task of the run x every version (the best version is chosen across tasks); each
    fin task asks for the same job and the stage runs it once."""
    fin_tasks = _fin_tasks_of(ctx)
    repo = Path(ctx.settings.repo)
    include = prepare_task_dir(repo, {t: _data_of(ctx, t) for t in fin_tasks}, ctx.out_dir / ".lm_eval_tasks")
    names = tuple(dict.fromkeys(name for row in _version_table(ctx).values() for name in row.values()))
    return LmEvalJob(tasks=names, include_path=include, num_fewshot=0, limit=ctx.config.limit,
                     extra_imports=(repo.resolve(),), setup=_register_harness_metrics)


def _data_of(ctx, task: str) -> Path:
    if task in ctx.inputs:
        return ctx.inputs[task]
    if task in CHECKOUT_DATA:
        return Path(ctx.settings.repo) / CHECKOUT_DATA[task]
    raise CompassError(f"task {task}: give its data with --{task.replace('_', '-')} PATH")


def _register_harness_metrics() -> None:
    """Import the checkout's jlm_fin_eval (its __init__ registers the harness's aggregations with lm-eval,
    e.g. 2class_adjusted_macro_f1_score_for_chabsa)."""
    importlib.import_module("jlm_fin_eval")


def _requests(ctx, items: list[ChoiceItem]) -> Requests:
    out = Requests()
    if "compass" in ctx.protocols():
        out.loglikelihood[ctx.output_name("compass")] = requests(items)
    if "reference" in ctx.protocols():
        out.lm_eval["finharness.reference"] = _reference_job(ctx)
    return out


def _score(ctx, items: list[ChoiceItem], answers) -> list[TaskOutput]:
    produced = []
    if "reference" in ctx.protocols():
        for suffix, rows, metrics in reference_outputs(ctx.name, _version_table(ctx), answers.lm_eval["finharness.reference"]):
            produced.append(TaskOutput(ctx.output_name("reference", suffix), rows, metrics))
    if "compass" in ctx.protocols():
        name = ctx.output_name("compass")
        rows, metrics = score(ctx.name, items, answers.loglikelihoods[name])
        produced.append(TaskOutput(name, rows, metrics))
    return produced


def _check(ctx) -> None:
    if "reference" in ctx.protocols():
        from compass.evals.lm_harness import require_lm_eval

        require_lm_eval()
        _version_table(ctx)
    if data_path(ctx) is None:
        raise CompassError(f"task {ctx.name}: give the harness's data with --{ctx.name.replace('_', '-')} PATH "
                           "(japanese-lm-fin-harness has no hub dataset)")


_PORTS = {
    "chabsa": "chABSA-dataset JSON files (directory) or one such file",
    "cma_basics": "japanese-lm-fin-harness cma_basics data.json (default with finharness.repo: the checkout's)",
    "cpa_audit": "japanese-lm-fin-harness CPA_AUDIT.xlsx or data.json in the harness schema",
    "fp2": "japanese-lm-fin-harness fp2 data.json",
    "security_sales_1": "japanese-lm-fin-harness security_sales_1 data.json",
}

BENCHMARK = Benchmark("finharness", FinHarnessSettings, tuple(
    EvalTask(name=task, kind="loglikelihood", inputs={task: Port(help_text, required=False)}, load=_load,
             requests=_requests, score=_score, check=_check, protocols=("reference", "compass"),
             summary="japanese-lm-fin-harness, 0-shot log-likelihood multiple choice: accuracy, accuracy_norm"
                     + (", macro_f1" if task == "chabsa" else "") + "; reference: lm-eval, best of prompt versions")
    for task, help_text in _PORTS.items()), "japanese-lm-fin-harness settings (all five tasks)")
