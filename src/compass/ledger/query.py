"""Finding runs: search by facts, superlatives, stage words and words (compass.ledger.understand reads the
query), by meaning (multilingual E5 embeddings made at record time) and by figures (--where), ranked, with
the reason each run matched; and the leaderboard, best first by the metric's direction."""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from compass.errors import CompassError
from compass.ledger.flat import as_number, format_number
from compass.ledger.index import Index, RunRow
from compass.ledger.index import where_sql as filter_sql_of
from compass.ledger.metric_direction import lower_is_better
from compass.ledger.metric_direction import lower_is_better as metric_lower_is_better
from compass.ledger.search_text import meaning_text, text_sha
from compass.ledger.where import BoolOp, Cmp, comparisons, parse_where

if TYPE_CHECKING:  # imported by search(): list, show, diff and lineage use this module without reading a query
    from compass.ledger.understand import Fact

RRF_K = 60             # reciprocal rank fusion: score = sum over lists of 1 / (RRF_K + rank)
MEANING_MIN = 0.80     # cosine below this is no match (E5: unrelated texts score about 0.7 to 0.8)
MEANING_TOP = 50
TEXT_TOP = 200


@dataclass
class Hit:
    run: RunRow
    score: float = 0.0
    why: list[str] = field(default_factory=list)


def where_run_ids(index: Index, where: str) -> set[str]:
    return index.where_run_ids(parse_where(where))


def where_reasons(index: Index, run_id: str, where: str) -> list[str]:
    reasons = []
    for cmp in comparisons(parse_where(where)):
        found = index.figure_value(run_id, cmp.name)
        if found is not None:
            value, origin = found
            reasons.append(f"{cmp.name}={value}" + ("" if origin == "self" else f" (from {origin})"))
    return reasons


def _phrase(word: str) -> str:
    return '"' + word.replace('"', '""') + '"'


def word_hits(index: Index, words: list[str], filter_sql: str = "", filter_params: tuple = ()) -> list[tuple[str, float, int, int]]:
    """(run id, bm25 (lower is better), how many of the words it has, rowid of its words row), runs with every
    word first; the words are matched whole in the segmented word index (Japanese morphemes, identifiers, numbers)."""
    if not words:
        return []
    unique = list(dict.fromkeys(words))
    hits: dict[str, tuple[float, int]] = {}
    rowids: dict[str, int] = {}
    # every word first; then each word alone while there is room (bm25 over every run with one common
    # word costs more than the rest of the search)
    for run_id, score, rowid in index.words_match(" AND ".join(map(_phrase, unique)), filter_sql, filter_params, limit=TEXT_TOP):
        hits[run_id] = (score, len(unique))
        rowids[run_id] = rowid
    if len(unique) > 1 and len(hits) < TEXT_TOP:
        counts: dict[str, int] = {}
        best: dict[str, float] = {}
        for word in unique:
            for run_id, score, rowid in index.words_match(_phrase(word), filter_sql, filter_params, limit=TEXT_TOP):
                counts[run_id] = counts.get(run_id, 0) + 1
                best[run_id] = min(best.get(run_id, 0.0), score)
                rowids[run_id] = rowid
        for run_id, count in counts.items():
            if run_id not in hits:
                hits[run_id] = (best[run_id], count)
    return sorted(((r, score, n, rowids[r]) for r, (score, n) in hits.items()), key=lambda item: (-item[2], item[1]))


def substring_hits(index: Index, words: list[str], filter_sql: str = "", filter_params: tuple = ()) -> list[str]:
    """Runs whose text contains a word as a substring (trigram index): for the words no run has whole,
    e.g. a commit or run-id prefix, part of a file name."""
    found: list[str] = []
    for word in words:
        if len(word) >= 3:
            found += [r for r, _ in index.fulltext_match(_phrase(word), filter_sql, filter_params, limit=TEXT_TOP)]
    return list(dict.fromkeys(found))


def word_context(fields: dict[str, str], words: list[str], width: int = 36) -> str:
    """Where the query words occur: the field with the most of them, around the first one, words in []."""
    best = None
    for field_name, text in fields.items():
        low = text.lower()
        found = [(low.find(w.lower()), w) for w in words if w.lower() in low]
        if found and (best is None or len(found) > len(best[2])):
            best = (field_name, text, sorted(found))
    if best is None:
        return ""
    field_name, text, found = best
    first = found[0][0]
    start, end = max(0, first - width), min(len(text), first + width + len(found[0][1]))
    window = text[start:end].replace("\n", " ")
    for _, word in found:
        window = re.sub(re.escape(word), lambda m: f"[{m.group(0)}]", window, flags=re.I)
    return f"{field_name}: {'…' if start else ''}{window}{'…' if end < len(text) else ''} ({len(found)}/{len(words)} words)"


class MeaningIndex:
    """Embeddings of every run's description (made when the run was recorded, see record.py), as one matrix
    cached in the process until the table changes. Runs recorded before embeddings existed (an older
    ledger) are embedded by the first meaning search that finds them missing."""

    def __init__(self, index: Index, embedder=None):
        import numpy as np  # here, not at the top: text search never loads numpy

        self.index = index
        self._embedder = embedder
        self._cache_key: tuple | None = None
        self._ids: list[str] = []
        self._matrix = np.zeros((0, 384), dtype=np.float32)

    @property
    def embedder(self):
        if self._embedder is None:
            from compass.ledger.embed import embedder

            self._embedder = embedder()
        return self._embedder

    def missing(self) -> list[str]:
        return self.index.runs_without_embedding()

    def update(self, batch: int = 64) -> int:
        missing = self.missing()
        if missing:
            print(f"embedding {len(missing)} run(s) recorded without one (once)", file=sys.stderr)
        for start in range(0, len(missing), batch):
            rows = self.index.runs_by_ids(missing[start:start + batch])
            ids = list(rows)
            texts = [meaning_text(r.stage, r.name, r.note, r.summary, r.config, r.metrics) for r in (rows[i] for i in ids)]
            vectors = self.embedder.passages(texts)
            self.index.put_embeddings([(r, text_sha(t), v.tobytes()) for r, t, v in zip(ids, texts, vectors)])
        return len(missing)

    def matrix(self):
        """(run ids, unit-length float32 matrix, one row each)."""
        import numpy as np

        key = self.index.embeddings_version()
        if key != self._cache_key:
            rows = self.index.embeddings()
            self._ids = [r[0] for r in rows]
            self._matrix = (np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), -1)
                            if rows else np.zeros((0, 384), dtype=np.float32))
            self._cache_key = key
        return self._ids, self._matrix

    def hits(self, query: str, allowed: set[str] | None = None) -> list[tuple[str, float]]:
        import numpy as np

        self.update()
        ids, matrix = self.matrix()
        if not ids:
            return []
        scores = matrix @ self.embedder.query(query)
        if allowed is not None:
            scores = np.where(np.fromiter((r in allowed for r in ids), dtype=bool, count=len(ids)), scores, -1.0)
        order = np.argsort(-scores)[:MEANING_TOP]
        return [(ids[i], float(scores[i])) for i in order if scores[i] >= MEANING_MIN]


def _fact_node(fact: Fact):
    """The where-node of a fact: over each full key it names (OR); a metric given with decimals as the
    interval that rounds to it."""
    prefixes = [f"{stage}." for stage in fact.stages] or [""]
    items = []
    for key, prefix in ((k, p) for k in fact.keys for p in prefixes):
        name = prefix + key
        if fact.decimals is not None and isinstance(fact.value, float):
            half = 0.5 * 10 ** -fact.decimals
            items.append(BoolOp("and", (Cmp(name, ">=", fact.value - half), Cmp(name, "<", fact.value + half))))
        else:
            items.append(Cmp(name, fact.op, fact.value))
    return items[0] if len(items) == 1 else BoolOp("or", tuple(items))


def search(index: Index, query: str, *, where: str | None = None, mode: str = "all", limit: int = 10,
           meaning: MeaningIndex | None = None) -> list[Hit]:
    """Runs matching `query` and `where` (figures), best first, each with why. The query is read by
    compass.ledger.understand: stage words filter, facts match typed figures (through lineage as --where),
    a superlative ranks by its metric, the other words match whole words, and (mode all/meaning) the query's
    meaning is compared with every run's embedded description. Ranking: facts met, then the superlative's
    metric, then words and meaning fused by reciprocal rank."""
    if mode not in ("all", "text", "meaning"):
        raise CompassError(f"search mode must be all, text or meaning, got {mode!r}")
    query = query.strip()
    if not query and not where:
        raise CompassError("search needs words to look for, a --where filter, or both")
    from compass.ledger.understand import Plan, understand

    plan = understand(index, query) if query else Plan()
    allowed = where_run_ids(index, where) if where else None
    if plan.stage:
        of_stage = index.run_ids_of_stages([plan.stage])
        allowed = of_stage if allowed is None else allowed & of_stage
    filter_sql, filter_params = "", ()
    if where or plan.stage:
        parts, params = [], []
        if where:
            compiled, p = filter_sql_of(parse_where(where))
            parts.append(f"({compiled})")
            params += p
        if plan.stage:
            parts.append("r.stage = ?")
            params.append(plan.stage)
        filter_sql, filter_params = " AND " + " AND ".join(parts), tuple(params)

    why: dict[str, list[str]] = {}
    facts_met: dict[str, int] = {}
    for fact in plan.facts:
        node = _fact_node(fact)
        ids = index.where_run_ids(node)
        if allowed is not None:
            ids &= allowed
        for run_id in ids:
            facts_met[run_id] = facts_met.get(run_id, 0) + 1
            owner = fact.stage or ("/".join(fact.stages) if fact.stages else None)
            why.setdefault(run_id, []).append(f"fact {fact}" + (f" (of its {owner} ancestor)" if owner and owner != plan.stage else ""))

    fused: dict[str, float] = {}
    if plan.words and mode in ("all", "text"):
        ranked = word_hits(index, plan.words, filter_sql, filter_params)
        shown = ranked[:max(limit, 10) * 3]
        texts = index.fulltext_rows([r for r, *_ in shown], rowids={r: rowid for r, _, _, rowid in shown})
        for rank, (run_id, _, count, _) in enumerate(ranked):
            # a run with more of the words ranks above one with fewer, whatever bm25 says
            fused[run_id] = fused.get(run_id, 0.0) + count + 1.0 / (RRF_K + rank + 1)
            if run_id in texts:
                why.setdefault(run_id, []).append(f"words in {word_context(texts[run_id], plan.words)}")
        unmatched = [w for w in plan.words if not any(c for _, _, c, _ in ranked)] if not ranked else []
        for run_id in substring_hits(index, unmatched, filter_sql, filter_params):
            fused[run_id] = fused.get(run_id, 0.0) + 0.5
            why.setdefault(run_id, []).append("text contains " + ", ".join(unmatched))
    if query and mode in ("all", "meaning") and (plan.words or mode == "meaning"):
        meaning = meaning or MeaningIndex(index)
        for rank, (run_id, cosine) in enumerate(meaning.hits(plan.meaning_text, allowed)):
            fused[run_id] = fused.get(run_id, 0.0) + 1.0 / (RRF_K + rank + 1)
            why.setdefault(run_id, []).append(f"meaning: cosine {cosine:.2f}")

    ranking_value: dict[str, float] = {}
    if plan.superlative and plan.metric:
        pool = allowed
        if plan.facts:
            most = max(facts_met.values(), default=0)
            pool = {r for r, n in facts_met.items() if n == most} if most else pool
        if plan.words and fused:
            top = max(fused.values())
            matched = {r for r, v in fused.items() if v >= int(top)}  # the runs with the most words
            pool = matched if pool is None else (pool & matched or pool)
        values = index.figure_numbers(plan.metric, pool)
        ascending = {"highest": False, "lowest": True, "best": lower_is_better(plan.metric),
                     "worst": not lower_is_better(plan.metric)}[plan.superlative]
        ordered = sorted(values.items(), key=lambda item: item[1], reverse=not ascending)
        for position, (run_id, value) in enumerate(ordered):
            ranking_value[run_id] = len(ordered) - position
            direction = "lower" if ascending else "higher"
            why.setdefault(run_id, []).append(f"{plan.superlative} {plan.metric}: {format_number(value)} ({direction} first)")

    candidates = set(facts_met) | set(fused) | set(ranking_value)
    if not query or (not candidates and not plan.words and not plan.facts and not plan.superlative):
        candidates |= set(allowed or ())  # stage words or --where alone: every run they allow
    if allowed is not None:
        candidates &= allowed
    order = sorted(candidates, key=lambda r: (-facts_met.get(r, 0), -ranking_value.get(r, 0), -fused.get(r, 0.0)))
    rows = index.runs_by_ids(order[: max(limit, 0) * 3 + limit])
    if not (plan.facts or plan.words or plan.superlative):  # figures or a stage only: newest first
        order = sorted((r for r in order if r in rows), key=lambda r: rows[r].recorded_at, reverse=True)
    hits = [Hit(rows[r], facts_met.get(r, 0) + ranking_value.get(r, 0) + fused.get(r, 0.0), why.get(r, [])) for r in order if r in rows][:limit]
    for hit in hits:
        if plan.stage:
            hit.why.insert(0, f"stage {plan.stage}")
        if where:
            hit.why.append("figures: " + ", ".join(where_reasons(index, hit.run.run_id, where)))
    return hits


# --- leaderboard -----------------------------------------------------------------------------------------


# the data-recipe columns of a leaderboard, after rank/run/name/stage/METRIC
RECIPE_COLUMNS = ("sources", "training pairs", "held-out pairs", "seeds", "hparams")
LEADERBOARD_COLUMNS = ("rank", "run", "name", "stage", "METRIC", *RECIPE_COLUMNS, "commit", "recorded")


def leaderboard_columns(board: list[dict], metric: str, *, extra: tuple[str, ...] = ()) -> list[str]:
    """The columns worth showing: a recipe column only when some row has a value in it."""
    columns = [metric if c == "METRIC" else c for c in LEADERBOARD_COLUMNS]
    return [c for c in columns if c not in RECIPE_COLUMNS or any(row[c] for row in board)] + list(extra)


def leaderboard(index: Index, metric: str, *, where: str | None = None, lower_is_better: bool | None = None,
                limit: int | None = None, run_ids: set[str] | None = None) -> list[dict]:
    """Runs with figure `metric` (their own; `STAGE.KEY` for the run's own KEY when it is of that kind),
    best first in the metric's direction (compass.ledger.metric_direction, unless `lower_is_better` says),
    with the data recipe each was made from."""
    if lower_is_better is None:
        lower_is_better = metric_lower_is_better(metric)
    rows = index.figure_values(metric)
    head, dot, rest = metric.partition(".")
    if not rows and dot:
        rows = index.figure_values(rest, head)
    if not rows:
        import difflib

        keys = index.numeric_metric_keys()
        close = difflib.get_close_matches(metric, keys, n=5, cutoff=0.4)
        hint = f"; close names: {', '.join(close)}" if close else (f"; metrics recorded: {', '.join(keys[:10])}" if keys else "")
        raise CompassError(f"no run has a numeric figure {metric!r}{hint}")
    if where:
        allowed = where_run_ids(index, where)
        rows = [r for r in rows if r[0] in allowed]
    if run_ids is not None:
        rows = [r for r in rows if r[0] in run_ids]
    rows.sort(key=lambda r: r[1], reverse=not lower_is_better)
    if limit is not None:
        rows = rows[:limit]
    runs = index.runs_by_ids([r[0] for r in rows])
    board = []
    for rank, (run_id, value) in enumerate(rows, 1):
        run = runs[run_id]
        board.append({
            "rank": rank, "run": run.short, "name": run.name, "stage": run.stage, metric: value,
            **{column: run.summary.get(column, "") for column in RECIPE_COLUMNS}, "pairs": run.summary["pairs"],
            "direction": "lower is better" if lower_is_better else "higher is better",
            "commit": (run.code_commit or "")[:8] + ("+dirty" if run.code_dirty else ""),
            "recorded": run.recorded_at[:19].replace("T", " "), "run_id": run.run_id,
        })
    return board


def headline_metrics(run: RunRow, count: int = 3) -> str:
    """A few of a run's numeric metrics, for lists."""
    from compass.ledger.flat import flatten

    parts = []
    for key, value in flatten(run.metrics).items():
        number = as_number(value)
        if number is not None and not isinstance(value, bool):
            parts.append(f"{key}={format_number(number)}")
        if len(parts) == count:
            break
    return " ".join(parts)
