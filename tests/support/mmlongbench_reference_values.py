"""Compute MMLongBench-Doc's own scores for compass's test cases, by running the benchmark's scorer.

    python tests/support/mmlongbench_reference_values.py CHECKOUT [--out tests/fixtures/evals/mmlongbench_reference_values.json]

CHECKOUT is a clone of github.com/mayubo2333/MMLongBench-Doc; its eval/eval_score.py is imported from
there (nothing of it is copied into compass) and run in a scratch directory outside both repositories.
Inputs: tests/fixtures/evals/mmlongbench_reference_cases.json (answer cases written for compass) and
mmlongbench_quirks.json (rows written in samples.json's schema). Outputs, as JSON:

- cases: for each [gold, answer_format, extracted answer], the score of eval_score(), or
  "raises <ExceptionType>" when it raises (the reference's eval() of list answers is run here, on these
  cases only, which were written to be harmless);
- rows: per quirk row, the prediction and score the reference's run_lvlm.py loop would record
  (eval_score inside try/except, 'Failed to extract' and 0 on any exception);
- aggregate: eval_acc_and_f1() over the scorable rows, and the lines show_results() writes for them.

The unit tests assert compass's reference protocol against this file; rerun it when the cases change.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.util
import io
import json
import os
import tempfile
from pathlib import Path

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "evals"


def load_reference_scorer(checkout: Path):
    path = checkout / "eval" / "eval_score.py"
    if not path.is_file():
        raise SystemExit(f"{checkout} is not a checkout of MMLongBench-Doc (no eval/eval_score.py)")
    spec = importlib.util.spec_from_file_location("mmlongbench_eval_score", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def quietly(function, *args):
    """eval_score prints list lengths and items; keep this script's output to the result."""
    with contextlib.redirect_stdout(io.StringIO()):
        return function(*args)


def main() -> None:
    parser = argparse.ArgumentParser(description="run MMLongBench-Doc's eval_score.py on compass's cases")
    parser.add_argument("checkout", type=Path, help="a clone of mayubo2333/MMLongBench-Doc")
    parser.add_argument("--out", type=Path, default=FIXTURES / "mmlongbench_reference_values.json")
    args = parser.parse_args()
    checkout = args.checkout.resolve()
    spec = json.loads((FIXTURES / "mmlongbench_reference_cases.json").read_text(encoding="utf-8"))
    rows = json.loads((FIXTURES / "mmlongbench_quirks.json").read_text(encoding="utf-8"))
    reference = load_reference_scorer(checkout)

    with tempfile.TemporaryDirectory(prefix="mmlongbench-reference-") as scratch:
        os.chdir(scratch)  # show_results writes a file; nothing lands in either repository
        cases = []
        for gold, answer_format, pred in spec["cases"]:
            try:
                cases.append(quietly(reference.eval_score, gold, pred, answer_format))
            except Exception as err:  # noqa: BLE001 - recording which exception the reference raises
                cases.append(f"raises {type(err).__name__}")

        samples = []
        for row, pred in zip(rows, spec["predictions"], strict=True):
            sample = copy.deepcopy(row)
            try:  # run_lvlm.py's loop around scoring
                score = quietly(reference.eval_score, sample["answer"], pred, sample["answer_format"])
            except Exception:  # noqa: BLE001 - the reference's own behaviour
                pred, score = "Failed to extract", 0.0
            sample["pred"], sample["score"] = pred, score
            samples.append(sample)
        scorable = [s for i, s in enumerate(samples) if i not in set(spec["unscorable"])]
        accuracy, f1 = reference.eval_acc_and_f1(scorable)
        shown = Path(scratch) / "results.txt"
        reference.show_results(copy.deepcopy(scorable), show_path=str(shown))
        lines = shown.read_text(encoding="utf-8").splitlines()

    out = {
        "source": "mayubo2333/MMLongBench-Doc eval/eval_score.py, run by tests/support/mmlongbench_reference_values.py",
        "cases": cases,
        "rows": [{"pred": s["pred"], "score": s["score"]} for s in samples],
        "aggregate": {"accuracy": accuracy, "f1": f1, "show_results": lines},
    }
    args.out.write_text(json.dumps(out, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.out}: {len(cases)} cases, {len(samples)} rows")


if __name__ == "__main__":
    main()
