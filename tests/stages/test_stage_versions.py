"""Honest cache keys: a stage's code version and the commits of its hub references are part of the key.

The golden test runs every deterministic data stage on fixed inputs and compares the sha256 of its outputs
with the value recorded here beside the stage's VERSION. Changed bytes under the same VERSION fail: bump
VERSION in the stage module (old caches then rerun) and record the new hash. Training and generation stages
are not byte-deterministic across machines; their VERSION is bumped by hand under the same rule.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from compass import stages
from compass.errors import CompassError
from compass.hub import HubRef, resolve_revision
from compass.pipeline import run_recipe
from compass.runner import execute_stage
from support import echo_stage

# stage name in RECIPE -> (stage module's VERSION, sha256 of its manifest's sorted outputs)
GOLDEN = {
    "problems": (1, "d512df59fbacc8023861a778872142ddfcd5ce15b980416ee4ca7500b72840d5"),
    "heldout": (1, "da133b0e1ec22e48d4d31513496766c80acfc123fa0e22d50b3a1d59c41fb62a"),
    "clean": (1, "284d8099c8453fcc71720d8bc264c079763dc7ec0ce3e0a470170f3b1fca7f07"),
    "traces": (1, "b8a2603017d21f78c5aa90e1cfc3c32be0cb04e611fdac55de5055789dc540e4"),
    "pairs": (1, "78585cdc53303203a4729ab89f0fefe350eefb95265bcecaa7e68f3bb560b9a9"),
    "docs": (1, "e5f741ed8d7d78db91f8e0b4f5036c46d51ec5b516b29b35210b2123358b633f"),
    "pages": (1, "e1e4f4881fe46936bf88316f76bf097e3aeaff1dd60a0d497924a6016dbae16d"),
    "evidence": (1, "e723c2fba1cd011c922167619fd716d9cc6bd5164b83fe33784e0c9d39d086a4"),
    "doc_examples": (1, "8519f8e9a50448cbe877f5382c012d2ad1b6da0c560164820997541fb3fbdfba"),
}

RECIPE = """
name: golden
seed: 42
stages:
  - {name: problems, stage: sources, config: {reasoning_gym: [{generator: basic_arithmetic, size: 40}]}}
  - {name: heldout, stage: sources, config: {reasoning_gym: [{generator: basic_arithmetic, size: 8, seed: 7}]}}
  - {name: clean, stage: decontaminate, inputs: {problems: problems.problems, eval: heldout.problems}}
  - {name: traces, stage: distill, inputs: {problems: clean.problems}, config: {backend: reference, teacher: reference}}
  - {name: pairs, stage: pairs, inputs: {traces: traces.traces}}
  - {name: docs, stage: pdf-fixtures, config: {n_docs: 2, min_extra_pages: 0, max_extra_pages: 1}}
  - {name: pages, stage: pages, inputs: {pdfs: docs.pdfs}}
  - {name: evidence, stage: evidence, inputs: {pages: pages.pages, questions: docs.questions}, config: {backend: lexical}}
  - {name: doc_examples, stage: doc-traces, inputs: {evidence: evidence.evidence, questions: docs.questions, pages: pages.pages}}
"""


def outputs_sha(outputs: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(sorted(outputs.items())).encode()).hexdigest()


def test_every_stage_declares_a_code_version():
    for kind in stages.STAGES:
        assert isinstance(stages.get_stage(kind).VERSION, int) and stages.get_stage(kind).VERSION >= 1, kind


def test_golden_outputs_change_only_with_a_version_bump(tmp_path):
    recipe = tmp_path / "golden.yaml"
    recipe.write_text(RECIPE, encoding="utf-8")
    results = run_recipe(recipe, tmp_path / "work", log=lambda line: None)
    assert set(results) == set(GOLDEN)
    problems = []
    for name, result in results.items():
        kind, version, sha = result.manifest.stage, result.manifest.stage_version, outputs_sha(result.manifest.outputs)
        golden_version, golden_sha = GOLDEN[name]
        if version == golden_version and sha != golden_sha:
            problems.append(f"{name} ({kind}): outputs changed under VERSION {version}: bump VERSION in "
                            f"{stages.STAGES[kind]} and set GOLDEN[{name!r}] = ({version + 1}, <new sha>); now {sha}")
        elif version != golden_version:
            problems.append(f"{name} ({kind}): VERSION is {version}: set GOLDEN[{name!r}] = ({version}, {sha!r})")
    assert not problems, "\n".join(problems)


def test_a_version_bump_is_a_cache_miss(tmp_path, monkeypatch):
    monkeypatch.setitem(stages.STAGES, "echo", "support.echo_stage")
    src = tmp_path / "in.txt"
    src.write_text("hello\n", encoding="utf-8")
    out = tmp_path / "out"
    assert not execute_stage("echo", echo_stage.Config(), {"text": src}, out).cached
    assert execute_stage("echo", echo_stage.Config(), {"text": src}, out).cached
    monkeypatch.setattr(echo_stage, "VERSION", echo_stage.VERSION + 1)
    again = execute_stage("echo", echo_stage.Config(), {"text": src}, out)
    assert not again.cached and again.manifest.stage_version == echo_stage.VERSION


def _fake_hub_cache(root: Path, repo_id: str, ref_commits: dict[str, str]) -> None:
    folder = root / f"datasets--{repo_id.replace('/', '--')}"
    for ref, commit in ref_commits.items():
        (folder / "refs").mkdir(parents=True, exist_ok=True)
        (folder / "refs" / ref).write_text(commit, encoding="utf-8")
        (folder / "snapshots" / commit).mkdir(parents=True, exist_ok=True)


def test_hub_references_resolve_offline_from_the_cache_and_a_moved_branch_is_a_cache_miss(tmp_path, monkeypatch):
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    first, second = "a" * 40, "b" * 40
    _fake_hub_cache(cache, "openai/gsm8k", {"main": first})
    assert resolve_revision(HubRef("dataset", "openai/gsm8k")) == first
    assert resolve_revision(HubRef("dataset", "openai/gsm8k", first)) == first  # a commit held in the cache
    with pytest.raises(CompassError, match=r"'openai/gsm8k' \(revision v2\) is not in the local hub cache"):
        resolve_revision(HubRef("dataset", "openai/gsm8k", "v2"))

    # a stage that reads openai/gsm8k@main: same files, moved branch -> rerun, and the commit is recorded
    monkeypatch.setitem(stages.STAGES, "echo", "support.echo_stage")
    monkeypatch.setattr(echo_stage, "hub_inputs", lambda config: [HubRef("dataset", "openai/gsm8k")], raising=False)
    src = tmp_path / "in.txt"
    src.write_text("hello\n", encoding="utf-8")
    out = tmp_path / "out"
    run = execute_stage("echo", echo_stage.Config(), {"text": src}, out)
    assert run.manifest.hub_revisions == {"dataset:openai/gsm8k@main": first}
    assert execute_stage("echo", echo_stage.Config(), {"text": src}, out).cached
    _fake_hub_cache(cache, "openai/gsm8k", {"main": second})
    moved = execute_stage("echo", echo_stage.Config(), {"text": src}, out)
    assert not moved.cached and moved.manifest.hub_revisions == {"dataset:openai/gsm8k@main": second}
