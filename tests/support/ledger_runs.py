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
    module.run = lambda config, ctx: run(config, ctx.inputs, ctx.out_dir)  # the stage contract: run(config, ctx)
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


def _points(lines: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of line-fit records; other records (real Problem or Pair rows) get x from their position."""
    x = np.array([r["x"] if "x" in r else (i % 17) / 8 - 1 for i, r in enumerate(lines)])
    y = np.array([r["y"] if "y" in r else (r["chosen"] if isinstance(r.get("chosen"), float) else 3 * xi + 1)
                  for r, xi in zip(lines, x)])
    return x, y


def _read_lines(path: Path) -> list[dict]:
    files = sorted(path.glob("*.jsonl")) if path.is_dir() else [path]
    return [json.loads(line) for file in files for line in file.read_text().splitlines() if line.strip()]


def run_sft(config: SftConfig, inputs: dict[str, Path], out_dir: Path) -> dict:
    x, y = _points(_read_lines(inputs["data"]))
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
    x, y = _points(_read_lines(inputs["pairs"]))

    def rewards(step, loss):
        chosen = config.beta * step / config.max_steps
        return {"rewards/chosen": round(chosen, 6), "rewards/rejected": round(-chosen, 6), "rewards/margins": round(2 * chosen, 6)}

    w, b, history = _fit(x, y, model["w"], model["b"], config.learning_rate, config.max_steps, rewards)
    (out_dir / "model").mkdir(exist_ok=True)
    (out_dir / "model" / "weights.json").write_text(json.dumps({"w": round(w, 8), "b": round(b, 8)}))
    shutil.copyfile(inputs["model"] / "tokenizer.json", out_dir / "model" / "tokenizer.json")
    (out_dir / "log_history.json").write_text(json.dumps(history))
    metrics = {"train_loss": history[-1]["loss"], "rewards": {"margins": history[-1]["rewards/margins"]}}
    if "eval_pairs" in inputs:  # held-out reward accuracy before/after: a deterministic function of the fit
        held = len(_read_lines(inputs["eval_pairs"]))
        before = round(0.5 / (1 + abs(model["w"] - 3)), 4)
        gain = config.beta * config.max_steps / (1 + config.beta * config.max_steps)
        after = round(before + (1 - before) * gain * (0.9 + held / 1000), 4)
        metrics.update({"eval_pairs": held, "eval_before": {"reward_accuracy": before}, "eval_after": {"reward_accuracy": after}})
    return metrics


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
    "dpo": _module("dpo", "line-fit dpo", DpoConfig, {"model": Port("model dir"), "pairs": Port("pairs"),
                                                       "eval_pairs": Port("held-out pairs", required=False)}, {"model": "model"}, run_dpo),
    "eval": _module("eval", "line-fit eval", EvalConfig, {"model": Port("model dir")}, {"scores": "scores.jsonl"}, run_eval),
}


def register(monkeypatch, kinds: tuple[str, ...] | None = None) -> None:
    for kind, module in MODULES.items():
        if kinds is None or kind in kinds:
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


# --- a ledger to search: 212 runs, real data stages (sources, decontaminate, pairs) feeding line-fit training --
NOTES_EN = {
    "pairs-7": "tamper_answer dropped: rejected answers were too easy to spot",
    "pairs-21": "baseline strategy mix, same as the paper",
    "sources-12": "first try with the sampled gsm8k subset",
    "decontaminate-5": "strict threshold removed half of the problems",
    "dpo-3": "reward margins exploded after step 4, lowered beta next time",
    "dpo-9": "best run for the workshop slides",
    "sft-6": "loss plateaued early; the learning rate was too small",
    "eval-11": "numbers look suspicious, rerun with the fixed tolerance",
    "sources-30": "the held-out eval problems, never trained on",
    "pairs-44": "only number tampering in the thinking, no answer edits",
    "sft-15": "warm start from the merged checkpoint",
    "eval-20": "final candidate for the release",
}
NOTES_JA = {
    "pairs-13": "有価証券報告書の問題で作ったペア。思考の数字だけを改ざんした",
    "sources-3": "最初のデータ取得。重複が多かった",
    "decontaminate-17": "評価セットとの重なりを取り除いた。閾値を緩めにした",
    "dpo-5": "報酬のマージンが伸びなかったのでベータを上げた",
    "dpo-14": "学会発表用の一番良いモデル",
    "sft-2": "学習率を下げたら損失が安定した",
    "eval-7": "日本語の算数問題で精度が落ちた",
    "pairs-33": "答えの改ざんをやめて思考の省略を増やした",
    "sources-25": "金融の文書から抽出した問題を追加した",
    "eval-16": "長い文脈で推論が崩れた",
    "sft-19": "バッチサイズを倍にして再実行",
    "decontaminate-33": "テストデータの漏れを確認するための実行",
}


def _gsm8k_rows(count: int, offset: int) -> list[dict]:
    rows = []
    for i in range(offset, offset + count):
        a, b = 3 + i % 41, 5 + (i * 7) % 53
        rows.append({"question": f"A farmer has {a} sheep and buys {b} more. How many sheep are there now? (#{i})",
                     "answer": f"{a} + {b} = <<{a}+{b}={a + b}>>{a + b}\n#### {a + b}"})
    return rows


def _weights(i: int) -> dict[str, float]:
    grid = [(0.34, 0.33, 0.33), (0.5, 0.5, 0.0), (0.25, 0.25, 0.5), (0.0, 1.0, 0.0), (0.6, 0.2, 0.2), (0.4, 0.3, 0.3)]
    omit, numbers, answer = grid[i % len(grid)]
    return {"omit_thinking": omit, "tamper_thinking_numbers": numbers, "tamper_answer": answer}


def build_search_corpus(work: Path) -> dict[str, str]:
    """Record the corpus through the real runner into the current ledger; returns 'stage-i' -> run id.
    The real stages must be registered for sources/decontaminate/pairs and the line-fit ones for sft/dpo/eval."""
    from compass.ledger.index import Index
    from compass.ledger.record import add_note
    from compass.ledger.workspace import Workspace
    from compass.runner import execute_stage
    from compass.stages import get_stage
    from support.traces import synthetic_trace

    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    for name, offset in (("train_a", 0), ("train_b", 500), ("test", 900)):
        (data / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _gsm8k_rows(60, offset)))
    for name, start in (("traces_a", 0), ("traces_b", 40)):
        (data / f"{name}.jsonl").write_text("".join(synthetic_trace(i).model_dump_json() + "\n" for i in range(start, start + 40)))
    ids: dict[str, str] = {}

    def run(key: str, kind: str, config: dict, inputs: dict[str, Path], name: str | None = None) -> Path:
        module = get_stage(kind)
        out = work / key
        result = execute_stage(kind, module.Config.model_validate(config), inputs, out, name=name or kind)
        ids[key] = result.manifest.run_id
        return out

    sources_out = {}
    for i in range(40):
        file = "test.jsonl" if i == 30 else ("train_a.jsonl" if i % 2 == 0 else "train_b.jsonl")
        entry = {"name": "gsm8k", "path": file, "limit": 5 + i, "sample": i % 3 == 0, "split": "test" if i == 30 else "train"}
        sources_out[i] = run(f"sources-{i}", "sources", {"seed": 100 + i, "workers": 1, "datasets": [entry]}, {"data": data},
                             name="eval-problems" if i == 30 else "sources")
    eval_problems = sources_out[30] / "problems.jsonl"
    for i in range(40):
        problems = sources_out[i if i != 30 else 31] / "problems.jsonl"
        run(f"decontaminate-{i}", "decontaminate",
            {"seed": 200 + i, "workers": 1, "ngram": 8 + i % 6, "threshold": [0.5, 0.6, 0.7, 0.8, 0.9][i % 5], "max_drop_rate": 0.9},
            {"problems": problems, "eval": eval_problems})
    pairs_out = {}
    for i in range(60):
        traces = data / ("traces_a.jsonl" if i % 2 == 0 else "traces_b.jsonl")
        pairs_out[i] = run(f"pairs-{i}", "pairs", {"seed": i, "workers": 1, "max_reject_rate": 0.5, "weights": _weights(i)}, {"traces": traces})
    for i in range(24):
        sft = run(f"sft-{i}", "sft", {"seed": 300 + i, "learning_rate": [0.05, 0.1, 0.2, 0.3][i % 4], "max_steps": 6 + i % 5,
                                      "lora_r": [4, 8, 16][i % 3]},
                  {"data": sources_out[i] / "problems.jsonl"})
        dpo = run(f"dpo-{i}", "dpo", {"seed": 400 + i, "beta": [0.05, 0.1, 0.2, 0.3, 0.5][i % 5], "max_steps": 4 + i % 7},
                  {"model": sft / "model", "pairs": pairs_out[i] / "pairs.jsonl", "eval_pairs": pairs_out[59 - i] / "pairs.jsonl"})
        run(f"eval-{i}", "eval", {"seed": 500 + i, "tolerance": [0.1, 0.2, 0.3, 0.5][i % 4]}, {"model": dpo / "model"})
    workspace = Workspace.current()
    index = Index(workspace.index_db)
    try:
        for key, note in {**NOTES_EN, **NOTES_JA}.items():
            add_note(workspace, index.run(ids[key]), note)
    finally:
        index.close()
    return ids
