"""Evaluate a checkpoint on benchmarks: predictions JSONL per task + metrics (docs/method.md A evaluation, B.6).

Tasks:
  gsm8k, mgsm_ja, problems     math with the XML reasoning prompt (EN/JA): accuracy, format_valid_rate,
                               boxed_rate, mean_output_tokens (`problems`: compass Problem JSONL, e.g.
                               held-out reasoning-gym problems from the `sources` stage)
  chabsa, cma_basics, cpa_audit, fp2, security_sales_1
                               japanese-lm-fin-harness, 0-shot log-likelihood multiple choice: accuracy,
                               accuracy_norm (+ macro_f1 for chabsa); local backend only
  edinet_fraud, edinet_earnings, edinet_industry
                               EDINET-Bench: strict JSON label parsing, accuracy, F1/macro_f1, MCC,
                               unparseable_rate, ROC-AUC from label log-likelihoods (local backend)
  mmlongbench                  MMLongBench-Doc style: PDF pages as images, short-answer extraction,
                               format-aware scoring: accuracy, f1, single/cross-page/unanswerable splits

Metrics are named TASK.METRIC (`gsm8k.accuracy`); with `cot` on or both, generation tasks (math,
mmlongbench) are named TASK.cot_on.METRIC / TASK.cot_off.METRIC, and `both` adds TASK.cot_gain.accuracy
(on - off) and TASK.cot_token_ratio (mean output tokens on / off). A task's data comes from its input
(a local file in the benchmark's own schema) or else from `hub` (on a machine with the Hugging Face hub).
Writes predictions/<task>[.cot_on|.cot_off].jsonl (input, raw output, extracted answer, score, output
tokens), metrics.json and summary.md (the table also printed at the end).
Checkpoints side by side: `compass eval compare RUN_DIR...` (e.g. the eval runs of base, SFT and DPO).
"""
from __future__ import annotations

import gc
import math
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from compass.config import StageConfig
from compass.errors import CompassError
from compass.generate.config import OpenAISettings
from compass.stages import Port
from compass.vocab import COT, IMAGE_TOKEN

EXAMPLE = ("compass eval --model work/sft/merged --tasks gsm8k,mgsm_ja --gsm8k data/gsm8k_test.jsonl "
           "--mgsm-ja data/mgsm_ja.tsv --limit 100 --cot both --out work/eval-sft")

MATH_TASKS = ("gsm8k", "mgsm_ja", "problems")
FIN_TASKS = ("chabsa", "cma_basics", "cpa_audit", "fp2", "security_sales_1")
EDINET_TASKS = ("edinet_fraud", "edinet_earnings", "edinet_industry")
DOC_TASKS = ("mmlongbench",)
TASKS = MATH_TASKS + FIN_TASKS + EDINET_TASKS + DOC_TASKS
COT_TASKS = MATH_TASKS + DOC_TASKS  # generation tasks that take the <cot> control token
TaskName = Literal["gsm8k", "mgsm_ja", "problems", "chabsa", "cma_basics", "cpa_audit", "fp2", "security_sales_1",
                   "edinet_fraud", "edinet_earnings", "edinet_industry", "mmlongbench"]

HUB_DEFAULTS = {
    "gsm8k": "openai/gsm8k:main:test",
    "mgsm_ja": "juletxara/mgsm:ja:test",
    "edinet_fraud": "SakanaAI/EDINET-Bench:fraud_detection:test",
    "edinet_earnings": "SakanaAI/EDINET-Bench:earnings_forecast:test",
    "edinet_industry": "SakanaAI/EDINET-Bench:industry_prediction:train",
}


class Config(StageConfig):
    tasks: list[TaskName] = Field(["gsm8k"], min_length=1, description="tasks to run, a list or 'a,b,c': " + ", ".join(TASKS))
    backend: Literal["local", "openai"] = Field("local", description="local: the --model directory with transformers "
                                                "(LLM or VLM); openai: an OpenAI-compatible server (settings in `openai`)")
    openai: OpenAISettings = Field(default_factory=OpenAISettings, description="server settings for backend openai")
    limit: int | None = Field(None, ge=1, description="evaluate only the first N items of each task (None: all)")
    batch_size: int = Field(8, ge=1, description="prompts per forward/generate call on the local backend")
    device: str = Field("cpu", description="torch device of the local backend, e.g. cpu, cuda")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field("auto", description="weights dtype (local backend)")
    cot: Literal["on", "off", "both"] = Field("off", description="the <cot> control token in the system message of "
                                              "generation tasks: on, off, or both side by side")
    max_new_tokens: int = Field(1024, ge=1, description="generation limit per answer")
    hub: dict[str, str] = Field(default_factory=lambda: dict(HUB_DEFAULTS),
                                description="task -> 'DATASET_ID:CONFIG:SPLIT' read when the task's data input is not given")
    edinet_sheets: list[Literal["summary", "bs", "pl", "cf", "text"]] = Field(
        ["summary", "bs", "pl", "cf"], description="EDINET-Bench record fields put into the prompt")
    edinet_max_chars_per_sheet: int | None = Field(None, ge=1, description="cut each EDINET sheet to this many "
                                                   "characters (for short-context models; None: whole)")
    mmlongbench_dpi: float = Field(144.0, gt=0, description="page rendering resolution")
    mmlongbench_max_long_side: int = Field(1400, ge=16, description="cap on a rendered page's longer side, pixels")
    mmlongbench_max_pages: int = Field(32, ge=1, description="pages shown per document (the first N)")
    extractor: Literal["rule", "llm"] = Field("rule", description="MMLongBench short-answer extraction: rule-based, "
                                              "or an LLM through `extractor_openai` (the reference protocol)")
    extractor_openai: OpenAISettings = Field(default_factory=OpenAISettings, description="server of the LLM extractor")
    extractor_max_tokens: int = Field(256, ge=1, description="token limit of one extractor reply")

    @field_validator("tasks", mode="before")
    @classmethod
    def _split_tasks(cls, value):
        if isinstance(value, str):  # the CLI passes 'gsm8k,mgsm_ja'
            return [t.strip() for t in value.split(",") if t.strip()]
        return value

    @field_validator("cot", mode="before")
    @classmethod
    def _yaml_booleans(cls, value):
        if isinstance(value, bool):  # YAML 1.1 reads a bare on/off as true/false
            return "on" if value else "off"
        return value

    @model_validator(mode="after")
    def _consistent(self):
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"tasks are listed twice: {self.tasks}")
        unknown = sorted(set(self.hub) - set(TASKS))
        if unknown:
            raise ValueError(f"hub has unknown task(s) {unknown}; tasks are {list(TASKS)}")
        if self.backend == "openai" and not self.openai.model:
            raise ValueError("backend 'openai' needs openai.model (the name the server serves)")
        if self.backend == "openai" and set(self.tasks) & set(FIN_TASKS):
            raise ValueError(f"{sorted(set(self.tasks) & set(FIN_TASKS))} score options by log-likelihood, which needs "
                             "backend local (chat servers return no prompt log-probabilities)")
        if "mmlongbench" in self.tasks and self.extractor == "llm" and not self.extractor_openai.model:
            raise ValueError("extractor 'llm' needs extractor_openai.model")
        return self


INPUTS = {
    "model": Port("model directory (LLM or VLM, transformers format); not needed with backend openai", required=False),
    "gsm8k": Port("GSM8K JSONL ({question, answer: '... #### N'}) or compass Problem JSONL", required=False),
    "mgsm_ja": Port("MGSM TSV (question<TAB>answer_number), JSONL {question, answer_number}, or Problem JSONL",
                    required=False),
    "problems": Port("compass Problem JSONL, e.g. held-out problems from the sources stage", required=False),
    **{task: Port(f"EDINET-Bench {config} rows (.jsonl/.json/.parquet with the dataset's fields)", required=False)
       for task, config in (("edinet_fraud", "fraud_detection"), ("edinet_earnings", "earnings_forecast"),
                            ("edinet_industry", "industry_prediction"))},
    "chabsa": Port("chABSA-dataset JSON files (directory) or one such file", required=False),
    "cma_basics": Port("japanese-lm-fin-harness cma_basics data.json", required=False),
    "cpa_audit": Port("japanese-lm-fin-harness CPA_AUDIT.xlsx or data.json in the harness schema", required=False),
    "fp2": Port("japanese-lm-fin-harness fp2 data.json", required=False),
    "security_sales_1": Port("japanese-lm-fin-harness security_sales_1 data.json", required=False),
    "mmlongbench": Port("MMLongBench-Doc samples.json, or DocQuestion JSONL (pdf-fixtures stage)", required=False),
    "mmlongbench_docs": Port("directory of the PDFs the mmlongbench questions refer to", required=False),
}
OUTPUTS = {"predictions": "predictions", "metrics": "metrics.json", "summary": "summary.md"}
PAGES_DIR = ".pages"  # rendered page images: a cache, hidden from the manifest's output hashes


# --- plumbing ------------------------------------------------------------------------------------------


def _progress(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="item", leave=False)


def _collect(backend, requests: list, desc: str) -> dict:
    """Run requests through a backend (results arrive in completion order) into id -> GenResult."""
    results = {}
    with _progress(len(requests), desc) as bar:
        for result in backend.generate(iter(requests)):
            results[result.id] = result
            bar.update(1)
    missing = [r.id for r in requests if r.id not in results]
    if missing:
        raise CompassError(f"{desc}: the backend returned no result for {len(missing)} request(s), e.g. {missing[:3]}")
    return results


def _unique_ids(items, task: str) -> None:
    seen = set()
    for item in items:
        if item.id in seen:
            raise CompassError(f"{task}: item id {item.id!r} appears twice in the data")
        seen.add(item.id)


class Engines:
    """The backends of one run, created on first use; the local model is loaded once per role and released
    before the other role loads (generation first, log-likelihood after) so two copies never coexist."""

    def __init__(self, config: Config, model: Path | None):
        self.config, self.model = config, model
        self._generator = None
        self._scorer = None

    def _local_model(self):
        from compass.generate.local_model import LocalModel

        return LocalModel(self.model, device=self.config.device, dtype=self.config.dtype, batch_size=self.config.batch_size)

    def generator(self):
        if self._generator is not None:
            return self._generator
        self._release_scorer()
        if self.config.backend == "openai":
            from compass.generate.config import TransformersSettings, make_backend

            self._generator = make_backend("openai", self.config.openai, TransformersSettings())
            return self._generator
        from compass.generate.local_model import is_vlm

        if is_vlm(self.model):
            self._generator = self._local_model()  # VLM: images, or text through the VLM
        else:  # text-only LLM: the project's batched transformers backend
            from compass.generate.local import TransformersBackend

            self._generator = TransformersBackend(self.model, batch_size=self.config.batch_size,
                                                  device=self.config.device, dtype=self.config.dtype)
        return self._generator

    def scorer(self):
        if self._scorer is not None:
            return self._scorer
        if self._generator is not None and self.config.backend == "local":
            from compass.generate.local_model import LocalModel

            if isinstance(self._generator, LocalModel):  # already loaded: one model serves both roles
                self._scorer = self._generator
                return self._scorer
            self._generator = None
            gc.collect()
        self._scorer = self._local_model()
        return self._scorer

    def _release_scorer(self):
        if self._scorer is not None and self._scorer is not self._generator:
            self._scorer = None
            gc.collect()


# --- per benchmark -------------------------------------------------------------------------------------


def _variants(config: Config, task: str) -> list[tuple[str, bool | None]]:
    """(name suffix, cot flag) pairs a task runs as."""
    if task not in COT_TASKS:
        return [("", None)]
    return {"off": [("", False)], "on": [(".cot_on", True)], "both": [(".cot_on", True), (".cot_off", False)]}[config.cot]


def _limit(items: list, config: Config) -> list:
    return items if config.limit is None else items[: config.limit]


def _hub_rows(config: Config, task: str) -> list[dict]:
    from compass.evals.data import load_hub_rows

    return load_hub_rows(config.hub[task])  # check_data made sure the task has a hub id


def run_math(task: str, config: Config, inputs: dict[str, Path], engines: Engines) -> list[tuple[str, list, dict]]:
    from compass.evals import math as math_eval

    if task in inputs:
        items = math_eval.load_items(task, inputs[task])
    else:
        rows = _hub_rows(config, task)
        items = math_eval.items_from_rows(task, rows, f"hub {config.hub[task]}")
    items = _limit(items, config)
    _unique_ids(items, task)
    out = []
    for suffix, cot in _variants(config, task):
        requests = math_eval.build_requests(items, cot=bool(cot), max_tokens=config.max_new_tokens, seed=config.seed)
        results = _collect(engines.generator(), requests, f"{task}{suffix}")
        rows, metrics = math_eval.score(items, results, {r.id: r for r in requests})
        out.append((task + suffix, rows, metrics))
    return out


def run_fin(task: str, config: Config, inputs: dict[str, Path], engines: Engines) -> list[tuple[str, list, dict]]:
    from compass.evals import finharness

    items = _limit(finharness.load_items(task, inputs[task]), config)
    _unique_ids(items, task)
    pairs = finharness.requests(items)
    scorer = engines.scorer()
    with _progress(len(pairs), task) as bar:
        lls = scorer.loglikelihoods(pairs, progress=bar)
    rows, metrics = finharness.score(task, items, [ll.logprob for ll in lls])
    return [(task, rows, metrics)]


def run_edinet(task: str, config: Config, inputs: dict[str, Path], engines: Engines):
    """Generate the answers now; returns a function that finishes the task (label log-likelihoods for ROC-AUC
    on the local backend, then scoring) once every generation task is done."""
    from compass.evals import edinet

    sheets = tuple(config.edinet_sheets)
    if task in inputs:
        items = edinet.load_items(task, inputs[task], None, sheets, config.edinet_max_chars_per_sheet)
    else:
        items = edinet.load_items(task, None, _hub_rows(config, task), sheets, config.edinet_max_chars_per_sheet)
    items = _limit(items, config)
    _unique_ids(items, task)
    requests = edinet.build_requests(items, max_tokens=config.max_new_tokens, seed=config.seed)
    results = _collect(engines.generator(), requests, task)

    def finish() -> list[tuple[str, list, dict]]:
        probs = None
        if config.backend == "local" and task != "edinet_industry":
            scorer = engines.scorer()
            continuations = edinet.label_continuations(task)
            pairs = [(scorer.chat_prompt(edinet.messages(item)), c) for item in items for c in continuations]
            with _progress(len(pairs), f"{task} label log-likelihoods") as bar:
                lls = scorer.loglikelihoods(pairs, progress=bar)
            probs = {}
            for index, item in enumerate(items):
                l0, l1 = lls[2 * index].logprob, lls[2 * index + 1].logprob
                top = max(l0, l1)
                probs[item.id] = math.exp(l1 - top) / (math.exp(l0 - top) + math.exp(l1 - top))
        rows, metrics = edinet.score(task, items, results, {r.id: r for r in requests}, probs)
        return [(task, rows, metrics)]

    return finish


def run_doc(task: str, config: Config, inputs: dict[str, Path], engines: Engines, out_dir: Path) -> list[tuple[str, list, dict]]:
    from compass.evals import mmlongbench

    items = _limit(mmlongbench.load_items(inputs["mmlongbench"]), config)
    _unique_ids(items, task)
    docs_dir = inputs["mmlongbench_docs"]
    pages: dict[str, list[Path]] = {}
    truncated = 0
    for doc_id in sorted({item.doc_id for item in items}):
        files, total = mmlongbench.render_pages(
            mmlongbench.pdf_path(docs_dir, doc_id), out_dir / PAGES_DIR / doc_id.replace("/", "_"),
            dpi=config.mmlongbench_dpi, max_long_side=config.mmlongbench_max_long_side,
            max_pages=config.mmlongbench_max_pages)
        pages[doc_id] = files
        truncated += total > len(files)
    for_http = config.backend == "openai"
    generator = engines.generator()
    out = []
    for suffix, cot in _variants(config, task):
        requests = [mmlongbench.build_request(item, pages[item.doc_id], cot=bool(cot), for_http=for_http,
                                              max_tokens=config.max_new_tokens, seed=config.seed) for item in items]
        results = _collect(generator, requests, f"{task}{suffix}")
        extracted = _extract(items, results, config, mmlongbench, f"{task}{suffix}")
        prompts = {item.id: (f"{COT} | " if cot else "") + "".join(
            f"Page {n}:{IMAGE_TOKEN} " for n in range(1, len(pages[item.doc_id]) + 1)) + item.question for item in items}
        shown = {item.id: len(pages[item.doc_id]) for item in items}
        rows, metrics = mmlongbench.score(items, results, shown, extracted, prompts)
        metrics["docs_truncated"] = truncated
        out.append((task + suffix, rows, metrics))
    return out


def _extract(items, results, config: Config, mmlongbench, desc: str) -> dict[str, str | None]:
    def text(item):
        return results[item.id].text if results[item.id].ok else None

    if config.extractor == "rule":
        return {item.id: mmlongbench.rule_extract(text(item)) for item in items}
    from compass.generate.config import TransformersSettings, make_backend

    extractor = make_backend("openai", config.extractor_openai, TransformersSettings())
    answered = [item for item in items if text(item) is not None]
    requests = [mmlongbench.extractor_request(item, mmlongbench.after_thinking(text(item)) or "",
                                              max_tokens=config.extractor_max_tokens, seed=config.seed)
                for item in answered]
    replies = _collect(extractor, requests, f"{desc} extraction")
    extracted: dict[str, str | None] = {item.id: None for item in items}
    for item in answered:
        reply = replies[item.id]
        extracted[item.id] = mmlongbench.parse_extractor_reply(reply.text if reply.ok else None)
    return extracted


# --- the stage -----------------------------------------------------------------------------------------


def _cot_comparisons(metrics: dict) -> dict:
    """TASK.cot_gain.accuracy and TASK.cot_token_ratio for every task run both ways."""
    extra = {}
    for key in list(metrics):
        if not key.endswith(".cot_on.accuracy"):
            continue
        task = key[: -len(".cot_on.accuracy")]
        if f"{task}.cot_off.accuracy" not in metrics:
            continue
        extra[f"{task}.cot_gain.accuracy"] = metrics[key] - metrics[f"{task}.cot_off.accuracy"]
        on, off = metrics[f"{task}.cot_on.mean_output_tokens"], metrics[f"{task}.cot_off.mean_output_tokens"]
        extra[f"{task}.cot_token_ratio"] = on / off if off > 0 else None
    return extra


def summary_table(metrics: dict, tasks: list[str]) -> str:
    """Markdown: one row per task (variant), the main metrics side by side."""
    columns = ["accuracy", "accuracy_norm", "macro_f1", "f1", "mcc", "roc_auc", "format_valid_rate",
               "unparseable_rate", "mean_output_tokens", "n"]
    names = []
    for task in tasks:
        for variant in ("", ".cot_on", ".cot_off"):
            if f"{task}{variant}.n" in metrics:
                names.append(task + variant)
    used = [c for c in columns if any(f"{n}.{c}" in metrics for n in names)]
    lines = ["| task | " + " | ".join(used) + " |", "|---|" + "---|" * len(used)]
    for name in names:
        cells = []
        for column in used:
            value = metrics[f"{name}.{column}"] if f"{name}.{column}" in metrics else None
            cells.append("" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    gains = {k: v for k, v in metrics.items() if ".cot_gain." in k or k.endswith(".cot_token_ratio")}
    if gains:
        lines.append("")
        lines += [f"- {k}: {v:.3f}" if isinstance(v, float) else f"- {k}: {v}" for k, v in sorted(gains.items())]
    return "\n".join(lines) + "\n"


def check_data(config: Config, inputs: dict[str, Path]) -> None:
    """Every task has its data and the model suits it, checked before hours of generation start."""
    if config.backend == "local" and "model" not in inputs:
        raise CompassError("backend local needs --model DIR (the checkpoint to evaluate)")
    for task in config.tasks:
        flag = f"--{task.replace('_', '-')}"
        if task in DOC_TASKS:
            if "mmlongbench" not in inputs or "mmlongbench_docs" not in inputs:
                raise CompassError("task mmlongbench needs --mmlongbench QUESTIONS and --mmlongbench-docs PDF_DIR")
            if config.backend == "local":
                from compass.generate.local_model import is_vlm

                if not is_vlm(inputs["model"]):
                    raise CompassError(f"mmlongbench needs a vision-language model; {inputs['model']} is a text-only LLM")
        elif task in FIN_TASKS and task not in inputs:
            raise CompassError(f"task {task}: give the harness's data with {flag} PATH (japanese-lm-fin-harness has no hub dataset)")
        elif task not in inputs and task not in config.hub:
            raise CompassError(f"task {task}: give its data with {flag} PATH (no hub id configured)")


def run(config: Config, inputs: dict[str, Path], out_dir: Path) -> dict:
    from compass.io import write_json_atomic, write_jsonl, write_text_atomic

    check_data(config, inputs)
    engines = Engines(config, inputs["model"] if "model" in inputs else None)
    metrics: dict = {}
    predictions = out_dir / OUTPUTS["predictions"]

    def record(produced: list[tuple[str, list, dict]]) -> None:
        for name, rows, task_metrics in produced:
            write_jsonl(predictions / f"{name}.jsonl", rows)
            metrics.update({f"{name}.{key}": value for key, value in task_metrics.items()})

    # every generation first, every log-likelihood after: a local model loads once for each role
    unfinished = []
    for task in config.tasks:
        if task in MATH_TASKS:
            record(run_math(task, config, inputs, engines))
        elif task in EDINET_TASKS:
            unfinished.append(run_edinet(task, config, inputs, engines))
        elif task in DOC_TASKS:
            record(run_doc(task, config, inputs, engines, out_dir))
    for finish in unfinished:
        record(finish())
    for task in config.tasks:
        if task in FIN_TASKS:
            record(run_fin(task, config, inputs, engines))
    metrics.update(_cot_comparisons(metrics))
    write_json_atomic(out_dir / OUTPUTS["metrics"], metrics)
    table = summary_table(metrics, config.tasks)
    write_text_atomic(out_dir / OUTPUTS["summary"], table)
    print(table)
    return metrics
