"""Stage registry. A stage is a module with:

    EXAMPLE: str                        a command line shown in `--help`
    Config(StageConfig)                 its typed config (defaults live only here)
    INPUTS: dict[str, Port]             named inputs (files or directories)
    run(config, inputs, out_dir) -> dict    does the work, writes files into out_dir, returns metrics
    VERSION: int                        code version of its outputs, part of the cache key: bump it when the
                                        same config and inputs would now give other bytes (tests/stages/
                                        test_stage_versions.py fails on a golden output change without a bump)
    hub_inputs(config) -> [HubRef]      optional: hub datasets/models it reads by id (compass.hub); their
                                        resolved commits join the cache key

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
