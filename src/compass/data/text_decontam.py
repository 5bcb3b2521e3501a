"""Decontamination of SFT examples and preference pairs against the evaluation sets, by the same test as the
`decontaminate` stage (compass.data.decontam: word n-gram overlap of normalised text, each CJK character a token):
an example's user turns are compared with each evaluation problem's question."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from compass.errors import CompassError


def labels_by_source(reports: dict[str, dict[str, Any]]) -> list[str]:
    """The source name of each item of a load_mix result (items come source by source, `taken` of each)."""
    return [label for label, report in reports.items() for _ in range(report["taken"])]


def decontaminate_texts(items: Sequence[tuple[str, str, str]], eval_path: Path | None, *, ngram: int, threshold: float,
                        max_drop_rate: float | None, what: str) -> tuple[set[str], list[dict[str, Any]]]:
    """(id, source, text) items -> (ids kept, one report row per dropped item). No eval input: everything kept.
    max_drop_rate None: no check here (a shard's share; its gather checks the whole with check_drop_rate)."""
    from compass.data.decontam import EvalIndex
    from compass.io import iter_jsonl
    from compass.records import Problem

    if not items:
        raise CompassError(f"{what}: no examples were loaded")
    if eval_path is None:
        return {item_id for item_id, _, _ in items}, []
    index = EvalIndex(list(iter_jsonl(eval_path, Problem)), ngram)
    kept: set[str] = set()
    dropped: list[dict[str, Any]] = []
    for item_id, source, text in items:
        probe = Problem(id=item_id, source=source, question=text, reference_answer="")
        match, count = index.best_match(probe, threshold)
        if match is None:
            kept.add(item_id)
        else:
            dropped.append({"id": item_id, "source": source, "text": text[:500], "eval_id": match.eval_id,
                            "eval_source": match.eval_source, "method": match.method, "score": match.score,
                            "eval_matches": count})
    if max_drop_rate is not None:
        check_drop_rate(what, len(items), dropped, max_drop_rate)
    return kept, dropped


def check_drop_rate(what: str, n_items: int, dropped: list[dict[str, Any]], max_drop_rate: float) -> None:
    """Fail when more than `max_drop_rate` of `n_items` were dropped as overlapping the evaluation sets, or all were."""
    if n_items == 0:
        raise CompassError(f"{what}: no examples were loaded")
    rate = len(dropped) / n_items
    if rate > max_drop_rate:
        first = "; ".join(f"{d['id']} ~ {d['eval_id']} ({d['score']})" for d in dropped[:3])
        raise CompassError(f"{what}: {len(dropped)} of {n_items} examples ({rate:.0%}) overlap the evaluation sets, "
                           f"more than max_drop_rate {max_drop_rate:.0%}: {first}")
    if len(dropped) == n_items:
        raise CompassError(f"{what}: every example overlaps the evaluation sets")
