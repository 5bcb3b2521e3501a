"""reasoning-gym (PyPI `reasoning-gym`, Apache-2.0): procedurally generated problems, offline and seeded.

Each generator (`basic_arithmetic`, `gsm_symbolic`, `chain_sum`, ...) yields {question, answer, metadata}.
A Problem's id is 'reasoning_gym/<generator>/<seed>/<index>': the same generator, seed and index always give
the same problem, so ids are stable for a seed whatever the size. The reference solution is the generator's
own worked solution (metadata['answer_cot'], its GSM-style '#### N' line removed) or, for arithmetic
generators that have none, the expression with its value."""
from __future__ import annotations

import json
import numbers
from decimal import Decimal
from fractions import Fraction
from typing import Any

from compass.errors import CompassError
from compass.records import Problem

NAME = "reasoning_gym"


def _json_safe(metadata: dict[str, Any], where: str) -> dict[str, Any]:
    """The generator's metadata as plain JSON (tuples become lists); anything else is an error, not a repr."""

    def plain(value: Any) -> Any:
        # exact numbers keep their exact text ('1/5'); the rest would need a repr, which is not data
        if isinstance(value, (Fraction, Decimal)):
            return str(value)
        if isinstance(value, numbers.Integral):
            return int(value)
        if isinstance(value, numbers.Real):
            return float(value)
        if isinstance(value, (set, frozenset)):
            return sorted(value, key=repr)
        raise CompassError(f"{where}: metadata value {value!r} ({type(value).__name__}) is not JSON-serialisable")

    return json.loads(json.dumps(metadata, default=plain, sort_keys=True))


def reference_solution(metadata: dict[str, Any], answer: str) -> str | None:
    cot = metadata.get("answer_cot")  # only some generators write one: its absence is expected, not an error
    if isinstance(cot, str) and cot.strip():
        body, sep, _ = cot.rpartition("####")
        return (body if sep else cot).strip() or None
    expression = metadata.get("expression")
    if isinstance(expression, str) and expression.strip():
        return f"{expression.strip()} = {answer}"
    return None


def load(generator: str, size: int, seed: int, config: dict[str, Any] | None = None) -> list[Problem]:
    """`size` problems from one generator; index i is the generator's i-th item for this seed."""
    if size < 0:
        raise CompassError(f"reasoning_gym {generator}: size must be >= 0, got {size}")
    import reasoning_gym

    try:
        dataset = reasoning_gym.create_dataset(generator, size=size, seed=seed, **(config or {}))
    except (ValueError, KeyError, TypeError) as err:  # unknown generator or config key
        raise CompassError(f"reasoning_gym: cannot create generator {generator!r} with config {config or {}}: {err}") from None
    problems = []
    for index in range(size):
        item = dataset[index]
        where = f"reasoning_gym {generator} seed {seed} item {index}"
        answer = item["answer"]
        if not isinstance(answer, str) or not answer.strip():
            raise CompassError(f"{where}: answer must be a non-empty string, got {answer!r}")
        metadata = _json_safe(item["metadata"], where)
        problems.append(
            Problem(
                id=f"{NAME}/{generator}/{seed}/{index}",
                source=NAME,
                question=item["question"].strip(),
                reference_answer=answer.strip(),
                reference_solution=reference_solution(metadata, answer.strip()),
                lang="en",
                meta={"generator": generator, "seed": seed, "index": index,
                      "rg_metadata": {k: v for k, v in metadata.items() if k != "answer_cot"}},
            )
        )
    return problems
