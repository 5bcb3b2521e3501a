"""Which way is better, for every metric name: the one registry that search ("best loss"), leaderboards,
the report and `compass eval compare` consult, so a loss is never ranked upside down.

A metric name is read by its last part (after the final '.' or '/': `train/loss` -> `loss`,
`mmlongbench.cot_on.f1` -> `f1`), split into words on '_' and '-'. Lower is better when
  - the whole last part is in LOWER_IS_BETTER_NAMES, or
  - one of its words is in LOWER_IS_BETTER_WORDS (loss, error, perplexity, runtime, ...),
unless a word in HIGHER_IS_BETTER_WORDS says otherwise (`tokens_per_second`: a rate of work).
Everything else (accuracy, f1, exact_match, reward accuracy, margins, format_valid_rate) is higher is better.

Only this module decides; add a word here rather than passing --lower-is-better around.
"""
from __future__ import annotations

import re
from typing import Literal

Direction = Literal["higher", "lower"]

# whole last parts that are lower-is-better although no word of theirs says so
LOWER_IS_BETTER_NAMES = frozenset({
    "rewards/rejected", "rejected", "wall_time_s", "grad_norm",
})
# words that make a metric lower-is-better wherever they occur in its last part
LOWER_IS_BETTER_WORDS = frozenset({
    "loss", "losses", "nll", "error", "errors", "err", "error_rate", "perplexity", "ppl", "wer", "cer", "ter",
    "mse", "mae", "rmse", "distance", "runtime", "time", "seconds", "latency", "wall", "contaminated",
    "contamination", "overlap", "duplicates", "invalid", "failures", "failed", "regret",
})
# words that win over the above: rates of work done are higher-is-better
HIGHER_IS_BETTER_WORDS = frozenset({"per_second", "per_sec", "throughput", "per_s"})

_SPLIT = re.compile(r"[_\-\s]+")


def _last_part(metric: str) -> str:
    return re.split(r"[./]", metric.strip())[-1].lower()


def direction(metric: str) -> Direction:
    """'lower' or 'higher': which values of `metric` are better."""
    name = metric.strip().lower()
    last = _last_part(name)
    tail_two = "/".join(re.split(r"[./]", name)[-2:])  # 'rewards/rejected'
    joined = f"_{last}_"
    if any(f"_{word}_" in joined for word in HIGHER_IS_BETTER_WORDS):
        return "higher"
    if last in LOWER_IS_BETTER_NAMES or tail_two in LOWER_IS_BETTER_NAMES:
        return "lower"
    words = set(_SPLIT.split(last))
    if words & LOWER_IS_BETTER_WORDS or any(f"_{word}_" in joined for word in LOWER_IS_BETTER_WORDS if "_" in word):
        return "lower"
    return "higher"


def lower_is_better(metric: str) -> bool:
    return direction(metric) == "lower"


def best_first(metric: str, values: list[tuple[str, float]]) -> list[tuple[str, float]]:
    """(id, value) pairs sorted best first for `metric` (ties keep their order)."""
    return sorted(values, key=lambda item: item[1], reverse=not lower_is_better(metric))


def is_better(metric: str, a: float, b: float) -> bool:
    """Whether value `a` of `metric` is strictly better than `b`."""
    return a < b if lower_is_better(metric) else a > b
