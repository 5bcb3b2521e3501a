"""Evaluate a checkpoint on benchmarks: predictions JSONL per task + metrics (docs/method.md A evaluation, B.6).

Every benchmark is a module of compass.evals registered in `compass.evals.registry` (how to add one is
explained there); this stage is its config and a loop. Tasks:
{task_list}

Each benchmark has a config block (`<block>: {{...}}` in YAML, `--<block>-<field>` flags) with
`protocol: reference | compass | both`: reference = the benchmark's own pipeline (what published tables
use; e.g. lm-evaluation-harness on the harness's own task files), compass = the corrected protocol
(default), both = side by side. Texts belonging to a benchmark are read from the user's checkout of it
(`--<block>-repo DIR`), never shipped with compass.

Metrics are named TASK.METRIC (`gsm8k.accuracy`); the reference protocol is always named
(`chabsa.reference.macro_f1`), and with `both` so is compass (`chabsa.compass.macro_f1`). With `cot` on
or both, generation tasks name their variant: TASK.cot_on.METRIC / TASK.cot_off.METRIC, and `both` adds
TASK.cot_gain.accuracy (on - off) and TASK.cot_token_ratio (mean output tokens on / off). A task's data
comes from its input (a local file in the benchmark's own schema) or else from `hub`. Writes
predictions/<output>.jsonl (input, raw output, extracted answer, score, output tokens), metrics.json and
summary.md (the table also printed at the end).
Checkpoints side by side: `compass eval compare RUN_DIR...` (e.g. the eval runs of base, SFT and DPO).
"""
from __future__ import annotations

import gc
from pathlib import Path
from typing import Literal

from pydantic import Field, create_model, field_validator, model_validator

from compass.config import StageConfig
from compass.errors import CompassError
from compass.evals.registry import Answers, TaskContext, benchmarks, tasks
from compass.generate.base import DEVICE_HELP
from compass.generate.config import OpenAISettings
from compass.stagekit import StageContext
from compass.stages import Port

VERSION = 3  # code version of what this stage writes: bump when the same config and inputs would give other bytes
EXAMPLE = ("compass eval --model work/sft/merged --tasks gsm8k,mgsm_ja --gsm8k data/gsm8k_test.jsonl "
           "--mgsm-ja data/mgsm_ja.tsv --limit 100 --cot both --out work/eval-sft")

TASKS = tuple(tasks())
TaskName = Literal[TASKS]  # type: ignore[valid-type]  # the registry's task names
HUB_DEFAULTS = {name: task.hub for name, (_, task) in tasks().items() if task.hub is not None}
__doc__ = __doc__.format(task_list="\n".join(f"  {name:<18} {task.summary}" for name, (_, task) in tasks().items()))


class EvalSettings(StageConfig):
    """The run-wide settings; each benchmark's own block is added to `Config` from the registry."""

    tasks: list[TaskName] = Field(["gsm8k"], min_length=1, description="tasks to run, a list or 'a,b,c': " + ", ".join(TASKS))
    backend: Literal["local", "openai"] = Field("local", description="local: the --model directory with transformers "
                                                "(LLM or VLM); openai: an OpenAI-compatible server (settings in `openai`)")
    openai: OpenAISettings = Field(default_factory=OpenAISettings, description="server settings for backend openai")
    limit: int | None = Field(None, ge=1, description="evaluate only the first N items of each task (None: all)")
    batch_size: int = Field(8, ge=1, description="prompts per forward/generate call on the local backend")
    device: str = Field("auto", description=f"{DEVICE_HELP}; for the local backend")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field("auto", description="weights dtype (local backend)")
    cot: Literal["on", "off", "both"] = Field("off", description="the <cot> control token in the system message of "
                                              "generation tasks: on, off, or both side by side")
    max_new_tokens: int = Field(1024, ge=1, description="generation limit per answer")
    hub: dict[str, str] = Field(default_factory=lambda: dict(HUB_DEFAULTS),
                                description="task -> 'DATASET_ID:CONFIG:SPLIT' read when the task's data input is not given")

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
        registry = tasks()
        for name in self.tasks:
            bench, task = registry[name]
            protocol = getattr(self, bench.block).protocol
            wanted = ["reference", "compass"] if protocol == "both" else [protocol]
            missing = [p for p in wanted if p not in task.protocols]
            if missing:
                raise ValueError(f"task {name} has no {missing[0]!r} protocol (it has {list(task.protocols)}); "
                                 f"set {bench.block}.protocol accordingly")
        loglik = [n for n in self.tasks if registry[n][1].kind == "loglikelihood"
                  and "compass" in _protocols(getattr(self, registry[n][0].block).protocol)]
        if self.backend == "openai" and loglik:
            raise ValueError(f"{loglik} score options by log-likelihood, which needs backend local "
                             "(chat servers return no prompt log-probabilities)")
        return self


def _protocols(chosen: str) -> list[str]:
    return ["reference", "compass"] if chosen == "both" else [chosen]


Config = create_model(
    "Config", __base__=EvalSettings, __module__=__name__,
    **{bench.block: (bench.config, Field(default_factory=bench.config, description=bench.summary)) for bench in benchmarks()},
)

INPUTS: dict[str, Port] = {
    "model": Port("model directory or hub id (owner/name[@revision]; LLM or VLM, transformers format); not needed "
                  "with backend openai", required=False, hub_model=True),
}
for _bench in benchmarks():
    for _task in _bench.tasks:
        for _port_name, _port in _task.inputs.items():
            if _port_name in INPUTS and INPUTS[_port_name] != _port:
                raise CompassError(f"eval registry: input {_port_name!r} is declared twice with different meanings")
            INPUTS[_port_name] = _port
OUTPUTS = {"predictions": "predictions", "metrics": "metrics.json", "summary": "summary.md"}



# --- plumbing ------------------------------------------------------------------------------------------


def _progress(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="item", leave=False)


def collect(backend, requests: list, desc: str) -> dict:
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
    before the other role loads (generation first, log-likelihood after, lm-eval last) so two copies never
    coexist."""

    def __init__(self, config, model: Path | None):
        self.config, self.model = config, model
        self._generator = None
        self._scorer = None
        self._lm_eval_model = None
        self._lm_eval_results: dict = {}  # job -> result: tasks sharing one job (fin-harness) run it once

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

    def lm_eval(self, job) -> dict:
        """One lm-evaluation-harness run on the local model (its HFLM, loaded once; the other roles released)."""
        from compass.evals.lm_harness import run_job

        if self._lm_eval_model is None:
            self._generator = self._scorer = None
            gc.collect()
            from compass.evals.lm_harness import load_hflm

            self._lm_eval_model = load_hflm(self.model, device=self.config.device, dtype=self.config.dtype,
                                            batch_size=self.config.batch_size)
        if job not in self._lm_eval_results:
            self._lm_eval_results[job] = run_job(self._lm_eval_model, job, seed=self.config.seed)
        return self._lm_eval_results[job]


# --- the stage -----------------------------------------------------------------------------------------


def _cot_comparisons(metrics: dict) -> dict:
    """NAME.cot_gain.accuracy and NAME.cot_token_ratio for every output run both ways."""
    extra = {}
    for key in list(metrics):
        if not key.endswith(".cot_on.accuracy"):
            continue
        name = key[: -len(".cot_on.accuracy")]
        if f"{name}.cot_off.accuracy" not in metrics:
            continue
        extra[f"{name}.cot_gain.accuracy"] = metrics[key] - metrics[f"{name}.cot_off.accuracy"]
        on, off = metrics[f"{name}.cot_on.mean_output_tokens"], metrics[f"{name}.cot_off.mean_output_tokens"]
        extra[f"{name}.cot_token_ratio"] = on / off if off > 0 else None
    return extra


SUMMARY_COLUMNS = ["accuracy", "accuracy_norm", "macro_f1", "f1", "mcc", "roc_auc", "roc_auc_loglikelihood",
                   "exact_match_strict", "exact_match_flexible", "format_valid_rate", "unparseable_rate", "mean_output_tokens", "n"]


def summary_table(metrics: dict, outputs: list[str]) -> str:
    """Markdown: one row per output (task, protocol, cot variant), the main metrics side by side."""
    names = [name for name in outputs if f"{name}.n" in metrics]
    used = [c for c in SUMMARY_COLUMNS if any(f"{n}.{c}" in metrics for n in names)]
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


def contexts(config, inputs: dict[str, Path], out_dir: Path) -> list[TaskContext]:
    registry = tasks()
    return [TaskContext(task=registry[name][1], settings=getattr(config, registry[name][0].block), config=config,
                        inputs=inputs, out_dir=out_dir, collect=collect) for name in config.tasks]


def check_data(config, inputs: dict[str, Path], out_dir: Path | None = None) -> None:
    """Every task has its data and the model suits it, checked before hours of generation start."""
    # a reference protocol run by lm-evaluation-harness (log-likelihood tasks) needs the local model whatever the
    # backend; generation tasks' references (MMLongBench, EDINET) generate through the run's backend
    needs_model = config.backend == "local" or any(
        "reference" in ctx.protocols() and ctx.task.kind == "loglikelihood"
        for ctx in contexts(config, inputs, out_dir or Path(".")))
    if needs_model and "model" not in inputs:
        raise CompassError("backend local needs --model DIR (the checkpoint to evaluate)")
    for ctx in contexts(config, inputs, out_dir or Path(".")):
        if ctx.task.check is not None:
            ctx.task.check(ctx)
        elif ctx.data_path is None and ctx.name not in config.hub:
            raise CompassError(f"task {ctx.name}: give its data with --{ctx.name.replace('_', '-')} PATH "
                               "(no hub id configured)")


def run(config, ctx: StageContext) -> dict:
    inputs, out_dir = ctx.inputs, ctx.out_dir
    from compass.io import write_json_atomic, write_jsonl, write_text_atomic

    check_data(config, inputs, out_dir)
    engines = Engines(config, inputs["model"] if "model" in inputs else None)
    work = []
    for ctx in contexts(config, inputs, out_dir):
        items = ctx.task.load(ctx)
        _unique_ids(items, ctx.name)
        work.append((ctx, items, ctx.task.requests(ctx, items), Answers()))

    # every generation first, every log-likelihood after, lm-eval last: a local model loads once per role
    for ctx, _, requests, answers in work:
        for key, batch in requests.generate.items():
            answers.generated[key] = collect(engines.generator(), batch, key)
    for ctx, _, requests, answers in work:
        if requests.loglikelihood or requests.chat_loglikelihood:
            scorer = engines.scorer()
            for key, pairs in list(requests.loglikelihood.items()) + [
                    (k, [(scorer.chat_prompt(m), c) for m, c in v]) for k, v in requests.chat_loglikelihood.items()]:
                with _progress(len(pairs), key) as bar:
                    answers.loglikelihoods[key] = [ll.logprob for ll in scorer.loglikelihoods(pairs, progress=bar)]
    for ctx, _, requests, answers in work:
        for key, job in requests.lm_eval.items():
            answers.lm_eval[key] = engines.lm_eval(job)

    metrics: dict = {}
    outputs: list[str] = []
    predictions = out_dir / OUTPUTS["predictions"]
    for ctx, items, _, answers in work:
        for output in ctx.task.score(ctx, items, answers):
            write_jsonl(predictions / f"{output.name}.jsonl", output.rows)
            metrics.update({f"{output.name}.{key}": value for key, value in output.metrics.items()})
            outputs.append(output.name)
    metrics.update(_cot_comparisons(metrics))
    write_json_atomic(out_dir / OUTPUTS["metrics"], metrics)
    table = summary_table(metrics, outputs)
    write_text_atomic(out_dir / OUTPUTS["summary"], table)
    print(table)
    return metrics
