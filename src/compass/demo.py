"""`compass demo`: the packaged tiny recipe, offline on a CPU, into a fresh work directory."""
from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

from compass.packaged import RECIPE_DIR, packaged_recipe  # noqa: F401 - RECIPE_DIR: where tests find the shipped recipes
from compass.pipeline import run_recipe
from compass.runner import StageResult

# the tiny recipe's stages the closing summary reads (names in recipes/tiny.yaml)
TRAINING_STAGES = ("sft", "dpo", "doc_sft")
CARD_STAGE = "vlm"  # the Phase 2 VLM: vision tower + projector + the DPO-merged LLM; its card ends the demo
EVAL_STAGES = {"eval_base": "Phase 0 (base)", "eval_sft": "Phase 1 (SFT)", "eval_dpo": "Phase 2 (SFT+DPO)"}
DOC_EVAL_STAGE = "eval_doc"
DOC_EVAL_ROWS = ("accuracy", "f1", "single_page.accuracy", "cross_page.accuracy", "unanswerable.accuracy", "mean_output_tokens", "n")

# --- a benchmark's two protocols side by side ----------------------------------------------------------------
# A benchmark's own files are the user's (their checkout; none of its texts ships with compass), so the demo shows
# `protocol: both` on a checkout it writes itself in japanese-lm-fin-harness's layout: the held-out problems as
# 4-option questions, in the demo's own words, with two prompt versions. The reference protocol runs
# lm-evaluation-harness on those task files and reports the best version, as the harness's leaderboard does;
# compass's protocol scores the default version with its own log-likelihood path (equal per item to lm-eval's).
PROTOCOL_STAGE = "eval_protocols"
PROTOCOL_TASK = "cma_basics"  # the fin-harness task whose layout (lettered options) the demo's checkout takes
PROTOCOL_MODEL = ("dpo", "merged")  # the Phase 2 LLM
PROTOCOL_ROWS = ("accuracy", "accuracy_norm", "prompt_version", "leaderboard_average", "n")
_DEMO_TASK_FILES = {
    f"{PROTOCOL_TASK}.yaml": (
        f"task: {PROTOCOL_TASK}\n"
        f"dataset_path: jlm_fin_eval/datasets/{PROTOCOL_TASK}/{PROTOCOL_TASK}.py\n"
        f"dataset_name: {PROTOCOL_TASK}\n"
        "output_type: multiple_choice\ntest_split: test\n"
        'description: "Choose the answer from the options and reply with its letter.\\n\\n"\n'
        "doc_to_text: \"Question: {{question}}\\n{% for t in choices.text %}{{ 'ABCD'[loop.index0] }}: {{t}}\\n{% endfor %}Answer:\"\n"
        'doc_to_choice: ["A", "B", "C", "D"]\n'
        'doc_to_target: "{{answer}}"\n'
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
        "  - metric: acc_norm\n    aggregation: mean\n    higher_is_better: true\n"
        "metadata:\n  version: 1.0\n"),
    f"{PROTOCOL_TASK}-1.0-0.1.yaml": (
        f"include: {PROTOCOL_TASK}.yaml\ntask: {PROTOCOL_TASK}-1.0-0.1\n"
        'description: "次の計算の答えを選んでください。\\n\\n"\n'
        'doc_to_text: "問題: {{question}}\\n答え:"\n'
        'doc_to_choice: "{{choices.text}}"\n'),  # the numbers themselves as options
}


def write_demo_harness(dest: Path, problems: Path) -> tuple[Path, Path]:
    """A checkout in the fin-harness layout holding the demo's own multiple-choice task: every held-out problem
    with its answer and three near misses in a seeded order. Returns (checkout, data file); same bytes every run."""
    import json
    import random

    from compass.evals.finharness import TASK_FILES
    from compass.io import read_jsonl, write_text_atomic

    rows = []
    for index, problem in enumerate(read_jsonl(problems)):
        answer = int(problem["reference_answer"])
        options = [answer, answer + 1, answer - 1, answer + 2]
        random.Random(index).shuffle(options)
        rows.append({"id": index, "question": problem["question"], "context": "",
                     "choices": [{"id": i, "text": str(v)} for i, v in enumerate(options)], "answer": options.index(answer)})
    data = dest / "jlm_fin_eval" / "datasets" / PROTOCOL_TASK / "data.json"
    data.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(data, json.dumps({"data": rows}, ensure_ascii=False, indent=1) + "\n")
    write_text_atomic(dest / "jlm_fin_eval" / "__init__.py", '"""Written by `compass demo`: its stand-in for a fin-harness checkout."""\n')
    tasks = dest / TASK_FILES / PROTOCOL_TASK
    tasks.mkdir(parents=True, exist_ok=True)
    for name, text in _DEMO_TASK_FILES.items():
        write_text_atomic(tasks / name, text)
    return dest, data


def run_protocols(workdir: Path, results: dict[str, StageResult]) -> StageResult:
    """The demo's checkout evaluated on the Phase 2 LLM under both protocols (compass's alone without lm-eval)."""
    import importlib.util

    from compass.runner import execute_stage
    from compass.stages import get_stage
    from compass.stages.evaluate import Config

    problems = results["heldout"].out_dir / get_stage("sources").OUTPUTS["problems"]
    repo, data = write_demo_harness(workdir / "demo-harness", problems)
    protocol = "both" if importlib.util.find_spec("lm_eval") is not None else "compass"
    if protocol == "compass":
        print("lm-evaluation-harness is not installed: the demo runs the compass protocol only "
              "(pip install -c constraints.txt 'lm-eval[hf]==0.4.13' for the reference beside it)")
    config = Config(tasks=[PROTOCOL_TASK], finharness={"protocol": protocol, "repo": str(repo)}, batch_size=16)
    stage, output = PROTOCOL_MODEL
    model = results[stage].out_dir / get_stage(stage).OUTPUTS[output]
    t0 = time.perf_counter()
    result = execute_stage("eval", config, {"model": model, PROTOCOL_TASK: data}, workdir / PROTOCOL_STAGE, name=PROTOCOL_STAGE)
    state = "cached" if result.cached else f"done in {time.perf_counter() - t0:.1f}s"
    print(f"{PROTOCOL_STAGE} (eval, outside the recipe): {state} -> {result.out_dir}")
    return result


def protocol_table(metrics: dict) -> str:
    """Reference and compass figures of the demo's task side by side (compass eval compare's layout)."""
    from compass.evals.compare import compare_table, split_metric, split_protocol

    def wanted(figure: str) -> bool:  # the headline rows, and each prompt version's accuracy (v<version>.accuracy)
        return figure in PROTOCOL_ROWS or (figure.startswith("v") and figure.endswith(".accuracy"))

    shown = {key: value for key, value in metrics.items()
             if split_metric(key)[0] == PROTOCOL_TASK and wanted(split_protocol(split_metric(key)[1])[1])}
    return compare_table([(EVAL_STAGES["eval_dpo"], shown)]).rstrip()


def training_summary(results: dict[str, StageResult]) -> list[str]:
    lines = []
    for name in TRAINING_STAGES:
        m = results[name].manifest.metrics
        lines.append(f"  {name:<8} loss {m['first_loss']:.4f} (step {m['first_loss_step']}) -> "
                     f"{m['last_loss']:.4f} (step {m['last_loss_step']}), {m['steps']} steps")
    dpo = results["dpo"].manifest.metrics
    lines.append(f"  dpo held-out pairs ({dpo['eval_pairs']}): reward accuracy {dpo['eval_before.reward_accuracy']:.3f} -> "
                 f"{dpo['eval_after.reward_accuracy']:.3f}, margin {dpo['eval_before.reward_margin']:.4f} -> "
                 f"{dpo['eval_after.reward_margin']:.4f}")
    return lines


def run_demo(workdir: Path | None = None) -> dict[str, StageResult]:
    from compass.evals.compare import compare_table
    from compass.commands.demo_tables import print_demo_leaderboard

    workdir = Path(workdir or Path("compass-demo") / dt.datetime.now().strftime("%Y%m%d-%H%M%S"))
    t0 = time.perf_counter()
    results = run_recipe(packaged_recipe("tiny"), workdir)
    protocols = run_protocols(workdir, results)
    print(f"\ndemo finished in {time.perf_counter() - t0:.1f}s; results in {workdir.resolve()}")
    print("\ntraining:")
    print("\n".join(training_summary(results)))
    print("\nheld-out reasoning-gym problems (never trained on):")
    print(compare_table([(label, results[name].manifest.metrics) for name, label in EVAL_STAGES.items()]).rstrip())
    print("\nlong documents (generated PDFs), merged VLM with and without <cot>:")
    doc_metrics = results[DOC_EVAL_STAGE].manifest.metrics
    columns = [(f"<cot> {mode}", {f"mmlongbench.{row}": doc_metrics[f"mmlongbench.cot_{mode}.{row}"] for row in DOC_EVAL_ROWS})
               for mode in ("on", "off")]
    print(compare_table(columns).rstrip())
    print(f"\na benchmark's two protocols: the fin-harness layout ({PROTOCOL_TASK}) on the demo's own checkout "
          "(held-out problems as 4-option questions, 2 prompt versions), Phase 2 LLM:")
    print(protocol_table(protocols.manifest.metrics))
    print("  reference: lm-evaluation-harness on the task files, the best prompt version (how the harness's leaderboard "
          "picks); compass: its own log-likelihood path on the default version. The task files are the demo's own, so "
          "neither figure compares with a published table: `compass eval compare` prints real runs the same way.")
    # every stage run is in the ledger: end on the leaderboard of this demo's own runs
    print_demo_leaderboard([result.manifest.run_id for result in results.values()])
    # the Phase 2 VLM's model card, written from the ledger alone (`compass card --check` re-derives every figure)
    from compass.commands.card import CardInputs, Ledger, write_card

    card = write_card(Ledger.open(), CardInputs(results[CARD_STAGE].manifest.run_id, title="compass tiny demo VLM (Phase 2)"),
                      workdir / "card" / "README.md")
    print(f"\nmodel card of the final model ({CARD_STAGE}): {card.resolve()}")
    return results
