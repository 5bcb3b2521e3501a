"""Audit MMLongBench-Doc's published golds with both protocols' scorers (development check, no generation).

    PYTHONPATH=tests python -m support.mmlongbench_gold_audit CHECKOUT/data/samples.json [--checkout CHECKOUT]

Loads samples.json as published, reports the unscorable golds (`mmlongbench.check_golds`), then scores every
scorable gold against itself (both protocols must give 1) and against perturbations that a grader must
reject (another number, a changed string, a list with an item dropped, an abstention for an answerable
question, an answer for an unanswerable one), printing per protocol how many perturbations still score 1.
With --checkout, it also runs the benchmark's own eval/eval_score.py (imported from the checkout, in a scratch
directory) on every (gold, answer) pair of all rows and counts where compass's reference scorer agrees.
"""
from __future__ import annotations

import argparse
import json
from collections import Counter
from decimal import Decimal
from pathlib import Path

from compass.evals import mmlongbench, mmlongbench_reference as reference
from compass.evals.mmlongbench_score import parse_list, parse_number, score_answer


def perturbations(item: mmlongbench.DocItem) -> list[tuple[str, str]]:
    """(kind, wrong answer) pairs for one gold."""
    gold, fmt = item.answer, item.answer_format
    if fmt == "None":
        return [("answer-to-unanswerable", "42")]
    out = [("abstention", "Not answerable")]
    number = parse_number(gold)
    if fmt in ("Int", "Float") and number is not None:
        bumped = number.value + 1 if fmt == "Int" else number.value * Decimal("1.5")
        out.append(("other-number", f"{bumped}{'%' if number.percent else ''}"))
    elif fmt == "Str":
        out.append(("changed-string", gold.strip()[:-1] + ("x" if not gold.strip().endswith("x") else "y")))
    elif fmt == "List":
        items = parse_list(gold)
        wrong = items[:-1] if len(items) > 1 else items + ["something else"]
        out.append(("list-item-dropped", json.dumps(wrong, ensure_ascii=False)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("samples", help="samples.json from a checkout of mayubo2333/MMLongBench-Doc")
    parser.add_argument("--checkout", type=Path, help="a clone of MMLongBench-Doc: compare with its eval_score.py")
    args = parser.parse_args()
    items = mmlongbench.load_items(args.samples)
    kept, problems = mmlongbench.check_golds(items)
    print(f"rows {len(items)}; formats {dict(Counter(i.answer_format for i in items))}")
    print(f"evidence_pages '[0]': {sum(1 for i in items if 0 in i.evidence_pages)}")
    print(f"unscorable golds {len(problems)}:")
    for p in problems:
        print(f"  {p.id} {p.answer_format} {p.answer!r}: {p.reason}")
    self_ref = sum(reference.score(i.answer, i.answer, i.answer_format) == 1.0 for i in kept)
    self_own = sum(score_answer(i.answer, i.answer, i.answer_format, i.question) == 1.0 for i in kept)
    print(f"self-score 1 of {len(kept)}: reference {self_ref}, compass {self_own}")
    accepted: dict[str, Counter] = {"reference": Counter(), "compass": Counter()}
    totals: Counter = Counter()
    for item in kept:
        for kind, wrong in perturbations(item):
            totals[kind] += 1
            ref = reference.outcome(item.answer, wrong, item.answer_format).score
            own = score_answer(item.answer, wrong, item.answer_format, item.question)
            accepted["reference"][kind] += ref == 1.0
            accepted["compass"][kind] += own == 1.0
    for kind in sorted(totals):
        print(f"perturbation {kind:24s} n={totals[kind]:4d}  still 1: reference {accepted['reference'][kind]:4d}, "
              f"compass {accepted['compass'][kind]:4d}")


    if args.checkout is not None:
        compare_with_benchmark(items, args.checkout.resolve())


EXTRA_ANSWERS = ("Not answerable", "0", "[]", "['a']", "1,000", "12%", "N/A", "Fail to answer", "[Not answerable]", "")


def compare_with_benchmark(items: list[mmlongbench.DocItem], checkout: Path) -> None:
    import contextlib
    import io
    import os
    import tempfile

    from support.mmlongbench_reference_values import load_reference_scorer

    benchmark = load_reference_scorer(checkout)
    pairs = agree = 0
    differing = []
    with tempfile.TemporaryDirectory(prefix="mmlongbench-audit-") as scratch:
        os.chdir(scratch)
        for item in items:
            for answer in [item.answer] + [w for _, w in perturbations(item)] + list(EXTRA_ANSWERS):
                try:
                    with contextlib.redirect_stdout(io.StringIO()):
                        theirs = benchmark.eval_score(item.answer, answer, item.answer_format)
                except Exception:  # noqa: BLE001 - recording that the benchmark's scorer raised
                    theirs = "raises"
                try:
                    ours = reference.score(item.answer, answer, item.answer_format)
                except reference.ReferenceCrash:
                    ours = "raises"
                pairs += 1
                agree += theirs == ours
                if theirs != ours:
                    differing.append((item.id, answer, theirs, ours))
    print(f"benchmark eval_score.py vs compass reference scorer: {agree} of {pairs} (gold, answer) pairs agree")
    for row in differing[:20]:
        print("  differs:", row)


if __name__ == "__main__":
    main()
