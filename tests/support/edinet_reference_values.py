"""Compute what EDINET-Bench's own JSON reader returns for compass's test answers, by running it.

    python tests/support/edinet_reference_values.py CHECKOUT [--out tests/fixtures/evals/edinet_reference_values.json]

CHECKOUT is a clone of github.com/SakanaAI/EDINET-Bench. Its src/edinet_bench/utils.py imports API clients
(anthropic, openai, weave, ...) at module level, so this script reads that file, takes the one function
`extract_json_between_markers` out of its syntax tree and runs it (from the checkout, in a scratch directory;
nothing of it is copied into compass) on the answers in tests/fixtures/evals/edinet_reference_cases.json.
Output: for each answer, the JSON value it returns (NaN written as the string "NaN"), or null for None.
"""
from __future__ import annotations

import argparse
import ast
import json
import math
import os
import re
import tempfile
from pathlib import Path

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "evals"


def reference_reader(checkout: Path):
    path = checkout / "src" / "edinet_bench" / "utils.py"
    if not path.is_file():
        raise SystemExit(f"{checkout} is not a checkout of EDINET-Bench (no src/edinet_bench/utils.py)")
    tree = ast.parse(path.read_text(encoding="utf-8"))
    (function,) = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "extract_json_between_markers"]
    namespace = {"re": re, "json": json}
    exec(compile(ast.Module([function], type_ignores=[]), str(path), "exec"), namespace)  # noqa: S102 - the benchmark's own code
    return namespace["extract_json_between_markers"]


def _plain(value):
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description="run EDINET-Bench's JSON reader on compass's test answers")
    parser.add_argument("checkout", type=Path, help="a clone of SakanaAI/EDINET-Bench")
    parser.add_argument("--out", type=Path, default=FIXTURES / "edinet_reference_values.json")
    args = parser.parse_args()
    reader = reference_reader(args.checkout.resolve())
    answers = json.loads((FIXTURES / "edinet_reference_cases.json").read_text(encoding="utf-8"))["answers"]
    with tempfile.TemporaryDirectory(prefix="edinet-reference-") as scratch:
        os.chdir(scratch)
        values = [_plain(reader(answer)) for answer in answers]
    out = {"source": "SakanaAI/EDINET-Bench src/edinet_bench/utils.py extract_json_between_markers, run by "
                     "tests/support/edinet_reference_values.py", "values": values}
    args.out.write_text(json.dumps(out, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.out}: {len(values)} answers")


if __name__ == "__main__":
    main()
