"""Small deterministic stages for the ledger tests, registered under the kinds of a real recipe
(sources -> pairs / sft -> dpo -> eval) so lineage, data-recipe columns and `dpo.beta` filters are exercised.
The 'training' is real numpy gradient descent on a line fit: losses fall, a log_history.json is written
the way the SFT/DPO stages write theirs. Also: a template ledger (MLflow's migrations run once per session)."""
from __future__ import annotations

import json
import shutil
import sys
import types
from pathlib import Path

import numpy as np
from pydantic import Field

from compass import stages
from compass.config import StageConfig
from compass.stages import Port


def _module(kind: str, doc: str, config: type, inputs: dict, outputs: dict, run) -> str:
    name = f"ledger_support_{kind.replace('-', '_')}"
    module = types.ModuleType(name, doc)
    module.EXAMPLE = f"compass {kind} --out {kind}/"
    module.VERSION = 1
    module.Config = config
    module.INPUTS = inputs
    module.OUTPUTS = outputs
    module.run = run
    sys.modules[name] = module
    return name


# --- sources: deterministic (x, y) problems from named pools -------------------------------------------
class SourcesConfig(StageConfig):
    pools: dict[str, int] = Field(default_factory=lambda: {"gsm8k": 12, "math": 8}, description="pool -> records")
    noise: float = Field(0.1, description="noise on y")
    api_key: str | None = Field(None, description="a credential (tests redaction)")
    base_url: str = Field("http://127.0.0.1:1/v1", description="where a teacher would be")


def run_sources(config: SourcesConfig, inputs: dict[str, Path], out_dir: Path) -> dict:
    rng = np.random.default_rng(config.seed)
    lines = []
    for pool, count in config.pools.items():
        for i in range(count):
            x = float(rng.uniform(-1, 1))
            lines.append({"id": f"{pool}-{i}", "pool": pool, "x": round(x, 6), "y": round(3 * x + 1 + config.noise * float(rng.normal()), 6)})
    if "raw" in inputs:
        lines += [json.loads(line) for line in inputs["raw"].read_text().splitlines() if line.strip()]
    (out_dir / "problems.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return {"counts": dict(config.pools), "records": len(lines)}


# --- pairs: (chosen, rejected) by weighted strategies ---------------------------------------------------
class PairsConfig(StageConfig):
    weights: dict[str, float] = Field(default_factory=lambda: {"omit_thinking": 0.34, "tamper_thinking_numbers": 0.33, "tamper_answer": 0.33},
                                      description="strategy weights")


def run_pairs(config: PairsConfig, inputs: dict[str, Path], out_dir: Path) -> dict:
    rng = np.random.default_rng(config.seed)
    names = [k for k, v in config.weights.items() if v > 0]
    probs = np.array([config.weights[k] for k in names]) / sum(config.weights[k] for k in names)
    counts = {k: 0 for k in config.weights}
    rows = []
    for line in inputs["problems"].read_text().splitlines():
        rec = json.loads(line)
        strategy = names[int(rng.choice(len(names), p=probs))]
        counts[strategy] += 1
        rows.append({"x": rec["x"], "chosen": rec["y"], "rejected": rec["y"] + 1.0, "strategy": strategy})
    (out_dir / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"pairs": len(rows), "strategies": counts}


# --- sft / dpo: gradient descent on y = w x + b, logging a history --------------------------------------
class SftConfig(StageConfig):
    learning_rate: float = Field(0.2, description="step size")
    max_steps: int = Field(12, description="steps")
    lora_r: int = Field(4, description="kept for the recipe columns")


def _fit(x, y, w, b, lr, steps, extra=None):
    history = []
    for step in range(1, steps + 1):
        err = w * x + b - y
        loss = float(np.mean(err ** 2))
        w -= lr * float(np.mean(2 * err * x))
        b -= lr * float(np.mean(2 * err))
        entry = {"loss": round(loss, 8), "learning_rate": lr, "epoch": step / steps, "step": step}
        if extra:
            entry.update(extra(step, loss))
        history.append(entry)
    return w, b, history


def run_sft(config: SftConfig, inputs: dict[str, Path], out_dir: Path) -> dict:
    recs = [json.loads(line) for line in inputs["data"].read_text().splitlines()]
    x = np.array([r["x"] for r in recs])
    y = np.array([r["y"] for r in recs])
    w, b, history = _fit(x, y, 0.0, 0.0, config.learning_rate, config.max_steps)
    (out_dir / "model").mkdir(exist_ok=True)
    (out_dir / "model" / "weights.json").write_text(json.dumps({"w": round(w, 8), "b": round(b, 8)}))
    (out_dir / "model" / "tokenizer.json").write_text('{"vocab": ["a", "b"]}')
    (out_dir / "log_history.json").write_text(json.dumps(history))
    return {"train_loss": history[-1]["loss"], "train_runtime": 0.01}


class DpoConfig(StageConfig):
    beta: float = Field(0.1, description="DPO beta")
    learning_rate: float = Field(0.05, description="step size")
    max_steps: int = Field(8, description="steps")


def run_dpo(config: DpoConfig, inputs: dict[str, Path], out_dir: Path) -> dict:
    model = json.loads((inputs["model"] / "weights.json").read_text())
    pairs = [json.loads(line) for line in inputs["pairs"].read_text().splitlines()]
    x = np.array([p["x"] for p in pairs])
    y = np.array([p["chosen"] for p in pairs])

    def rewards(step, loss):
        chosen = config.beta * step / config.max_steps
        return {"rewards/chosen": round(chosen, 6), "rewards/rejected": round(-chosen, 6), "rewards/margins": round(2 * chosen, 6)}

    w, b, history = _fit(x, y, model["w"], model["b"], config.learning_rate, config.max_steps, rewards)
    (out_dir / "model").mkdir(exist_ok=True)
    (out_dir / "model" / "weights.json").write_text(json.dumps({"w": round(w, 8), "b": round(b, 8)}))
    shutil.copyfile(inputs["model"] / "tokenizer.json", out_dir / "model" / "tokenizer.json")
    (out_dir / "log_history.json").write_text(json.dumps(history))
    return {"train_loss": history[-1]["loss"], "rewards": {"margins": history[-1]["rewards/margins"]}}


# --- eval: accuracy of the fitted line on fixed points ---------------------------------------------------
class EvalConfig(StageConfig):
    tolerance: float = Field(0.3, description="|pred - truth| counted correct")


def run_eval(config: EvalConfig, inputs: dict[str, Path], out_dir: Path) -> dict:
    model = json.loads((inputs["model"] / "weights.json").read_text())
    xs = np.linspace(-1, 1, 20)
    correct = np.abs(model["w"] * xs + model["b"] - (3 * xs + 1)) <= config.tolerance
    (out_dir / "scores.jsonl").write_text("".join(json.dumps({"x": round(float(x), 4), "ok": bool(c)}) + "\n" for x, c in zip(xs, correct)))
    return {"gsm8k": {"accuracy": round(float(correct.mean()), 4)}, "mgsm_ja": {"accuracy": round(float(correct[:10].mean()), 4)}}


MODULES = {
    "sources": _module("sources", "deterministic problems", SourcesConfig, {"raw": Port("extra jsonl", required=False)},
                       {"problems": "problems.jsonl"}, run_sources),
    "pairs": _module("pairs", "pairs", PairsConfig, {"problems": Port("problems")}, {"pairs": "pairs.jsonl"}, run_pairs),
    "sft": _module("sft", "line-fit sft", SftConfig, {"data": Port("problems")}, {"model": "model"}, run_sft),
    "dpo": _module("dpo", "line-fit dpo", DpoConfig, {"model": Port("model dir"), "pairs": Port("pairs")}, {"model": "model"}, run_dpo),
    "eval": _module("eval", "line-fit eval", EvalConfig, {"model": Port("model dir")}, {"scores": "scores.jsonl"}, run_eval),
}


def register(monkeypatch) -> None:
    for kind, module in MODULES.items():
        monkeypatch.setitem(stages.STAGES, kind, module)


def run_chain(work: Path, *, beta: float = 0.1, weights: dict | None = None, sft_lr: float = 0.2, raw: Path | None = None) -> dict:
    """sources -> pairs, sources -> sft -> dpo(+pairs) -> eval, through the real runner; returns kind -> StageResult."""
    from compass.runner import execute_stage

    out = {}
    inputs = {"raw": raw} if raw else {}
    out["sources"] = execute_stage("sources", SourcesConfig(), inputs, work / "sources", name="sources")
    problems = work / "sources" / "problems.jsonl"
    out["pairs"] = execute_stage("pairs", PairsConfig(**({"weights": weights} if weights else {})), {"problems": problems}, work / "pairs", name="pairs")
    out["sft"] = execute_stage("sft", SftConfig(learning_rate=sft_lr), {"data": problems}, work / "sft", name="sft")
    out["dpo"] = execute_stage("dpo", DpoConfig(beta=beta), {"model": work / "sft" / "model", "pairs": work / "pairs" / "pairs.jsonl"},
                               work / "dpo", name="dpo")
    out["eval"] = execute_stage("eval", EvalConfig(), {"model": work / "dpo" / "model"}, work / "eval", name="eval")
    return out


def make_template(root: Path) -> Path:
    """A ledger workspace whose MLflow store already has its tables (the migrations take seconds). The
    'compass' experiment is made by each copy: its artifact location is the copy's own directory."""
    import logging
    import warnings

    from mlflow.tracking import MlflowClient

    from compass.ledger.index import Index
    from compass.ledger.workspace import Workspace

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r"The ``noload`` loader strategy is deprecated")
    workspace = Workspace(root)
    root.mkdir(parents=True)
    MlflowClient(tracking_uri=f"sqlite:///{workspace.mlflow_db}").search_experiments()
    Index(workspace.index_db).close()
    return root


def fresh_workspace(template: Path, target: Path):
    from compass.ledger.workspace import Workspace

    shutil.copytree(template, target)
    return Workspace(target)


_TEMPLATE: list[Path] = []


def template_dir(tmp_path_factory) -> Path:
    """One initialised ledger per test process; tests copy it (fresh_workspace) instead of migrating again."""
    if not _TEMPLATE:
        _TEMPLATE.append(make_template(tmp_path_factory.mktemp("ledger-template") / "home"))
    return _TEMPLATE[0]


def workspace_for_test(tmp_path_factory, target: Path, monkeypatch):
    """A fresh ledger at `target`, made current (COMPASS_HOME), with the chain's stages registered."""
    register(monkeypatch)
    workspace = fresh_workspace(template_dir(tmp_path_factory), target)
    monkeypatch.setenv("COMPASS_HOME", str(workspace.root))
    return workspace
