"""Lineage at record time: which recorded runs produced a new run's inputs (its parents), and its ancestry
(every ancestor with its depth), from the sha256 of the files."""
from __future__ import annotations

from collections import Counter

from typing import TYPE_CHECKING

from compass.ledger.index import Index

if TYPE_CHECKING:  # a type only: importing the manifest module costs a pydantic model build
    from compass.manifest import Manifest


def find_parents(index: Index, manifest: Manifest) -> list[tuple[str, str]]:
    """(parent run id, port): for each input, the run whose output directory holds it with the same bytes;
    else the fewest runs that produced its bytes (newest first). Bytes no run produced are raw sources."""
    found: list[tuple[str, str]] = []
    for port, record in manifest.inputs.items():
        remaining = dict(record.files)
        for run_id, _ in index.runs_with_out_dir_containing(record.path):
            outs = {sha for *_, sha, _ in index.files(run_id, "out")}
            if any(sha in outs for sha in remaining.values()):
                found.append((run_id, port))
                remaining = {rel: sha for rel, sha in remaining.items() if sha not in outs}
                break
        producers = index.producers_of(sorted(set(remaining.values())))
        while remaining:
            cover: Counter[str] = Counter()
            newest: dict[str, str] = {}
            for sha in remaining.values():
                for run_id, recorded in producers.get(sha, []):
                    cover[run_id] += 1
                    newest[run_id] = recorded
            if not cover:
                break
            best = max(cover, key=lambda r: (cover[r], newest[r]))
            found.append((best, port))
            remaining = {rel: sha for rel, sha in remaining.items()
                         if best not in {r for r, _ in producers.get(sha, [])}}
    return sorted(set(found), key=lambda item: (item[1], item[0]))


def ancestry_rows(index: Index, run_id: str, parents: list[tuple[str, str]]) -> dict[str, int]:
    depths = {run_id: 0}
    for parent_id, _ in parents:
        for ancestor, depth in index.ancestors(parent_id):
            depths[ancestor] = min(depths.get(ancestor, depth + 1), depth + 1)
    return depths
