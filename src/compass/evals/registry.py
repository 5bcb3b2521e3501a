"""The eval task registry: every benchmark is one module in `compass.evals` that exports `BENCHMARK`.

The eval stage (`compass.stages.evaluate`) builds everything benchmark-specific from here: its config (one
nested block per benchmark), its named inputs, its CLI flags, the task list in `--help`, the hub defaults,
and the order of work. The stage itself is a config and a loop.

How to add a benchmark (one new file plus its tests; nothing else changes):

1. Write `src/compass/evals/<name>.py`: loaders for the benchmark's own files, prompts, parsing and metrics as
   plain functions.
2. Give it a config block, a subclass of `BenchmarkConfig` (defaults live only there). It inherits
   `protocol: reference | compass | both`:
     - `reference`: the benchmark's own pipeline (its prompts, its parsing, its metrics; through the benchmark's
       own engine where one exists, e.g. lm-evaluation-harness), reproducing published numbers;
     - `compass`: compass's corrected protocol (the default);
     - `both`: both, side by side.
   Texts that belong to the benchmark (prompts, few-shot examples, task files) are never copied into compass:
   give the block a `repo: Path | None` field (the user's checkout of the benchmark, flag `--<block>-repo`) and
   read them from there at run time.
3. Describe each task with `EvalTask(name, kind, inputs, load, requests, score, ...)`:
     - `load(ctx) -> items`            read the data (ctx.data_path / ctx.hub_rows), already limited;
     - `requests(ctx, items) -> Requests`   what the model must do, keyed by the caller's own names:
           generate (GenRequest lists), loglikelihood ((context, continuation) pairs), chat_loglikelihood
           ((messages, continuation): the context goes through the scorer's chat template), lm_eval (jobs run by
           lm-evaluation-harness on the local model);
     - `score(ctx, items, answers) -> [TaskOutput]`   predictions rows + metrics per output name. Name outputs
           with `ctx.output_name(protocol, cot_suffix)` so metrics read TASK[.PROTOCOL][.cot_on|.cot_off].METRIC.
   The stage runs every task's generation first, then every log-likelihood, then lm-eval jobs, so a local model
   loads once per role; scoring comes last.
4. Export `BENCHMARK = Benchmark(block="<name>", config=<Block>, tasks=(...), summary="...")` (or a tuple
   `BENCHMARKS` when one module holds several benchmarks with their own blocks, as `math` does).

The block's fields become YAML keys `<block>: {field: value}` in the eval config and CLI flags
`--<block>-<field>` (e.g. `--finharness-repo`, `--edinet-sheets`, `--mmlongbench-dpi`, `--gsm8k-protocol`).
Several tasks may share one block (the five fin-harness tasks share `finharness`).

Metric names: compass protocol alone keeps the plain names (TASK.METRIC, as before protocols existed); the
reference protocol is always named (TASK.reference.METRIC); with `both`, each side names its protocol
(TASK.reference.METRIC beside TASK.compass.METRIC).
"""
from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from compass.config import ConfigBlock
from compass.errors import CompassError
from compass.stages import Port

ProtocolName = Literal["reference", "compass", "both"]
PROTOCOLS = ("reference", "compass")  # the order they run and are reported in under `both`


class BenchmarkConfig(ConfigBlock):
    """Base of every benchmark's config block."""

    protocol: ProtocolName = Field("compass", description="reference: the benchmark's own pipeline (comparable with "
                                   "published numbers); compass: the corrected protocol; both: side by side")


@dataclass(frozen=True)
class LmEvalJob:
    """One lm-evaluation-harness run on the local model: its task names (from lm-eval's own task set, or from
    `include_path` task files), few-shot count, and per-task limit."""

    tasks: tuple[str, ...]
    include_path: Path | None = None
    num_fewshot: int | None = None
    limit: int | None = None
    apply_chat_template: bool = False
    extra_imports: tuple[Path, ...] = ()  # directories put on sys.path first (a benchmark's own metric plugins)
    setup: Callable[[], None] | None = None  # run once before the job (e.g. registering the benchmark's metrics)
    # False: only the task files under include_path are indexed (lm-eval's own ~15k task files take ~30 s to index
    # on a loaded 2-core machine, for tasks a benchmark with its own task files never runs)
    builtin_tasks: bool = True


@dataclass
class Requests:
    """What a task asks of the model; each dict maps a name the task chooses to one batch of work."""

    generate: dict[str, list] = field(default_factory=dict)  # name -> [GenRequest]
    loglikelihood: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    chat_loglikelihood: dict[str, list[tuple[list[dict], str]]] = field(default_factory=dict)
    lm_eval: dict[str, LmEvalJob] = field(default_factory=dict)


@dataclass
class Answers:
    """The results of a task's Requests, under the same names."""

    generated: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> id -> GenResult
    loglikelihoods: dict[str, list[float]] = field(default_factory=dict)  # name -> summed logprob per pair
    lm_eval: dict[str, dict] = field(default_factory=dict)  # name -> lm_eval.simple_evaluate's result dict


@dataclass(frozen=True)
class TaskOutput:
    name: str  # e.g. 'chabsa.reference', 'gsm8k.cot_on'; metrics are written as NAME.METRIC
    rows: list[dict]  # predictions/<name>.jsonl
    metrics: dict


@dataclass
class TaskContext:
    """Everything a task function may read: its own block, the run's shared settings, its inputs."""

    task: "EvalTask"
    settings: BenchmarkConfig  # the task's config block
    config: Any  # the whole eval Config (backend, cot, limit, max_new_tokens, seed, hub, ...)
    inputs: dict[str, Path]
    out_dir: Path
    collect: Callable[[Any, list, str], dict]  # collect(backend, requests, desc) -> id -> GenResult
    state: dict = field(default_factory=dict)  # what a task keeps between its load, requests and score

    @property
    def name(self) -> str:
        return self.task.name

    @property
    def data_path(self) -> Path | None:
        """The task's data input (its first port), if given."""
        port = next(iter(self.task.inputs))
        return self.inputs[port] if port in self.inputs else None

    def hub_rows(self) -> list[dict]:
        from compass.evals.data import load_hub_rows

        if self.name not in self.config.hub:
            raise CompassError(f"task {self.name}: no data input and no hub id configured")
        return load_hub_rows(self.config.hub[self.name])

    def limited(self, items: list) -> list:
        return items if self.config.limit is None else items[: self.config.limit]

    def protocols(self) -> list[str]:
        """The protocols this run scores the task with, in report order."""
        chosen = self.settings.protocol
        return list(PROTOCOLS) if chosen == "both" else [chosen]

    def cot_variants(self) -> list[tuple[str, bool]]:
        """(name suffix, cot flag) pairs of a generation task under the compass protocol."""
        if not self.task.cot:
            return [("", False)]
        return {"off": [("", False)], "on": [(".cot_on", True)],
                "both": [(".cot_on", True), (".cot_off", False)]}[self.config.cot]

    def output_name(self, protocol: str, suffix: str = "") -> str:
        """TASK[.PROTOCOL][SUFFIX]: the protocol is named unless the run is compass-only."""
        named = protocol == "reference" or self.settings.protocol == "both"
        return self.name + (f".{protocol}" if named else "") + suffix


@dataclass(frozen=True)
class EvalTask:
    name: str
    kind: Literal["generate", "loglikelihood"]  # what the compass protocol asks of the model
    inputs: dict[str, Port]  # the first is the task's data
    load: Callable[[TaskContext], list]
    requests: Callable[[TaskContext, list], Requests]
    score: Callable[[TaskContext, list, Answers], list[TaskOutput]]
    summary: str  # one line for the task list in --help
    hub: str | None = None  # default 'DATASET_ID:CONFIG:SPLIT' when the data input is not given
    cot: bool = False  # a generation task that takes the <cot> control token
    protocols: tuple[str, ...] = ("compass",)  # the protocols it implements
    check: Callable[[TaskContext], None] | None = None  # pre-flight checks beyond "its data is there"


@dataclass(frozen=True)
class Benchmark:
    block: str  # config block name and CLI flag prefix
    config: type[BenchmarkConfig]
    tasks: tuple[EvalTask, ...]
    summary: str


# --- discovery -----------------------------------------------------------------------------------------


_FOUND: list[Benchmark] | None = None


def benchmarks() -> list[Benchmark]:
    """Every module of compass.evals that exports BENCHMARK, in module-name order (imported once)."""
    global _FOUND
    if _FOUND is None:
        import compass.evals as package

        found = []
        for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
            module = importlib.import_module(f"{package.__name__}.{info.name}")
            if "BENCHMARK" in vars(module):
                found.append(vars(module)["BENCHMARK"])
            if "BENCHMARKS" in vars(module):  # a module holding several benchmarks (math: gsm8k, mgsm_ja, problems)
                found.extend(vars(module)["BENCHMARKS"])
        blocks = [b.block for b in found]
        names = [t.name for b in found for t in b.tasks]
        if len(set(blocks)) != len(blocks) or len(set(names)) != len(names):
            raise CompassError(f"eval registry: duplicate block or task names: blocks {blocks}, tasks {names}")
        _FOUND = found
    return _FOUND


def tasks() -> dict[str, tuple[Benchmark, EvalTask]]:
    """task name -> (its benchmark, the task), in registry order."""
    return {task.name: (bench, task) for bench in benchmarks() for task in bench.tasks}
