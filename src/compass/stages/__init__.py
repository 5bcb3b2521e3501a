"""Stage registry. A stage is a module with:

    EXAMPLE: str                        a command line shown in `--help`
    Config(StageConfig)                 its typed config (defaults live only here)
    INPUTS: dict[str, Port]             named inputs (files or directories)
    run(config, ctx) -> dict            does the work, returns metrics. ctx is a compass.stagekit.StageContext:
                                        resolved inputs (ctx.inputs[name]), ctx.out_dir to write into, their
                                        hashes, rank/world size, shard, and ctx.resume_key, the one test that
                                        partial work (journal, state, checkpoints) belongs to this run. The
                                        runner builds it; compass.stagekit.run_stage(module, config, inputs,
                                        out_dir) calls a stage directly from Python
    VERSION: int                        code version of its outputs, part of the cache key: bump it when the
                                        same config and inputs would now give other bytes (tests/stages/
                                        test_stage_versions.py fails on a golden output change without a bump)
    hub_inputs(config) -> [HubRef]      optional: hub datasets/models it reads by id (compass.hub); their
                                        resolved commits join the cache key
    gather(config, shards, out_dir)     for a Config that is a compass.data.shards.ShardedStageConfig (it takes
                                        --shard I/N): joins the completed shard runs into the unsharded output

Nothing in a stage knows whether the CLI, a recipe or a test called it. Modules load lazily so that
`compass --help` does not import torch.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

from compass.errors import CompassError


@dataclass(frozen=True)
class Port:
    help: str
    required: bool = True
    hub_model: bool = False  # also takes a hub model id (owner/name[@revision]), resolved to its cache snapshot


# stage kind -> module. The CLI verb of a stage is its kind.
STAGES: dict[str, str] = {
    "tiny-models": "compass.stages.tiny_models",
    "compose": "compass.stages.compose",
    "decompose": "compass.stages.decompose",
    "sources": "compass.stages.sources",
    "sft-sources": "compass.stages.sft_sources",
    "preference-sources": "compass.stages.preference_sources",
    "decontaminate": "compass.stages.decontaminate",
    "distill": "compass.stages.distill",
    "pairs": "compass.stages.pairs",
    "sft": "compass.stages.sft",
    "dpo": "compass.stages.dpo",
    "merge": "compass.stages.merge",
    "pdf-fixtures": "compass.stages.pdf_fixtures",
    "pages": "compass.stages.pages",
    "evidence": "compass.stages.evidence",
    "doc-traces": "compass.stages.doc_traces",
    "doc-questions": "compass.stages.doc_questions",
    "eval": "compass.stages.evaluate",
}

# stage kind -> the first line of its module's docstring: what `compass --help` lists, so that the top-level help
# imports no stage module (importing all of them took over a second). tests/unit/test_ledger_light_commands.py
# fails when a line here and its module's docstring disagree.
SUMMARIES: dict[str, str] = {
    "tiny-models": "Build the tiny offline models from a seed: tokenizer, Llama LLM, LLaVA-OneVision VLM, SigLIP vision tower.",
    "compose": "Compose a LLaVA-OneVision VLM from a SigLIP vision tower, a projector and an LLM (dimensions checked).",
    "decompose": "Split a LLaVA-OneVision VLM into its SigLIP vision tower, projector and LLM directories.",
    "sources": "Collect math problems from dataset sources (hub ids or local files) and reasoning-gym into one Problem file.",
    "sft-sources": "Mix SFT datasets (hub ids or local files, any supported format) into one decontaminated messages file.",
    "preference-sources": "Collect real preference data (hub ids or local files) into Pair records, mixed with weights, decontaminated.",
    "decontaminate": "Drop training problems that overlap the evaluation sets, with a report of each drop and its matching eval item.",
    "distill": "Teacher traces: Problem records -> verified Trace records in the <Problem>/<Thinking>/<Answer> format.",
    "pairs": "Trace -> DPO Pair records: chosen = the trace's answer, rejected = it with one corruption (docs/method.md A step 2).",
    "sft": "LoRA SFT with TRL's SFTTrainer + PEFT on Trace/DocExample records; loss on assistant tokens only.",
    "dpo": "LoRA DPO with TRL's DPOTrainer on Pair records; the reference is the same model with its adapter disabled.",
    "merge": "Merge models: a LoRA adapter into its base, or task arithmetic base + sum_i w_i * (finetuned_i - base); LLMs and VLMs alike.",
    "pdf-fixtures": "Generate synthetic multi-page financial-report PDFs (English + Japanese) with planted questions.",
    "pages": "Render PDFs into Page records: one PNG per page (long side capped) plus the page's text layer.",
    "evidence": "Per-page evidence: for every (question, page of its document), {evidence, relevance_score} (docs/method.md B.1).",
    "doc-traces": "Top-K evidence traces and <cot> SFT examples for long documents (docs/method.md B.2-B.4).",
    "doc-questions": "Synthesize questions about long documents: from 1-16 seed pages, a VLM writes a question and its answer.",
    "eval": "Evaluate a checkpoint on benchmarks: predictions JSONL per task + metrics (docs/method.md A evaluation, B.6).",
}


def summary(kind: str) -> str:
    """The one-line description of a stage verb, from SUMMARIES (no import), else from its module's docstring
    (a stage registered at run time, e.g. by a test or a plugin)."""
    if kind in SUMMARIES:
        return SUMMARIES[kind]
    return (get_stage(kind).__doc__ or kind).strip().splitlines()[0]


def available_stages() -> list[str]:
    """Stage kinds whose module exists in this installation."""
    return [kind for kind, module in STAGES.items() if importlib.util.find_spec(module) is not None]


def get_stage(kind: str) -> ModuleType:
    if kind not in STAGES:
        raise CompassError(f"unknown stage {kind!r}; known stages: {', '.join(available_stages())}")
    module = importlib.import_module(STAGES[kind])
    if not isinstance(module.__dict__.get("VERSION"), int):
        raise CompassError(f"stage module {STAGES[kind]} declares no integer VERSION (the code version in its cache key; "
                           "see the compass.stages docstring)")
    return module


def hub_inputs(module: ModuleType, config) -> list:
    """The hub references a stage reads for this config ([] for stages without a `hub_inputs` hook)."""
    hook = module.__dict__.get("hub_inputs")
    return [] if hook is None else hook(config)
