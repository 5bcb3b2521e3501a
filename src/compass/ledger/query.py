"""Finding runs: search by words (FTS5 trigram), by meaning (MiniLM embeddings), by figures (--where),
fused into one ranked list with the reason each run matched; and the leaderboard."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from compass.errors import CompassError
from compass.ledger.flat import as_number, format_number
from compass.ledger.index import Index, RunRow
from compass.ledger.index import where_sql as filter_sql
from compass.ledger.search_text import meaning_text, text_sha
from compass.ledger.where import comparisons, parse_where

RRF_K = 60             # reciprocal rank fusion: score = sum over lists of 1 / (RRF_K + rank)
MEANING_MIN = 0.25     # cosine below this is no match (MiniLM: unrelated texts score about 0 to 0.2)
MEANING_TOP = 50
TEXT_TOP = 200
CJK = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uf900-\ufaff\uff66-\uff9f]")


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


def fts_query(query: str) -> tuple[str | None, list[str], list[str]]:
    """An FTS5 MATCH string (OR of quoted trigram phrases) for the words of >= 3 characters; the shorter
    words that contain Japanese are matched by substring instead; other short words are ignored."""
    words = [w for w in re.split(r"\s+", query.strip()) if w]
    long_words = [w for w in words if len(w) >= 3]
    short_cjk = [w for w in words if len(w) < 3 and CJK.search(w)]
    match = " OR ".join('"' + w.replace('"', '""') + '"' for w in long_words) or None
    return match, long_words, short_cjk


def text_hits(index: Index, query: str, where_sql: str = "", where_params: tuple = ()) -> list[tuple[str, float, str]]:
    """(run id, bm25 score (lower is better), where the words are) for words in names, notes, configs, metrics."""
    match, long_words, short_cjk = fts_query(query)
    hits: dict[str, float] = {}
    if match:
        # runs with every word first; runs with only some of them after, while there is room (bm25 over
        # every run that has one common word costs more than the rest of the search)
        phrases = ['"' + w.replace('"', '""') + '"' for w in long_words]
        passes = [(" AND ".join(phrases), 0.0)] + ([(match, 1000.0)] if len(phrases) > 1 else [])
        for expression, penalty in passes:  # bm25 is negative, a few units: +1000 ranks after every full match
            if len(hits) >= TEXT_TOP:
                break
            rows = index.fulltext_match(expression, where_sql, where_params, limit=TEXT_TOP)
            for run_id, score in rows:
                if run_id not in hits:
                    hits[run_id] = score + penalty
    for word in short_cjk:  # trigram cannot index 1-2 character words: substring scan (fine below ~100k runs)
        for run_id in index.fulltext_containing(word, where_sql, where_params, limit=TEXT_TOP):
            hits.setdefault(run_id, 0.0)
    ranked = sorted(hits.items(), key=lambda item: item[1])
    texts = index.fulltext_rows([r for r, _ in ranked])
    return [(run_id, score, word_context(texts[run_id], long_words + short_cjk)) for run_id, score in ranked]


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
    """Embeddings of every run's description, computed lazily (the first meaning search after new runs
    embeds them) and kept in index.db; the matrix is cached in the process until the table changes."""

    def __init__(self, index: Index, embedder=None):
        self.index = index
        self._embedder = embedder
        self._cache_key: tuple | None = None
        self._ids: list[str] = []
        self._matrix = np.zeros((0, 384), dtype=np.float32)

    @property
    def embedder(self):
        if self._embedder is None:
            from compass.ledger.embed import Embedder

            self._embedder = Embedder()
        return self._embedder

    def missing(self) -> list[str]:
        return self.index.runs_without_embedding()

    def update(self, batch: int = 256) -> int:
        missing = self.missing()
        for start in range(0, len(missing), batch):
            rows = self.index.runs_by_ids(missing[start:start + batch])
            ids = list(rows)
            texts = [meaning_text(rows[r]) for r in ids]
            vectors = self.embedder.encode(texts)
            self.index.put_embeddings([(r, text_sha(t), v.tobytes()) for r, t, v in zip(ids, texts, vectors)])
        return len(missing)

    def matrix(self) -> tuple[list[str], np.ndarray]:
        key = self.index.embeddings_version()
        if key != self._cache_key:
            rows = self.index.embeddings()
            self._ids = [r[0] for r in rows]
            self._matrix = (np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), -1)
                            if rows else np.zeros((0, 384), dtype=np.float32))
            self._cache_key = key
        return self._ids, self._matrix

    def hits(self, query: str, allowed: set[str] | None = None) -> list[tuple[str, float]]:
        self.update()
        ids, matrix = self.matrix()
        if not ids:
            return []
        scores = matrix @ self.embedder.encode([query])[0]
        if allowed is not None:
            scores = np.where(np.fromiter((r in allowed for r in ids), dtype=bool, count=len(ids)), scores, -1.0)
        order = np.argsort(-scores)[:MEANING_TOP]
        return [(ids[i], float(scores[i])) for i in order if scores[i] >= MEANING_MIN]


def search(index: Index, query: str, *, where: str | None = None, mode: str = "all", limit: int = 10,
           meaning: MeaningIndex | None = None) -> list[Hit]:
    """Runs matching `query` (words and/or meaning) and `where` (figures), best first, each with why."""
    if mode not in ("all", "text", "meaning"):
        raise CompassError(f"search mode must be all, text or meaning, got {mode!r}")
    query = query.strip()
    if not query and not where:
        raise CompassError("search needs words to look for, a --where filter, or both")
    allowed = where_run_ids(index, where) if where else None
    where_sql, where_params = "", ()
    if where:
        compiled, params = filter_sql(parse_where(where))
        where_sql, where_params = f" AND ({compiled})", tuple(params)
    scores: dict[str, float] = {}
    why: dict[str, list[str]] = {}

    if query and mode in ("all", "text"):
        ranked = text_hits(index, query, where_sql, where_params)
        for rank, (run_id, _, snippet) in enumerate(ranked):
            scores[run_id] = scores.get(run_id, 0.0) + 1.0 / (RRF_K + rank + 1)
            why.setdefault(run_id, []).append(f"words in {snippet}")
    if query and mode in ("all", "meaning"):
        meaning = meaning or MeaningIndex(index)
        ranked_m = meaning.hits(query, allowed)
        for rank, (run_id, cosine) in enumerate(ranked_m):
            scores[run_id] = scores.get(run_id, 0.0) + 1.0 / (RRF_K + rank + 1)
            why.setdefault(run_id, []).append(f"meaning: cosine {cosine:.2f}")
    if not query:
        for run_id in allowed or ():
            scores[run_id] = 0.0

    best = sorted(scores, key=lambda r: -scores[r])
    rows = index.runs_by_ids(best[: max(limit, 0) * 3 if not query else len(best)])
    hits = [Hit(rows[r], scores[r], why.get(r, [])) for r in best if r in rows]
    if not query:  # figures only: newest first
        hits.sort(key=lambda h: h.run.recorded_at, reverse=True)
    hits = hits[:limit]
    if where:
        for hit in hits:
            hit.why.append("figures: " + ", ".join(where_reasons(index, hit.run.run_id, where)))
    return hits


# --- leaderboard -----------------------------------------------------------------------------------------


LEADERBOARD_COLUMNS = ("rank", "run", "name", "stage", "METRIC", "sources", "pairs", "hparams", "commit", "recorded")


def leaderboard(index: Index, metric: str, *, where: str | None = None, lower_is_better: bool = False,
                limit: int | None = None, run_ids: set[str] | None = None) -> list[dict]:
    """Runs with figure `metric` (their own; `STAGE.KEY` for the run's own KEY when it is of that kind),
    best first, with the data recipe each was made from."""
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
            "sources": run.summary["sources"], "pairs": run.summary["pairs"], "hparams": run.summary["hparams"],
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
