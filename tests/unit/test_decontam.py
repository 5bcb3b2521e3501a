"""Decontamination: the MGSM-ja <-> GSM8K test mapping, n-gram overlap (English and Japanese), the stage's report."""
import json
from pathlib import Path

import pytest

from compass.data.decontam import decontaminate, ngrams, tokens
from compass.errors import CompassError
from compass.io import read_jsonl, write_jsonl
from compass.records import Problem
from compass.runner import execute_stage
from compass.data.sources import load_source
from compass.stages import decontaminate as stage

FIX = Path(__file__).parents[1] / "fixtures" / "sources"


def P(id_, question, **meta):
    return Problem(id=id_, source=id_.split("/")[0], question=question, reference_answer="1", meta=meta)


def test_tokens():
    assert tokens("Ken paid $1,200 for 3 pens!") == ["ken", "paid", "$", "1200", "for", "3", "pens"]
    assert tokens("りんごを３個買いました。") == ["り", "ん", "ご", "を", "3", "個", "買", "い", "ま", "し", "た"]
    assert tokens("Calculate ( 4 + -9 ) * 2.") == ["calculate", "(", "4", "+", "-", "9", ")", "*", "2"]
    assert ngrams("a b c", 8) == {("a", "b", "c")}
    assert ngrams("a b c d", 3) == {("a", "b", "c"), ("b", "c", "d")}


def test_mgsm_ja_is_caught_through_the_gsm8k_test_index():
    """MGSM-ja test item k is GSM8K test item k in Japanese: distilling it and scoring GSM8K contaminates item k."""
    train = load_source("mgsm_ja", str(FIX / "mgsm_ja"), "test") + load_source("gsm8k", str(FIX / "gsm8k"), "train")
    eval_set = load_source("gsm8k", str(FIX / "gsm8k"), "test", limit=2)  # GSM8K test items 0 and 1
    kept, dropped = decontaminate(train, eval_set)
    assert [(p.id, m.eval_id, m.method, m.score) for p, m, _ in dropped] == [
        ("mgsm_ja/test/0", "gsm8k/test/0", "link:gsm8k_test_index", 1.0),
        ("mgsm_ja/test/1", "gsm8k/test/1", "link:gsm8k_test_index", 1.0),
    ]
    assert [p.id for p in kept] == ["mgsm_ja/test/2", "mgsm_ja/test/3", "gsm8k/train/0", "gsm8k/train/1"]
    # the same the other way round: GSM8K test items in training, MGSM-ja as the evaluation set
    kept, dropped = decontaminate(load_source("gsm8k", str(FIX / "gsm8k"), "test"), load_source("mgsm_ja", str(FIX / "mgsm_ja"), "test", limit=3))
    assert [p.id for p, _, _ in dropped] == ["gsm8k/test/0", "gsm8k/test/1", "gsm8k/test/2"]
    # without the mapping, no text overlap sees a translation: this is why the index is recorded
    kept, dropped = decontaminate(train, eval_set, link_keys=[])
    assert dropped == []


def test_mgsm_train_exemplars_carry_no_test_index():
    train = load_source("mgsm_ja", str(FIX / "mgsm_ja"), "train")
    kept, dropped = decontaminate(train, load_source("gsm8k", str(FIX / "gsm8k"), "test"))
    assert dropped == [] and len(kept) == 1


def test_english_source_text_of_a_translation_is_matched():
    gsm = load_source("gsm8k", str(FIX / "gsm8k"), "test")
    translated = P("mgsm_ja/custom/0", "トムはりんごが8個ずつ入った箱を3箱持っています。", question_en=gsm[0].question)
    kept, dropped = decontaminate([translated], gsm, link_keys=[])
    assert [(p.id, m.eval_id, m.method, m.score) for p, m, _ in dropped] == [("mgsm_ja/custom/0", "gsm8k/test/0", "ngram", 1.0)]


EVAL = [
    P("eval/0", "A farmer has 1,200 sheep and sells 350 of them at the market on Monday. How many sheep are left?"),
    P("eval/1", "Calculate 5 + 3."),
    P("eval/2", "花子さんは1個120円のりんごを5個買いました。全部でいくら払いましたか？"),
]


@pytest.mark.parametrize(
    ("question", "eval_id", "score"),
    [
        # a verbatim copy with a preface and different spacing/case/commas: the whole eval item is inside
        ("Read carefully. a farmer has 1200 sheep and sells 350 of them at the market on monday. How many sheep are left?", "eval/0", 1.0),
        # one word changed: most 5-grams survive
        ("A farmer has 1,200 sheep and sells 350 of them at the fair on Monday. How many sheep are left?", "eval/0", 0.6875),
        # the same template with other numbers (a GSM-symbolic style variant) sits exactly at the default threshold
        ("A farmer has 900 sheep and sells 150 of them at the market on Monday. How many sheep are left?", "eval/0", 0.5),
        ("Calculate 5 + 3.", "eval/1", 1.0),
        ("花子さんは1個120円のりんごを5個買いました。全部でいくらですか？", "eval/2", 0.884615),
    ],
)
def test_ngram_scores(question, eval_id, score):
    kept, dropped = decontaminate([P("train/0", question)], EVAL)  # defaults: 5-grams, 0.5
    assert [(m.eval_id, m.method, m.score) for _, m, _ in dropped] == [(eval_id, "ngram", score)]


@pytest.mark.parametrize(
    "question",
    [
        "A baker has 1,200 eggs and uses 350 of them for cakes on Monday. How many eggs remain?",
        "Calculate 5 - 3.",  # short texts match only when identical
        "Calculate 5 + 3 + 1.",
        "太郎さんは1本80円の鉛筆を3本買いました。おつりはいくらですか？",
    ],
)
def test_different_problems_are_kept(question):
    kept, dropped = decontaminate([P("train/0", question)], EVAL)
    assert dropped == [] and [p.id for p in kept] == ["train/0"]


def test_threshold_and_arguments_are_checked():
    with pytest.raises(CompassError, match="threshold must be in"):
        decontaminate([], EVAL, threshold=0)
    with pytest.raises(CompassError, match="evaluation set is empty"):
        decontaminate([], [])
    with pytest.raises(CompassError, match="link key value must be an int or a string"):
        decontaminate([P("t/0", "q", gsm8k_test_index=[1])], [P("e/0", "q", gsm8k_test_index=1)])


# --- the stage ----------------------------------------------------------------------------------------


def _inputs(tmp_path, train, eval_set):
    write_jsonl(tmp_path / "train.jsonl", train)
    write_jsonl(tmp_path / "eval.jsonl", eval_set)
    return {"problems": tmp_path / "train.jsonl", "eval": tmp_path / "eval.jsonl"}


def test_stage_writes_kept_problems_and_the_report(tmp_path):
    train = load_source("mgsm_ja", str(FIX / "mgsm_ja"), "test") + load_source("gsm8k", str(FIX / "gsm8k"), "train")
    train.append(P("copy/0", EVAL[0].question))
    inputs = _inputs(tmp_path, train, load_source("gsm8k", str(FIX / "gsm8k"), "test", limit=1) + EVAL)
    result = execute_stage("decontaminate", stage.Config(), inputs, tmp_path / "out")
    report = [json.loads(line) for line in (tmp_path / "out" / "dropped.jsonl").read_text().splitlines()]
    assert report == [
        {"id": "mgsm_ja/test/0", "source": "mgsm_ja", "question": train[0].question, "eval_id": "gsm8k/test/0",
         "eval_source": "gsm8k", "method": "link:gsm8k_test_index", "score": 1.0, "eval_matches": 1},
        {"id": "copy/0", "source": "copy", "question": EVAL[0].question, "eval_id": "eval/0",
         "eval_source": "eval", "method": "ngram", "score": 1.0, "eval_matches": 1},
    ]
    kept = read_jsonl(tmp_path / "out" / "problems.jsonl", Problem)
    assert [p.id for p in kept] == ["mgsm_ja/test/1", "mgsm_ja/test/2", "mgsm_ja/test/3", "gsm8k/train/0", "gsm8k/train/1"]
    assert result.manifest.metrics == {
        "problems_in": 7, "eval_items": 4, "kept": 5, "dropped": 2, "drop_rate": 0.285714,
        "dropped_by_method": {"link:gsm8k_test_index": 1, "ngram": 1}, "dropped_by_source": {"copy": 1, "mgsm_ja": 1},
    }


def test_stage_fails_past_max_drop_rate_and_writes_nothing(tmp_path):
    inputs = _inputs(tmp_path, EVAL, EVAL)
    with pytest.raises(CompassError, match=r"3 of 3 problems \(100%\) overlap the evaluation sets, more than max_drop_rate 50%"):
        execute_stage("decontaminate", stage.Config(), inputs, tmp_path / "out")
    assert not (tmp_path / "out" / "problems.jsonl").exists() and not (tmp_path / "out" / "manifest.json").exists()


def test_demo_sets_train_and_held_out_eval_from_disjoint_seeds(tmp_path):
    """The tiny recipe's shape: reasoning-gym training problems, a held-out eval set from another seed."""
    train = load_source("reasoning_gym", "basic_arithmetic", limit=40, seed=42) + load_source("reasoning_gym", "gsm_symbolic", limit=40, seed=42)
    eval_set = load_source("reasoning_gym", "basic_arithmetic", limit=10, seed=1000) + load_source("reasoning_gym", "gsm_symbolic", limit=10, seed=1000)
    kept, dropped = decontaminate(train, eval_set)
    eval_questions = {p.question for p in eval_set}
    assert not eval_questions & {p.question for p in kept}
    assert len(kept) + len(dropped) == 80 and len(dropped) < 8
