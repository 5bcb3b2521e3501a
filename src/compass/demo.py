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
    # every stage run is in the ledger: end on the leaderboard of this demo's own runs
    print_demo_leaderboard([result.manifest.run_id for result in results.values()])
    # the Phase 2 VLM's model card, written from the ledger alone (`compass card --check` re-derives every figure)
    from compass.commands.card import CardInputs, Ledger, write_card

    card = write_card(Ledger.open(), CardInputs(results[CARD_STAGE].manifest.run_id, title="compass tiny demo VLM (Phase 2)"),
                      workdir / "card" / "README.md")
    print(f"\nmodel card of the final model ({CARD_STAGE}): {card.resolve()}")
    return results
