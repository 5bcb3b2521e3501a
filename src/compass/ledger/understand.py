"""Query understanding: a query as a researcher remembers a run, read into parts search can use exactly.

    "the dpo run with the best reward accuracy"        -> stage dpo; rank by eval_after.reward_accuracy, higher first
    "eval of the model trained on pairs with seed 7"   -> stage eval; fact pairs.seed = 7 (an ancestor's, as --where)
    "tamper_answer=0 top_k 16"                         -> facts weights.tamper_answer = 0, top_k = 16 (typed, exact)
    "シード7のペアで学習したモデルの評価"                 -> the same as the second, in Japanese
    "有価証券報告書で試したノート"                        -> words 有価, 証券, 報告, 書, 試す, ノート (morphemes)

Parts:
  facts        KEY VALUE, KEY=VALUE, KEY<VALUE ... where KEY is a figure some run has (full key or its last
               part, or a figure word such as 学習率/lr): config values match exactly and typed (0 is not 0.33;
               a list matches by element), a metric given with decimals matches at that precision;
               a fact after a stage word ("pairs with seed 7") is that stage's, reached through lineage
  stage        the kind of run asked for: the first stage word (in Japanese, head-final: the last)
  superlative  best/worst/highest/lowest (一番高い, 最小, ...) with the figure words near it: rank by that
               metric, in its direction (compass.ledger.metric_direction) for best/worst
  words        the rest, stopwords of both languages dropped, Japanese segmented (compass.ledger.text_terms)
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from compass.ledger.index import Index
from compass.ledger.text_terms import (COMPARISONS, FIGURE_WORDS, STAGE_WORDS, SUPERLATIVES, normalize, phrase_hits,
                                       words)

NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?"
KEY_CHARS = r"[a-z_][a-z0-9_./\-]*[a-z0-9_]|[a-z_]"
# KEY [op or particle] VALUE, the key and value as tokens of the normalised query
FACT = re.compile(rf"(?P<key>{KEY_CHARS})\s*(?P<op><=|>=|!=|==|=|<|>|:|が|は|を|の)?\s*(?P<value>{NUMBER}|true|false|[a-z][a-z0-9_.\-]*)(?![a-z0-9_.\-])")
KEY_START = re.compile(r"(?<![a-z0-9_./\-])[a-z_]")
JA_PARTICLES = {"が", "は", "を", "の", ":", None, ""}


@dataclass
class Fact:
    key: str            # the figure name as written for where: 'seed', 'weights.tamper_answer', 'pairs.seed'
    keys: list[str]     # the full keys it stands for (a last part may name several)
    op: str
    value: float | str
    decimals: int | None  # a metric given as 0.85 matches 0.8523 (2 decimals); None: exact
    stage: str | None   # the stage kind whose figure it is, when not the run's own
    text: str           # as written, for the reasons
    stages: list[str] = field(default_factory=list)  # when no stage word says whose: every ancestor kind that has the key

    def __str__(self) -> str:
        return self.text


@dataclass
class Plan:
    stage: str | None = None
    stages_mentioned: list[str] = field(default_factory=list)
    facts: list[Fact] = field(default_factory=list)
    superlative: str | None = None          # best / worst / highest / lowest
    metric: str | None = None               # the metric it ranks by
    metric_words: list[str] = field(default_factory=list)
    words: list[str] = field(default_factory=list)
    meaning_text: str = ""


class Vocabulary:
    """What the ledger's runs have: figure keys by stage, their last parts, numeric metrics."""

    def __init__(self, index: Index):
        self.table = index.figure_key_table()
        self.stages = sorted({s for s, *_ in self.table})
        self.keys_by_stage: dict[str, set[str]] = {}
        self.kind: dict[str, str] = {}
        self.numeric_metrics: set[str] = set()
        for stage, key, kind, numeric in self.table:
            self.keys_by_stage.setdefault(stage, set()).add(key)
            self.kind.setdefault(key, kind)
            if kind == "metric" and numeric:
                self.numeric_metrics.add(key)
        self.all_keys = {k for keys in self.keys_by_stage.values() for k in keys}
        self.by_last: dict[str, set[str]] = {}
        for key in self.all_keys:
            self.by_last.setdefault(key.lower(), set()).add(key)
            last = re.split(r"[./]", key)[-1].lower()
            self.by_last.setdefault(last, set()).add(key)

    def keys_for(self, word: str) -> set[str]:
        word = FIGURE_WORDS.get(word, word)
        return set(self.by_last.get(word.lower(), set()))


def _decimals(text: str) -> int | None:
    if "e" in text.lower() or "." not in text:
        return None
    return len(text.split(".")[1])


def _value(raw: str) -> float | str:
    if raw in ("true", "false"):
        return 1.0 if raw == "true" else 0.0
    try:
        return float(raw)
    except ValueError:
        return raw


def understand(index: Index, query: str, vocabulary: Vocabulary | None = None) -> Plan:
    vocab = vocabulary or Vocabulary(index)
    plan = Plan(meaning_text=query.strip())
    text = normalize(query)
    japanese = any("\u3040" <= c <= "\u9fff" for c in text)
    consumed = [False] * len(text)

    def take(start: int, end: int) -> None:
        for i in range(start, end):
            consumed[i] = True

    # Japanese figure words become their English key with spaces around ("シード7" -> " seed 7") for the facts;
    # one that no fact takes stays a word as written (ベータを上げた: a note says ベータ, not beta)
    replaced: list[tuple[str, int, int]] = []  # (original, start, end) in the rewritten text
    for start, end, english in reversed(phrase_hits(text, {k: v for k, v in FIGURE_WORDS.items() if re.search(r"[^\x00-\x7f]", k)})):
        original = text[start:end]
        text = text[:start] + f" {english} " + text[end:]
        shift = len(english) + 2 - (end - start)
        replaced = [(o, s + shift, e + shift) for o, s, e in replaced]
        replaced.append((original, start + 1, start + 1 + len(english)))
    consumed = [False] * len(text)

    stage_table = dict(STAGE_WORDS)
    stage_table.update({s: s for s in vocab.stages})
    stage_hits = [(s, e, st) for s, e, st in phrase_hits(text, stage_table, heads_only=True) if st in vocab.stages]
    for s, e, _ in stage_hits:
        take(s, e)
    plan.stages_mentioned = [st for _, _, st in stage_hits]
    if stage_hits:
        plan.stage = stage_hits[-1][2] if japanese else stage_hits[0][2]

    superlatives = phrase_hits(text, SUPERLATIVES)
    for s, e, _ in superlatives:
        take(s, e)

    # facts: KEY [op] VALUE with a KEY some run has
    comparisons = phrase_hits(text, {k: v for k, v in COMPARISONS.items() if v})
    for start in KEY_START.finditer(text):
        match = FACT.match(text, start.start())
        if match is None or any(consumed[match.start():match.end()]):
            continue
        keys = vocab.keys_for(match["key"])
        raw = match["value"]
        value = _value(raw)
        if not keys or (isinstance(value, str) and match["op"] in ("<", ">", "<=", ">=")):
            continue
        if isinstance(value, str) and not _text_value_exists(index, keys, value):
            continue  # "loss_type sigmoid" is a fact only when some run has that text; else they are words
        op = match["op"] if match["op"] not in JA_PARTICLES else "="
        op = "=" if op == "==" else op
        between = [c for c in comparisons if match.start("key") < c[0] < match.start("value")]
        if between and op == "=":
            op = between[0][2]
        stage = _owner_stage(plan, vocab, keys, stage_hits, match.start(), japanese)
        owners = [stage] if stage else []
        if stage == AMBIGUOUS:
            owners = [st for st in vocab.stages if st != plan.stage and keys & vocab.keys_by_stage.get(st, set())]
            stage = owners[0] if len(owners) == 1 else None
        metric = all(vocab.kind.get(k) == "metric" for k in keys)
        decimals = _decimals(raw) if metric and isinstance(value, float) and op == "=" else None
        name = match["key"] if len(keys) > 1 else next(iter(keys))
        plan.facts.append(Fact(name if stage is None else f"{stage}.{name}", sorted(keys), op, value, decimals, stage,
                               match.group(0).strip(), owners))
        take(match.start(), match.end())

    # the metric a superlative ranks by: the numeric metric whose words the query names most
    if superlatives:
        plan.superlative = superlatives[0][2]
        rest = [w for w in words(_unconsumed(text, consumed)) if w not in plan.stages_mentioned]
        metric, used = _pick_metric(vocab, rest, plan.stage)
        plan.metric = metric
        plan.metric_words = used
        for word in used:
            for m in re.finditer(rf"(?<![A-Za-z0-9_\-]){re.escape(word)}(?![A-Za-z0-9_\-])", text):
                take(m.start(), m.end())

    # the words: the query's own words (segmented as written, so particles stay particles) less those that
    # went into facts, stage words, superlatives and the ranked metric
    used: set[str] = set()
    for i, (start, end) in enumerate(_runs(consumed)):
        piece = text[start:end]
        used |= set(words(piece)) | {piece.strip()}
        for original, o_start, o_end in replaced:
            if o_start < end and start < o_end:
                used |= set(words(original)) | {original}
    plan.words = [w for w in words(query) if w not in used and w not in STAGE_WORDS and w not in SUPERLATIVES
                  and w not in COMPARISONS]
    return plan


def _runs(flags: list[bool]) -> list[tuple[int, int]]:
    """(start, end) of each stretch of True."""
    out, start = [], None
    for i, flag in enumerate(flags + [False]):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            out.append((start, i))
            start = None
    return out


def _unconsumed(text: str, consumed: list[bool]) -> str:
    return "".join(c if not consumed[i] else " " for i, c in enumerate(text))


def _text_value_exists(index: Index, keys: set[str], value: str) -> bool:
    return any(index.figure_text_exists(key, value) for key in keys)


def _owner_stage(plan: Plan, vocab: Vocabulary, keys: set[str], stage_hits, position: int, japanese: bool) -> str | None:
    """The stage whose figure a fact is: the nearest stage word before it (after it, in Japanese) when that is
    not the stage asked for and has the key; else the run's own, or, when the asked-for stage has no such
    key, the mentioned (else any) stage that has it."""
    ordered = [h for h in stage_hits if (h[0] < position if not japanese else h[0] > position)]
    nearest = (ordered[-1] if not japanese else ordered[0]) if ordered else None
    if nearest and nearest[2] != plan.stage and keys & vocab.keys_by_stage.get(nearest[2], set()):
        return nearest[2]
    if plan.stage is None or keys & vocab.keys_by_stage.get(plan.stage, set()):
        return None
    for stage in plan.stages_mentioned:
        if keys & vocab.keys_by_stage.get(stage, set()):
            return stage
    return AMBIGUOUS  # some ancestor's: any kind that has the key


AMBIGUOUS = "*"


def _pick_metric(vocab: Vocabulary, query_words: list[str], stage: str | None) -> tuple[str | None, list[str]]:
    wanted = {FIGURE_WORDS.get(w, w) for w in query_words}
    wanted |= {w.rstrip("s") for w in wanted}
    candidates = vocab.numeric_metrics
    if stage and vocab.keys_by_stage.get(stage):
        candidates = candidates & vocab.keys_by_stage[stage] or candidates
    best, best_score, used = None, 0.0, []
    for key in sorted(candidates):
        parts = set(re.split(r"[._/\-]+", key.lower()))
        parts |= {p.rstrip("s") for p in parts}
        hit = wanted & parts
        if not hit:
            continue
        # more query words named; then 'after' over 'before' (the result of training); then the shorter name
        score = len(hit) + (0.5 if "after" in parts else 0) - (0.5 if "before" in parts else 0) - len(parts) * 0.01
        if score > best_score:
            best, best_score = key, score
            used = [w for w in query_words if FIGURE_WORDS.get(w, w) in hit or FIGURE_WORDS.get(w, w).rstrip("s") in hit]
    return best, used
