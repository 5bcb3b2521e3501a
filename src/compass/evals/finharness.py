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

protocol compass: the checkout's default task files (`<task>.yaml`: description, doc_to_text, doc_to_choice,
doc_to_target, target_delimiter; templates rendered with Jinja as lm-eval renders them, `!function
utils.doc_to_text_00` loaded from the task folder's utils.py at run time, as lm-eval loads it: those prompts
exist only as Python in the checkout, and compass keeps no copy of any harness text) scored by compass's own
log-likelihood path, which splits and encodes each (context, continuation) exactly as lm-eval's HF backend
(tested equal per item to 1e-4 against lm-eval on the tiny model): one request per option (continuation =
target delimiter + option), prediction = the option with the highest summed log-probability (`accuracy`) or
the highest log-probability per character of the option (`accuracy_norm`, lm-eval's acc_norm). chabsa adds
macro-F1 over its offered labels (positive, negative).

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

import ast
import importlib
import importlib.util
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import jinja2
import yaml
from pydantic import Field, model_validator

from compass.errors import CompassError
from compass.evals.data import read_json_rows, require
from compass.evals.metrics import macro_f1, mean
from compass.evals.registry import Benchmark, BenchmarkConfig, EvalTask, LmEvalJob, Requests, TaskOutput
from compass.stages import Port

TASKS = ("chabsa", "cma_basics", "cpa_audit", "fp2", "security_sales_1")
TASK_FILES = "jlm_fin_eval/tasks"  # in a checkout of pfnet-research/japanese-lm-fin-harness
DEFAULT_VERSION = "default"  # the task file without a version suffix (<task>.yaml)
# lm-eval's TaskConfig default; the harness's chabsa file leaves it unset (its continuations are " positive")
LM_EVAL_TARGET_DELIMITER = " "


@dataclass(frozen=True)
class ChoiceItem:
    id: str
    context: str
    options: tuple[str, ...]
    delimiter: str
    gold: str  # the gold label text; may be outside `options` (chabsa 'neutral')


# --- the harness's prompts, read from the user's checkout --------------------------------------------------
#
# A task file names its prompt either as a Jinja template (chabsa's doc_to_text, over {{sentence}}) or as
# `!function utils.doc_to_text_00`, a Python function in the task folder's utils.py. The second kind exists only
# as code, so it is loaded from the checkout at run time, as lm-eval itself loads it (the reference protocol
# executes the same file through lm-eval); nothing of the harness's text is kept in compass.


class PromptFunction(str):
    """A task file's `!function module.name`: a prompt builder in a .py file beside the task file."""


class _TaskFileLoader(yaml.SafeLoader):
    pass


_TaskFileLoader.add_constructor("!function", lambda loader, node: PromptFunction(loader.construct_scalar(node)))


@dataclass(frozen=True)
class TaskPrompt:
    """How one task file of the checkout builds a multiple-choice request from a row (lm-eval's fields)."""

    file: Path
    description: str
    doc_to_text: str | Callable
    doc_to_choice: str | list | Callable
    doc_to_target: str | int | Callable
    target_delimiter: str


def _read_task_file(path: Path) -> dict:
    """A task YAML with its `include:` chain merged (the including file's keys win), as lm-eval reads it."""
    try:
        fields = yaml.load(path.read_text(encoding="utf-8"), Loader=_TaskFileLoader)
    except yaml.YAMLError as err:
        raise CompassError(f"{path}: not a readable task file ({err})") from None
    if not isinstance(fields, dict):
        raise CompassError(f"{path}: a task file must be a YAML mapping, got {type(fields).__name__}")
    if "include" in fields:
        return {**_read_task_file(path.parent / fields.pop("include")), **fields, "_file": path}
    return {**fields, "_file": path}


_loaded_modules: dict[Path, object] = {}


def _prompt_function(task_file: Path, name: str) -> Callable:
    """`module.function` from the .py file beside the task file (lm-eval's `!function` rule), loaded once."""
    module_name, _, function_name = name.rpartition(".")
    source = (task_file.parent / f"{module_name.replace('.', '/')}.py").resolve()
    if not source.is_file():
        raise CompassError(f"{task_file}: !function {name} needs {source}, which is not there")
    if source not in _loaded_modules:
        spec = importlib.util.spec_from_file_location(f"compass_finharness_checkout_{len(_loaded_modules)}", source)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _loaded_modules[source] = module
    module = _loaded_modules[source]
    if function_name not in vars(module):
        raise CompassError(f"{task_file}: !function {name}: {source} defines no {function_name}")
    return vars(module)[function_name]


def _field(fields: dict, key: str, file: Path):
    if key not in fields:
        raise CompassError(f"{file}: the task file (with its includes) has no {key}")
    value = fields[key]
    return _prompt_function(file, value) if isinstance(value, PromptFunction) else value


def task_prompt(repo: Path, task: str, version: str = DEFAULT_VERSION) -> TaskPrompt:
    """The prompt of one task file of the checkout (`<task>.yaml` for the default version)."""
    folder = Path(repo) / TASK_FILES / task
    file = folder / (f"{task}.yaml" if version == DEFAULT_VERSION else f"{task}-{version}.yaml")
    if not file.is_file():
        raise CompassError(f"{file} not found: finharness.repo must be a checkout of "
                           "pfnet-research/japanese-lm-fin-harness")
    fields = _read_task_file(file)
    if fields.get("output_type") != "multiple_choice":  # a missing key is reported with the value None
        raise CompassError(f"{file}: output_type {fields.get('output_type')!r}; compass scores multiple_choice only")
    return TaskPrompt(file=file, description=_field(fields, "description", file) if "description" in fields else "",
                      doc_to_text=_field(fields, "doc_to_text", file), doc_to_choice=_field(fields, "doc_to_choice", file),
                      doc_to_target=_field(fields, "doc_to_target", file),
                      target_delimiter=fields["target_delimiter"] if "target_delimiter" in fields else LM_EVAL_TARGET_DELIMITER)


# lm-eval renders templates with these settings (a template's trailing newline is kept)
_TEMPLATES = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)


def _resolve(value, row: dict, where: str):
    """One field for one row as lm-eval resolves it: a callable is called on the row, a string naming a column
    is that column, any other string is a Jinja template rendered on the row."""
    if callable(value):
        return value(row)
    if isinstance(value, str):
        if value in row:
            return row[value]
        try:
            return _TEMPLATES.from_string(value).render(**row)
        except jinja2.TemplateError as err:
            raise CompassError(f"{where}: template {value!r}: {err}") from None
    return value


def prompt_item(task: str, row: dict, prompt: TaskPrompt) -> ChoiceItem:
    """One harness row as (context, options, gold) the way lm-eval builds a 0-shot multiple-choice request:
    context = description + doc_to_text, continuation = target_delimiter + option."""
    where = f"{prompt.file} on {task} row {row['id']}"
    text = _resolve(prompt.doc_to_text, row, where)
    choices = _resolve(prompt.doc_to_choice, row, where)
    if isinstance(prompt.doc_to_choice, str) and prompt.doc_to_choice not in row:
        choices = ast.literal_eval(choices)  # a template of a list, as lm-eval reads it
    target = _resolve(prompt.doc_to_target, row, where)
    if isinstance(target, str) and target.isdigit() and isinstance(prompt.doc_to_target, str):
        target = int(target)  # lm-eval: a rendered all-digit target is an index into the choices
    if not isinstance(text, str) or not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
        raise CompassError(f"{where}: expected a text and a list of option strings, got {text!r} and {choices!r}")
    if isinstance(target, int):
        if not 0 <= target < len(choices):
            raise CompassError(f"{where}: target index {target} outside the {len(choices)} options")
        target = choices[target]
    description = _resolve(prompt.description, row, where)
    return ChoiceItem(f"{task}/{row['id']}", description + text, tuple(choices), prompt.target_delimiter, str(target))


# --- loading -------------------------------------------------------------------------------------------


def _read_json_file(file: Path):
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise CompassError(f"{file}:{err.lineno}: not valid JSON ({err.msg})") from None


def _cpa_audit_xlsx_rows(path: Path) -> list[dict]:
    """The harness's CPA_AUDIT.xlsx as rows of its data schema (statements ア..カ as context)."""
    import pandas as pd

    try:
        frame = pd.read_excel(path, index_col=0)
    except ImportError as err:
        raise CompassError(f"{path}: reading .xlsx needs openpyxl ({err}); pip install 'compass-vlm[finharness]', or convert the "
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


def harness_rows(task: str, path: Path) -> list[dict]:
    """The task's data as rows of the harness's dataset scripts (what its task files' prompts read): chabsa one
    row per opinion {id, sentence, target, polarity}; the others {id, question, context, choices: {id: [...],
    text: [...]}, answer}."""
    if task not in TASKS:
        raise CompassError(f"unknown fin-harness task {task!r}; expected one of {TASKS}")
    path = Path(path)
    if task == "chabsa":
        files = sorted(path.glob("*.json")) if path.is_dir() else [path]
        if not files:
            raise CompassError(f"chabsa: no .json files in {path} (expected the chABSA-dataset files)")
        rows = []
        for file in files:
            data = _read_json_file(file)
            require(data, ("sentences",), str(file))
            for s_index, sentence in enumerate(data["sentences"]):
                require(sentence, ("sentence", "opinions"), f"{file} sentence {s_index}")
                for opinion in sentence["opinions"]:
                    require(opinion, ("target", "polarity"), f"{file} sentence {s_index} opinion")
                    rows.append({"id": len(rows), "sentence": sentence["sentence"], "target": opinion["target"],
                                 "polarity": opinion["polarity"]})
        return rows
    raw = _cpa_audit_xlsx_rows(path) if task == "cpa_audit" and path.suffix.lower() == ".xlsx" else read_json_rows(path)
    rows = []
    for index, row in enumerate(raw):
        where = f"{path} record {index + 1}"
        require(row, ("question", "context", "choices", "answer"), where)
        for choice in row["choices"]:
            require(choice, ("id", "text"), f"{where} choice")
        ids = [int(c["id"]) for c in row["choices"]]
        if int(row["answer"]) not in ids:
            raise CompassError(f"{where}: answer {row['answer']} is not one of the choice ids {ids}")
        rows.append({"id": int(row["id"]) if "id" in row else index, "question": row["question"], "context": row["context"],
                     # a datasets Sequence of dicts reads back as a dict of lists, as the harness's utils expect
                     "choices": {"id": ids, "text": [c["text"] for c in row["choices"]]},
                     "answer": int(row["answer"])})
    return rows


def load_items(task: str, path: Path, prompt: TaskPrompt) -> list[ChoiceItem]:
    """The task's data as requests built by the checkout's prompt (`task_prompt`)."""
    return [prompt_item(task, row, prompt) for row in harness_rows(task, path)]


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
    if task == "chabsa":  # macro-F1 over the labels the task file offers (positive, negative in the harness)
        golds, offered = [r["reference"] for r in rows], tuple(dict.fromkeys(o for i in items for o in i.options))
        metrics["macro_f1"] = macro_f1(golds, [r["extracted"] for r in rows], offered)
        metrics["macro_f1_norm"] = macro_f1(golds, [r["extracted_norm"] for r in rows], offered)
    return rows, metrics


# --- the reference protocol: lm-evaluation-harness on the harness's own task files ----------------------

# the harness's own data files, used when the task's data input is not given (chabsa: the harness downloads the
# chABSA-dataset from Kaggle, so it has no file in the checkout: give --chabsa DIR)
CHECKOUT_DATA = {"cma_basics": "jlm_fin_eval/datasets/cma_basics/data.json",
                 "cpa_audit": "jlm_fin_eval/datasets/cpa/CPA_AUDIT.xlsx",
                 "fp2": "jlm_fin_eval/datasets/fp2/data.json",
                 "security_sales_1": "jlm_fin_eval/datasets/security_sales_1/data.json"}
# metrics lm-eval computes itself for multiple_choice; the harness's map*/f1_norm come from a process_results
# patch in its main.py, whose CLI imports no longer exist in lm-eval 0.4.13, so those entries are dropped
LM_EVAL_METRICS = ("acc", "acc_norm", "f1", "mcc")


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
    `repo`; compass: compass's own log-likelihood path on the prompts of the checkout's default task files (equal
    to lm-eval's per item) with macro-F1 over the offered labels. Both read every prompt from `repo`."""

    repo: Path | None = Field(None, description="a checkout of pfnet-research/japanese-lm-fin-harness (its task "
                              "files, prompt functions and data; every protocol reads its prompts from it)")
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
    if "compass" not in ctx.protocols():
        return []
    return ctx.limited(load_items(ctx.name, data_path(ctx), task_prompt(Path(ctx.settings.repo), ctx.name)))


def _reference_job(ctx) -> LmEvalJob:
    """One job for every fin task of the run x every version (the best version is chosen across tasks); each
    fin task asks for the same job and the stage runs it once."""
    fin_tasks = _fin_tasks_of(ctx)
    repo = Path(ctx.settings.repo)
    include = prepare_task_dir(repo, {t: _data_of(ctx, t) for t in fin_tasks}, ctx.out_dir / ".lm_eval_tasks")
    names = tuple(dict.fromkeys(name for row in _version_table(ctx).values() for name in row.values()))
    return LmEvalJob(tasks=names, include_path=include, num_fewshot=0, limit=ctx.config.limit,
                     extra_imports=(repo.resolve(),), setup=_register_harness_metrics, builtin_tasks=False)


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
    if ctx.settings.repo is None:  # the compass protocol (the reference is refused earlier by the settings)
        raise CompassError(f"task {ctx.name}: the fin-harness prompts are read from its task files: give a checkout "
                           "of pfnet-research/japanese-lm-fin-harness with --finharness-repo DIR")
    if "compass" in ctx.protocols():
        task_prompt(Path(ctx.settings.repo), ctx.name)  # a missing or unreadable task file, before any model runs


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
