"""Dataset sources from fixture files in each hub schema, reasoning-gym, and the `sources` stage (by sha256)."""
import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from compass.errors import CompassError
from compass.io import read_jsonl, sha256_file
from compass.records import Problem
from compass.runner import execute_stage
from compass.data.sources import SOURCE_NAMES, SOURCES, load_source
from compass.data.sources.base import last_number, number_text
from compass.stages import sources as sources_stage

FIX = Path(__file__).parents[1] / "fixtures" / "sources"

# source, split, (ids, reference answers) of the problems made, skip reasons
CASES = [
    ("gsm8k", "train", ["gsm8k/train/0", "gsm8k/train/1"], ["7", "1200"], {"no '#### <answer>' line": 1}),
    ("gsm8k", "test", [f"gsm8k/test/{i}" for i in range(4)], ["20", "180", "400", "22"], {}),
    ("math", "train", ["math/train/0", "math/train/1"], ["\\frac{5}{6}", "5\\sqrt{2}"], {"no \\boxed{} answer in solution": 1}),
    ("svamp", "train", [f"svamp/train/{i}" for i in range(3)], ["13", "4", "2.4"], {}),
    ("aqua_rat", "train", [f"aqua_rat/train/{i}" for i in range(3)], ["C", "C", "D"], {}),
    ("mathinstruct", "train", ["mathinstruct/train/0", "mathinstruct/train/1", "mathinstruct/train/3"], ["120", "(B)", "\\frac{3}{4}"],
     {"program-of-thought solution (code, no stated answer)": 1}),
    ("mgsm_ja", "test", [f"mgsm_ja/test/{i}" for i in range(4)], ["20", "180", "400", "22"], {}),
    ("mgsm_ja", "train", ["mgsm_ja/train/0"], ["11"], {}),
    ("openr1_math", "train", ["openr1_math/train/0", "openr1_math/train/1"], ["9", "4"], {"no final answer (proof or empty)": 1}),
    ("orca_math", "train", ["orca_math/train/0", "orca_math/train/1"], ["36", "2500"], {"no number in the solution": 1}),
    ("numinamath_cot", "train", ["numinamath_cot/train/0", "numinamath_cot/train/1"], ["81", "\\{-2, 2\\}"],
     {"no \\boxed{} answer in solution": 1}),
    ("openmathreasoning", "cot", ["openmathreasoning/cot/0", "openmathreasoning/cot/1"], ["12", "\\frac{\\pi}{4}"],
     {"no expected_answer (problem_type=converted_proof)": 1}),
]


def test_every_dataset_has_a_fixture_case():
    assert {c[0] for c in CASES} == set(SOURCES)
    assert SOURCE_NAMES[-1] == "reasoning_gym" and len(SOURCE_NAMES) == 11


@pytest.mark.parametrize(("name", "split", "ids", "answers", "skips"), CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_fixture_sources(name, split, ids, answers, skips):
    skipped = Counter()
    problems = load_source(name, str(FIX / name), split, skipped=skipped)
    assert [p.id for p in problems] == ids
    assert [p.reference_answer for p in problems] == answers
    assert dict(skipped) == skips
    for problem in problems:
        assert problem.source == name and problem.question and problem.meta["split"] == split
        assert problem.lang == ("ja" if name == "mgsm_ja" else "en")
        Problem.model_validate(problem.model_dump(mode="json"))  # JSON round trip


def test_gsm8k_record_exactly():
    problem = load_source("gsm8k", str(FIX / "gsm8k" / "test.jsonl"), "test")[2]
    assert problem == Problem(
        id="gsm8k/test/2",
        source="gsm8k",
        question="Sara buys 4 notebooks at 150 yen each and pays with a 1000 yen bill. How much change does she get?",
        reference_answer="400",
        reference_solution="The notebooks cost 4*150=600 yen.\nThe change is 1000-600=400 yen.",
        lang="en",
        meta={"split": "test", "index": 2, "gsm8k_test_index": 2},
    )


def test_schema_specific_fields():
    svamp = load_source("svamp", str(FIX / "svamp"), "train")[0]
    assert svamp.question == "Jack had 8 pens and Mary had 5 pens. How many pens do they have in all?"
    assert svamp.reference_solution == "( 8.0 + 5.0 ) = 13" and svamp.meta["svamp_id"] == "chal-1"
    aqua = load_source("aqua_rat", str(FIX / "aqua_rat"), "train")[0]
    assert aqua.question.endswith("\nAnswer Choices: (A) 40 km/h (B) 45 km/h (C) 50 km/h (D) 55 km/h (E) 60 km/h")
    assert aqua.meta["options"][2] == "C)50 km/h"
    mgsm = load_source("mgsm_ja", str(FIX / "mgsm_ja"), "test")[1]
    assert mgsm.meta["gsm8k_test_index"] == 1 and mgsm.reference_solution is None
    assert load_source("mgsm_ja", str(FIX / "mgsm_ja"), "train")[0].reference_solution.startswith("ステップごとの答え")
    math = load_source("math", str(FIX / "math"), "train")[0]
    assert math.meta == {"split": "train", "index": 0, "level": "Level 1", "type": "Prealgebra"}
    omr = load_source("openmathreasoning", str(FIX / "openmathreasoning"), "cot")[1]
    assert omr.meta["problem_type"] == "has_answer_extracted" and omr.meta["generation_model"] == "QwQ-32B"
    orca = load_source("orca_math", str(FIX / "orca_math"), "train")[1]
    assert orca.meta["answer_from"] == "last_number"


def test_parquet_in_hub_layout_reads_like_jsonl(tmp_path):
    rows = [json.loads(line) for line in (FIX / "svamp" / "train.jsonl").read_text().splitlines()]
    (tmp_path / "data").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "data" / "train-00000-of-00001.parquet")
    from_parquet = load_source("svamp", str(tmp_path), "train")
    assert from_parquet == load_source("svamp", str(FIX / "svamp" / "train.jsonl"), "train")
    with pytest.raises(CompassError, match="no 'test' split files"):
        load_source("svamp", str(tmp_path), "test")


def test_limit_and_seeded_sample():
    first = load_source("gsm8k", str(FIX / "gsm8k"), "test", limit=2)
    assert [p.id for p in first] == ["gsm8k/test/0", "gsm8k/test/1"]
    sample = load_source("gsm8k", str(FIX / "gsm8k"), "test", limit=2, seed=3)
    assert sample == load_source("gsm8k", str(FIX / "gsm8k"), "test", limit=2, seed=3)
    assert [p.meta["index"] for p in sample] == sorted(p.meta["index"] for p in sample)
    # ids name the row, not the position in the sample
    everything = {p.id: p for p in load_source("gsm8k", str(FIX / "gsm8k"), "test")}
    assert all(everything[p.id] == p for p in sample)


def test_bad_inputs_fail_with_the_bad_value(tmp_path):
    bad = tmp_path / "gsm8k.jsonl"
    bad.write_text('{"question": "q", "answer": "#### 1"}\n{"question": "only a question"}\n')
    with pytest.raises(CompassError, match=r"row 1: missing column\(s\) \['answer'\] for source 'gsm8k'"):
        load_source("gsm8k", str(bad), "train")
    bad.write_text('{"question": "q", "answer": "#### 1"}\nnot json\n')
    with pytest.raises(CompassError, match=r"gsm8k.jsonl:2: not valid JSON"):
        load_source("gsm8k", str(bad), "train")
    bad.write_text('{"question": null, "answer": "#### 1"}\n')
    with pytest.raises(CompassError, match="column 'question' must be a string, got NoneType"):
        load_source("gsm8k", str(bad), "train")
    with pytest.raises(CompassError, match="unknown source 'gsm9k'"):
        load_source("gsm9k", str(bad))
    with pytest.raises(CompassError, match="no such file or directory: missing.jsonl"):
        load_source("gsm8k", "missing.jsonl")
    with pytest.raises(CompassError, match="could not load hub dataset 'openai/gsm8k'"):
        load_source("gsm8k")  # the default hub id; tests run offline
    with pytest.raises(CompassError, match="reasoning_gym needs a generator name"):
        load_source("reasoning_gym", "basic_arithmetic")
    with pytest.raises(CompassError, match="cannot create generator 'no_such_generator'"):
        load_source("reasoning_gym", "no_such_generator", limit=2)


@pytest.mark.parametrize(("value", "text"), [(27.0, "27"), (2.5, "2.5"), (7, "7"), ("27.0", "27"), (" 4 ", "4"), (-3.0, "-3")])
def test_number_text(value, text):
    assert number_text(value) == text


@pytest.mark.parametrize(("text", "number"), [("so 1,250 * 2 = 2,500 dollars.", "2500"), ("x = -3.5.", "-3.5"), ("none", None)])
def test_last_number(text, number):
    assert last_number(text) == number


def test_reasoning_gym_ids_are_stable_for_a_seed():
    small = load_source("reasoning_gym", "gsm_symbolic", limit=3, seed=7)
    large = load_source("reasoning_gym", "gsm_symbolic", limit=6, seed=7)
    assert small == large[:3]
    assert [p.id for p in small] == [f"reasoning_gym/gsm_symbolic/7/{i}" for i in range(3)]
    other = load_source("reasoning_gym", "gsm_symbolic", limit=3, seed=8)
    assert [p.question for p in other] != [p.question for p in small]
    for problem in large:
        assert problem.reference_solution and "####" not in problem.reference_solution
        assert problem.reference_answer == str(problem.meta["rg_metadata"]["answer_value"])
    arithmetic = load_source("reasoning_gym", "basic_arithmetic", limit=2, seed=42)[0]
    assert arithmetic.question == "Calculate -5 * -6." and arithmetic.reference_answer == "30"
    assert arithmetic.reference_solution == "-5 * -6 = 30"


# --- the stage ----------------------------------------------------------------------------------------

FIXTURE_CONFIG = {
    "datasets": [
        {"name": "gsm8k", "path": "gsm8k", "split": "test"},
        {"name": "mgsm_ja", "path": "mgsm_ja", "split": "test"},
        {"name": "mathinstruct", "path": "mathinstruct/train.jsonl"},
        {"name": "aqua_rat", "path": "aqua_rat", "limit": 2, "sample": True},
    ],
    "reasoning_gym": [{"generator": "basic_arithmetic", "size": 5}, {"generator": "gsm_symbolic", "size": 3, "seed": 1000}],
}


def _run(out: Path, **overrides) -> tuple[Path, dict]:
    config = sources_stage.Config(**{**FIXTURE_CONFIG, **overrides})
    result = execute_stage("sources", config, {"data": FIX}, out)
    return out / "problems.jsonl", result.manifest.metrics


@pytest.mark.slow  # a whole stage run (seconds): not in make test-fast
def test_stage_is_byte_identical_for_the_same_config(tmp_path):
    first, metrics = _run(tmp_path / "a")
    second, _ = _run(tmp_path / "b")
    assert sha256_file(first) == sha256_file(second)
    assert sha256_file(_run(tmp_path / "c", seed=43)[0]) != sha256_file(first)  # the sample and gym seed move
    problems = read_jsonl(first, Problem)
    assert len(problems) == metrics["problems"] == 4 + 4 + 3 + 2 + 5 + 3
    assert metrics["per_source"] == {
        "gsm8k/test": 4, "mgsm_ja/test": 4, "mathinstruct/train": 3, "aqua_rat/train": 2,
        "reasoning_gym/basic_arithmetic/42": 5, "reasoning_gym/gsm_symbolic/1000": 3,
    }
    assert metrics["skipped"] == {"mathinstruct/train": {"program-of-thought solution (code, no stated answer)": 1}}
    assert metrics["langs"] == {"en": 17, "ja": 4}
    assert sorted(Path(p).name for p in metrics["files"]) == ["test.jsonl", "test.jsonl", "train.jsonl", "train.jsonl"]


def test_stage_drops_duplicate_questions_and_refuses_duplicate_ids(tmp_path):
    data = tmp_path / "dup.jsonl"
    rows = [{"question": "How many  legs does a cat have?", "answer": "#### 4"},
            {"question": "how many legs does a cat have?", "answer": "#### 4"},
            {"question": "How many legs does a bird have?", "answer": "#### 2"}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    path, metrics = _run(tmp_path / "d", datasets=[{"name": "gsm8k", "path": str(data)}], reasoning_gym=[])
    assert [p.id for p in read_jsonl(path, Problem)] == ["gsm8k/train/0", "gsm8k/train/2"]
    assert metrics["duplicates_dropped"] == 1
    path, metrics = _run(tmp_path / "k", datasets=[{"name": "gsm8k", "path": str(data)}], reasoning_gym=[],
                         drop_duplicate_questions=False)
    assert metrics["problems"] == 3 and metrics["duplicates_dropped"] == 0
    with pytest.raises(CompassError, match="problem id 'gsm8k/test/0' appears twice"):
        _run(tmp_path / "e", datasets=[{"name": "gsm8k", "path": "gsm8k", "split": "test"}] * 2, reasoning_gym=[])


def test_stage_config_is_checked():
    with pytest.raises(ValueError, match="at least one entry"):
        sources_stage.Config()
    with pytest.raises(ValueError, match="either path or hub_id"):
        sources_stage.Config(datasets=[{"name": "gsm8k", "path": "x", "hub_id": "openai/gsm8k"}])
    with pytest.raises(ValueError, match="needs a limit"):
        sources_stage.Config(datasets=[{"name": "gsm8k", "sample": True}])
    with pytest.raises(ValueError):
        sources_stage.Config(datasets=[{"name": "gsm9k"}])


def test_stage_output_hash_is_pinned(tmp_path):
    """The exact bytes of a fixtures-only run: a change to any converter or the record layout shows here."""
    config = sources_stage.Config(datasets=[
        {"name": "gsm8k", "path": "gsm8k", "split": "test"},
        {"name": "mgsm_ja", "path": "mgsm_ja", "split": "test"},
        {"name": "numinamath_cot", "path": "numinamath_cot"},
    ])
    execute_stage("sources", config, {"data": FIX}, tmp_path)
    assert sha256_file(tmp_path / "problems.jsonl") == "0ef7a1892bc3c821cd9bbe91a80dd60d8c2941dc9c21059c61cd9845292ec7b0"
