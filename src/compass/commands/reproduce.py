"""`compass runs reproduce RUN`: run a recorded stage again from its recorded config and the exact input
bytes (taken from the store by sha256) in a new directory, then compare outputs and metrics.

Data stages must reproduce byte for byte. Stages whose outputs come from training or from a model
server (weights, sampled text) are judged by their metrics, within a relative tolerance. The code must
be the recorded commit, unless --allow-code-change (then the report says the code differed).
"""
from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from compass.config import Launch
from compass.errors import CompassError
from compass.ledger.flat import as_number, flatten
from compass.ledger.index import Index, RunRow
from compass.ledger.redact import REDACTED
from compass.ledger.store import ContentStore
from compass.ledger.workspace import Workspace

# outputs that depend on floating-point training or on a model's sampled text: metrics decide
METRIC_JUDGED_STAGES = frozenset({"sft", "dpo", "distill", "eval", "evidence", "doc-traces"})
# metrics that measure the machine, not the result
VOLATILE_METRIC_WORDS = ("time", "runtime", "per_second", "wall", "throughput", "samples_per", "steps_per", "tokens_per")


@dataclass
class Reproduction:
    original: RunRow
    new_run_id: str
    out_dir: Path
    code_changed: bool
    same_outputs: list[str] = field(default_factory=list)
    changed_outputs: list[str] = field(default_factory=list)
    missing_outputs: list[str] = field(default_factory=list)
    extra_outputs: list[str] = field(default_factory=list)
    metric_rows: list[tuple[str, Any, Any, bool]] = field(default_factory=list)  # key, recorded, now, agrees
    exact_required: bool = True

    @property
    def outputs_match(self) -> bool:
        return not (self.changed_outputs or self.missing_outputs or self.extra_outputs)

    @property
    def metrics_agree(self) -> bool:
        return all(agrees for *_, agrees in self.metric_rows)

    @property
    def reproduced(self) -> bool:
        if self.exact_required:
            return self.outputs_match and self.metrics_agree
        return self.metrics_agree


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """--set KEY=VALUE (dotted keys for nested fields; values read as YAML: 0.1, true, [a, b])."""
    out: dict[str, Any] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise CompassError(f"--set expects KEY=VALUE, got {item!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def _apply(config: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    config = json.loads(json.dumps(config))  # a deep copy that keeps key order (a stage may depend on it)
    for dotted, value in overrides.items():
        node = config
        parts = dotted.split(".")
        for part in parts[:-1]:
            if part not in node or not isinstance(node[part], dict):
                raise CompassError(f"--set {dotted}: {part!r} is not a nested config section")
            node = node[part]
        node[parts[-1]] = value
    return config


def redacted_fields(config: dict[str, Any]) -> list[str]:
    """Dotted keys of the config fields the redactor changed: a secret replaced whole, or a marker inside a text
    (a URL's userinfo, a key=value pair) or inside a list item; running with them would send the marker."""
    def redacted(value: Any) -> bool:
        if isinstance(value, str):
            return REDACTED in value
        if isinstance(value, list):
            return any(redacted(item) for item in value)
        if isinstance(value, dict):
            return any(redacted(item) for item in value.values())
        return False

    return [key for key, value in flatten(config).items() if redacted(value)]


def metric_agrees(recorded: Any, now: Any, tolerance: float) -> bool:
    a, b = as_number(recorded), as_number(now)
    if a is None or b is None:
        return recorded == now
    return abs(a - b) <= tolerance * max(1.0, abs(a))


def reproduce_run(workspace: Workspace, run: RunRow, *, out: Path | None = None, allow_code_change: bool = False,
                  tolerance: float = 0.01, overrides: dict[str, Any] | None = None) -> Reproduction:
    from compass.ledger.exchange import origin_of
    from compass.ledger.record import mark_reproduction
    from compass.manifest import code_version
    from compass.runner import execute_stage
    from compass.stages import get_stage

    origin = origin_of(run)
    if origin is not None:
        raise CompassError(f"run {run.short} was imported from {origin['name']} ({origin['export']}); its inputs are not "
                           "here: reproduce it in that ledger, or rerun its config (compass runs show --json) on your data")
    current = code_version()
    code_changed = current.commit != run.code_commit
    if code_changed and not allow_code_change:
        raise CompassError(
            f"run {run.short} was made at commit {run.code_commit or 'unknown'}, this code is at "
            f"{current.commit or 'unknown'}: check out that commit (git checkout {run.code_commit}) or pass --allow-code-change")
    config_data = _apply(run.config, overrides or {})
    hidden = redacted_fields(config_data)
    if hidden:
        raise CompassError(f"run {run.short}: config field(s) {', '.join(hidden)} were redacted as secrets (the ledger "
                           f"keeps no secret, e.g. a URL's password); give them again with --set {hidden[0]}=VALUE")
    module = get_stage(run.stage)
    config = module.Config.model_validate(config_data)

    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(out) if out else workspace.root / "reproduce" / f"{run.short}-{stamp}"
    if out.exists() and any(out.iterdir()):
        raise CompassError(f"reproduce: {out} is not empty; give a new --out directory")
    index = Index(workspace.index_db, create=False)
    store = ContentStore(workspace.store_dir)
    try:
        inputs: dict[str, Path] = {}
        files = index.files(run.run_id, "in")
        for port, path, is_file in index.inputs(run.run_id):
            target = out / "inputs" / port / Path(path).name
            for _, file_port, rel, sha, _ in files:
                if file_port == port:
                    store.materialize(sha, target if is_file else target / rel)
            if not is_file:
                target.mkdir(parents=True, exist_ok=True)  # an input directory may have held no files
            inputs[port] = target
    finally:
        index.close()

    launch = Launch.model_validate(run.manifest["launch"]) if run.manifest["launch"] else None
    result = execute_stage(run.stage, config, inputs, out / "out", name=run.name, launch=launch,
                           recipe=run.manifest["recipe"], force=True)
    mark_reproduction(workspace, result.manifest.run_id, run)

    rep = Reproduction(run, result.manifest.run_id, out / "out", code_changed,
                       exact_required=run.stage not in METRIC_JUDGED_STAGES)
    recorded_outputs: dict[str, str] = run.manifest["outputs"]
    new_outputs = result.manifest.outputs
    for rel, sha in sorted(recorded_outputs.items()):
        if rel not in new_outputs:
            rep.missing_outputs.append(rel)
        elif new_outputs[rel] == sha:
            rep.same_outputs.append(rel)
        else:
            rep.changed_outputs.append(rel)
    rep.extra_outputs = sorted(set(new_outputs) - set(recorded_outputs))
    before, after = flatten(run.metrics), flatten(result.manifest.metrics)
    for key in sorted(set(before) | set(after)):
        if any(word in key.lower() for word in VOLATILE_METRIC_WORDS):
            continue
        recorded = before[key] if key in before else None  # absent on one side: shown as None, disagrees
        now = after[key] if key in after else None
        rep.metric_rows.append((key, recorded, now, key in before and key in after and metric_agrees(recorded, now, tolerance)))
    return rep
