"""About 180 bad inputs, through the CLI's main function in-process (no subprocess each: fast). Every case
checks the exit code, ONE error line naming the file, line and field (or flag) at fault, that the run left
nothing behind (no output directory or workdir, no temp file: the directory tree is exactly what the case
wrote) and that no run was recorded in the ledger.

Cases: recipes (structure, references, duplicate keys, alias bombs, bytes that are not UTF-8, --only),
stage config files for every stage verb, command-line config values, JSONL inputs of the data stages (the
stage has taken its --out when it meets the bad line, so this also checks that a failed run cleans up), and
input/output paths."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cli_cases import assert_one_line_error, ledger_run_count, run_cli, tree

from compass.stages import STAGES

GOOD_PROBLEM = '{"id": "p1", "source": "toy", "question": "What is 1+1?", "reference_answer": "2"}'
GOOD_TRACE_FIELDS = ('"id": "t1", "problem_id": "p1", "source": "toy", "lang": "en", "messages": [], "raw_output": "x", '
                     '"reference_answer": "2", "verified": true, "teacher": "reference"')


@dataclass
class Case:
    id: str
    files: dict[str, str | bytes]  # relative path -> content ({P}: the problems file's absolute path)
    argv: list[str]  # {T}: the case's directory
    needles: list[str]  # each must appear in the error line ({T} replaced)
    code: int = 2
    dirs: list[str] = field(default_factory=list)


RECIPE_HEAD = "name: t\nstages:\n"
TEACHER = "  - name: teacher\n    stage: distill\n    inputs: {problems: {P}}\n"
PAIRS = "  - name: pairs\n    stage: pairs\n    inputs: {traces: teacher.traces}\n"
GOOD_RECIPE = RECIPE_HEAD + TEACHER + PAIRS


def recipe_case(case_id: str, text: str | bytes, *needles: str, extra: list[str] | None = None) -> Case:
    return Case(f"recipe-{case_id}", {"problems.jsonl": GOOD_PROBLEM + "\n", "r.yaml": text},
                ["run", "{T}/r.yaml", "--workdir", "{T}/work", *(extra or [])], list(needles))


BOMB = "".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]\n" for i in range(1, 7))
RECIPE_CASES = [
    recipe_case("not-a-mapping", "- a\n- b\n", "r.yaml:1", "a recipe must be a mapping"),
    recipe_case("scalar", "just text\n", "r.yaml:1", "a recipe must be a mapping"),
    recipe_case("empty-file", "", "r.yaml", "name", "missing required value"),
    recipe_case("no-name", "stages:\n" + TEACHER, "r.yaml:1", "name: missing required value"),
    recipe_case("no-stages", "name: t\n", "r.yaml:1", "stages: missing required value"),
    recipe_case("empty-stages", "name: t\nstages: []\n", "r.yaml:2", "stages"),
    recipe_case("stages-a-mapping", "name: t\nstages: {a: 1}\n", "r.yaml:2", "stages"),
    recipe_case("stage-a-string", "name: t\nstages: [teacher]\n", "r.yaml:2", "stages.0"),
    recipe_case("unknown-top-key", "nmae: t\n" + GOOD_RECIPE[8:], "r.yaml:1", "nmae: unknown key"),
    recipe_case("description-not-text", "name: t\ndescription: [1]\nstages:\n" + TEACHER, "r.yaml:2", "description"),
    recipe_case("seed-not-int", "name: t\nseed: many\nstages:\n" + TEACHER, "r.yaml:2", "seed", "'many'"),
    recipe_case("stage-without-kind", RECIPE_HEAD + "  - name: teacher\n    inputs: {problems: {P}}\n", "r.yaml:3", "stages.0.stage: missing"),
    recipe_case("stage-without-name", RECIPE_HEAD + "  - stage: distill\n    inputs: {problems: {P}}\n", "r.yaml:3", "stages.0.name: missing"),
    recipe_case("stage-name-with-space", RECIPE_HEAD + TEACHER.replace("name: teacher", "name: my teacher"), "r.yaml:3", "stages.0.name", "letters, digits"),
    recipe_case("stage-name-empty", RECIPE_HEAD + TEACHER.replace("name: teacher", "name: ''"), "r.yaml:3", "stages.0.name"),
    recipe_case("stage-name-path", RECIPE_HEAD + TEACHER.replace("name: teacher", "name: ../x"), "r.yaml:3", "stages.0.name"),
    recipe_case("duplicate-stage-name", RECIPE_HEAD + TEACHER + TEACHER, "r.yaml:6", "duplicate stage name 'teacher'"),
    recipe_case("unknown-stage-kind", RECIPE_HEAD + TEACHER.replace("stage: distill", "stage: distil"), "r.yaml:4", "stages.0.stage", "unknown stage 'distil'"),
    recipe_case("unknown-stage-key", RECIPE_HEAD + TEACHER + "    confg: {n: 1}\n", "r.yaml:6", "stages.0.confg: unknown key"),
    recipe_case("unknown-config-key", RECIPE_HEAD + TEACHER + "    config: {nn: 1}\n", "r.yaml:6", "stages.0.config.nn: unknown key"),
    recipe_case("config-bad-int", RECIPE_HEAD + TEACHER + "    config: {n: zero}\n", "r.yaml:6", "stages.0.config.n", "'zero'"),
    recipe_case("config-bad-range", RECIPE_HEAD + TEACHER + "    config: {max_reject_rate: 2}\n", "r.yaml:6", "stages.0.config.max_reject_rate"),
    recipe_case("config-bad-literal", RECIPE_HEAD + TEACHER + "    config: {backend: gpt}\n", "r.yaml:6", "stages.0.config.backend", "'gpt'"),
    recipe_case("config-nested-type", RECIPE_HEAD + TEACHER + "    config: {openai: 5}\n", "r.yaml:6", "stages.0.config.openai"),
    recipe_case("config-nested-key", RECIPE_HEAD + TEACHER + "    config: {openai: {modle: m}}\n", "r.yaml:6", "stages.0.config.openai.modle: unknown key"),
    recipe_case("config-a-list", RECIPE_HEAD + TEACHER + "    config: [1]\n", "r.yaml:6", "stages.0.config"),
    recipe_case("config-inconsistent", RECIPE_HEAD + TEACHER + "    config: {backend: openai}\n", "r.yaml:6", "stages.0.config", "openai.model"),
    recipe_case("inputs-a-list", RECIPE_HEAD + "  - name: teacher\n    stage: distill\n    inputs: [{P}]\n", "r.yaml:5", "stages.0.inputs"),
    recipe_case("unknown-input", RECIPE_HEAD + "  - name: teacher\n    stage: distill\n    inputs: {problemz: {P}}\n", "r.yaml:5", "stages.0.inputs.problemz", "has no input 'problemz'"),
    recipe_case("missing-input", RECIPE_HEAD + "  - name: teacher\n    stage: distill\n", "r.yaml:3", "stages.0.inputs", "needs input(s) ['problems']"),
    recipe_case("empty-input-ref", RECIPE_HEAD + "  - name: teacher\n    stage: distill\n    inputs: {problems: ''}\n", "r.yaml:5", "stages.0.inputs.problems", "empty input reference"),
    recipe_case("later-stage-ref", RECIPE_HEAD + PAIRS + TEACHER, "r.yaml:5", "stages.0.inputs.traces", "does not run before 'pairs'"),
    recipe_case("self-ref", RECIPE_HEAD + TEACHER + PAIRS.replace("teacher.traces", "pairs.pairs"), "r.yaml:8", "stages.1.inputs.traces", "does not run before"),
    recipe_case("unknown-output", RECIPE_HEAD + TEACHER + PAIRS.replace("teacher.traces", "teacher.tracez"), "r.yaml:8", "stages.1.inputs.traces", "has no output 'tracez'"),
    recipe_case("typo-stage-ref", RECIPE_HEAD + TEACHER + PAIRS.replace("teacher.traces", "teachr.traces"), "r.yaml:8", "stages.1.inputs.traces", "did you mean 'teacher.traces'"),
    recipe_case("typo-stage-ref-2", RECIPE_HEAD + TEACHER + PAIRS.replace("teacher.traces", "Teacher.traces"), "r.yaml:8", "did you mean 'teacher.traces'"),
    recipe_case("missing-path", RECIPE_HEAD + TEACHER.replace("{P}", "./nope/problems.jsonl"), "r.yaml:5", "stages.0.inputs.problems", "neither a stage of this recipe nor an existing file"),
    recipe_case("missing-abs-path", RECIPE_HEAD + TEACHER.replace("{P}", "/no/such/problems.jsonl"), "r.yaml:5", "'/no/such/problems.jsonl'"),
    recipe_case("duplicate-top-key", "name: t\nname: u\nstages:\n" + TEACHER, "r.yaml:2", "duplicate key 'name' (first at line 1)"),
    recipe_case("duplicate-stage-key", RECIPE_HEAD + TEACHER + "    stage: pairs\n", "r.yaml:6", "duplicate key 'stage' (first at line 4)"),
    recipe_case("duplicate-config-key", RECIPE_HEAD + TEACHER + "    config:\n      n: 1\n      n: 2\n", "r.yaml:8", "duplicate key 'n'"),
    recipe_case("duplicate-input-key", RECIPE_HEAD + "  - name: teacher\n    stage: distill\n    inputs: {problems: {P}, problems: {P}}\n", "r.yaml:5", "duplicate key 'problems'"),
    recipe_case("alias-bomb", "l0: &l0 [x, x, x, x, x, x, x, x, x, x]\n" + BOMB + GOOD_RECIPE, "r.yaml:", "YAML aliases expand to more than 100000 values"),
    recipe_case("alias-self", "name: t\nloop: &a [*a]\nstages:\n" + TEACHER, "r.yaml:2", "alias refers to a value that contains it"),
    recipe_case("undefined-alias", "name: *nothing\nstages:\n" + TEACHER, "r.yaml:1", "not valid YAML"),
    recipe_case("not-utf8", (RECIPE_HEAD + TEACHER).encode() + b"    # caf\xe9\n", "r.yaml:6", "not UTF-8 text (byte 0xe9"),
    recipe_case("not-utf8-latin1-name", b"name: caf\xe9\nstages:\n" + TEACHER.encode(), "r.yaml:1", "not UTF-8"),
    recipe_case("utf16", GOOD_RECIPE.encode("utf-16"), "r.yaml:1", "not UTF-8"),
    recipe_case("unclosed-bracket", RECIPE_HEAD + "  - name: teacher\n    stage: distill\n    inputs: {problems: {P}\n", "r.yaml", "not valid YAML"),
    recipe_case("tab-indent", RECIPE_HEAD + "  - name: teacher\n\tstage: distill\n", "r.yaml:4", "not valid YAML"),
    recipe_case("bad-indent", "name: t\nstages:\n  - name: teacher\n   stage: distill\n", "r.yaml:4", "not valid YAML"),
    recipe_case("launch-unknown-key", RECIPE_HEAD + TEACHER + "    launch: {procs: 2}\n", "r.yaml:6", "stages.0.launch.procs: unknown key"),
    recipe_case("launch-zero-procs", RECIPE_HEAD + TEACHER + "    launch: {num_processes: 0}\n", "r.yaml:6", "stages.0.launch.num_processes"),
    recipe_case("launch-not-mapping", RECIPE_HEAD + TEACHER + "    launch: fast\n", "r.yaml:6", "stages.0.launch"),
    recipe_case("only-unknown", GOOD_RECIPE, "--only nosuch", "has no stage 'nosuch'", extra=["--only", "nosuch"]),
    recipe_case("only-typo", GOOD_RECIPE, "--only teachr", "did you mean 'teacher'", extra=["--only", "teachr"]),
    recipe_case("only-one-bad-of-two", GOOD_RECIPE, "--only pair", "did you mean 'pairs'", extra=["--only", "teacher", "pair"]),
    Case("recipe-file-missing", {}, ["run", "{T}/nope.yaml", "--workdir", "{T}/work"], ["nope"]),
]

# --- a config file for every stage verb ----------------------------------------------------------------
CONFIG_VARIANTS = {
    "unknown-key": ("nosuch_key: 1\n", ["c.yaml:1", "nosuch_key", "unknown key"]),
    "bad-seed": ("seed: abc\n", ["c.yaml:1", "seed", "'abc'"]),
    "list": ("- a\n- b\n", ["c.yaml:1", "must be a mapping"]),
    "duplicate-key": ("seed: 1\nseed: 2\n", ["c.yaml:2", "duplicate key 'seed' (first at line 1)"]),
    "not-utf8": (b"seed: 1\n# \xff\n", ["c.yaml:2", "not UTF-8 text (byte 0xff at column 3)"]),
    "bad-yaml": ("seed: [1, 2\n", ["c.yaml", "not valid YAML"]),
    "alias-bomb": ("l0: &l0 [x, x, x, x, x, x, x, x, x, x]\n" + BOMB, ["c.yaml:", "YAML aliases expand"]),
}
CONFIG_CASES = [
    Case(f"config-{kind}-{variant}", {"c.yaml": text}, [kind, "--config", "{T}/c.yaml", "--out", "{T}/out"], needles)
    for kind in STAGES for variant, (text, needles) in CONFIG_VARIANTS.items()
] + [Case("config-file-missing", {}, ["distill", "--config", "{T}/missing.yaml", "--out", "{T}/out"], ["missing.yaml", "not found"])]

# --- command-line config values ------------------------------------------------------------------------
DISTILL = ["distill", "--problems", "{P}", "--out", "{T}/out"]
FLAG_CASES = [
    Case(f"flag-{i}", {"problems.jsonl": GOOD_PROBLEM + "\n"}, [*DISTILL, *flags], needles)
    for i, (flags, needles) in enumerate([
        (["--n", "zero"], ["n", "'zero'"]),
        (["--n", "0"], ["n", "greater than or equal to 1"]),
        (["--n", "[1"], ["--n '[1'", "not a valid YAML value"]),
        (["--n", "{a: 1"], ["--n", "not a valid YAML value"]),
        (["--max-reject-rate", "2"], ["max_reject_rate", "less than or equal to 1"]),
        (["--max-reject-rate", "-0.1"], ["max_reject_rate"]),
        (["--temperature", "-1"], ["temperature"]),
        (["--top-p", "0"], ["top_p"]),
        (["--max-tokens", "0"], ["max_tokens"]),
        (["--shard-size", "0"], ["shard_size"]),
        (["--backend", "gpt"], ["backend", "'gpt'"]),
        (["--keep", "all"], ["keep", "'all'"]),
        (["--backend", "openai"], ["openai.model"]),
        (["--backend", "transformers"], ["transformers.model_dir"]),
        (["--n", "3"], ["reference teacher", "n must be 1"]),
        (["--seed", "x"], ["seed", "'x'"]),
        (["--openai", "{base_urls: []}"], ["openai.base_urls"]),
        (["--openai", "{base_urls: http://h/v1}"], ["openai.base_urls"]),
        (["--openai", "{concurrency: 0}"], ["openai.concurrency"]),
        (["--openai", "{nosuch: 1}"], ["openai.nosuch", "unknown key"]),
        (["--openai", "[1, 2]"], ["openai"]),
        (["--answer-timeout-s", "0"], ["answer_timeout_s"]),
    ])
]

# --- JSONL inputs of data stages (the stage has claimed --out when it meets the bad line) ----------------
BAD_LINES = {
    "not-json": (GOOD_PROBLEM + "\n{oops\n", ["problems.jsonl:2", "not valid JSON"]),
    "missing-field": ('{"id": "p1", "source": "toy", "question": "q"}\n', ["problems.jsonl:1", "reference_answer"]),
    "wrong-type": ('{"id": 1, "source": "toy", "question": "q", "reference_answer": "2"}\n', ["problems.jsonl:1", "field 'id'"]),
    "not-utf8": (GOOD_PROBLEM.encode() + b"\n" + GOOD_PROBLEM.replace("p1", "p2").encode().replace(b"1+1", b"1\xff1") + b"\n",
                 ["problems.jsonl:2", "not UTF-8 text"]),
    "array-line": ("[1, 2]\n", ["problems.jsonl:1"]),
    "string-line": ('"just a string"\n', ["problems.jsonl:1"]),
    "bad-lang": (GOOD_PROBLEM[:-1] + ', "lang": "fr"}\n', ["problems.jsonl:1", "lang"]),
    "extra-field": (GOOD_PROBLEM[:-1] + ', "answr": "2"}\n', ["problems.jsonl:1", "answr"]),
    "truncated": (GOOD_PROBLEM + "\n" + GOOD_PROBLEM[:30] + "\n", ["problems.jsonl:2", "not valid JSON"]),
    "empty": ("", ["no Problem records", "problems.jsonl"]),
    "blank-lines": ("\n\n\n", ["no Problem records"]),
    "duplicate-id": (GOOD_PROBLEM + "\n" + GOOD_PROBLEM + "\n", ["duplicate problem id 'p1'", "problems.jsonl"]),
}
JSONL_CASES = [
    Case(f"distill-input-{name}", {"problems.jsonl": text}, DISTILL, needles) for name, (text, needles) in BAD_LINES.items()
] + [
    Case(f"decontaminate-input-{name}", {"problems.jsonl": text, "eval.jsonl": GOOD_PROBLEM + "\n"},
         ["decontaminate", "--problems", "{P}", "--eval", "{T}/eval.jsonl", "--out", "{T}/out"], needles)
    for name, (text, needles) in BAD_LINES.items() if name in ("not-json", "missing-field", "wrong-type", "not-utf8", "truncated")
] + [
    Case(f"pairs-input-{name}", {"traces.jsonl": text}, ["pairs", "--traces", "{T}/traces.jsonl", "--out", "{T}/out"], needles)
    for name, (text, needles) in {
        "not-json": ("{" + GOOD_TRACE_FIELDS + "}\n{x\n", ["traces.jsonl:2", "not valid JSON"]),
        "missing-field": ('{"id": "t1"}\n', ["traces.jsonl:1"]),
        "not-utf8": (b'{"id": "t\xff"}\n', ["traces.jsonl:1", "not UTF-8"]),
        "wrong-type": ("{" + GOOD_TRACE_FIELDS.replace('"verified": true', '"verified": "maybe"') + "}\n", ["traces.jsonl:1", "verified"]),
    }.items()
] + [
    Case("distill-input-empty-dir", {"shards/README.txt": "no shards"}, ["distill", "--problems", "{T}/shards", "--out", "{T}/out"],
         ["no .jsonl files in directory", "shards"]),
    Case("distill-input-shard-bad", {"shards/a.jsonl": GOOD_PROBLEM + "\n", "shards/b.jsonl": "{x\n"},
         ["distill", "--problems", "{T}/shards", "--out", "{T}/out"], ["b.jsonl:1", "not valid JSON"]),
]

# --- paths ---------------------------------------------------------------------------------------------
PATH_CASES = [
    Case("path-missing-input", {}, ["distill", "--problems", "{T}/nope.jsonl", "--out", "{T}/out"], ["input 'problems' does not exist", "nope.jsonl"]),
    Case("path-missing-required-input", {}, ["distill", "--out", "{T}/out"], ["missing input 'problems'"]),
    Case("path-out-is-input-dir", {"data/problems.jsonl": GOOD_PROBLEM + "\n"},
         ["distill", "--problems", "{T}/data", "--out", "{T}/data"], ["is the input 'problems'"]),
    Case("path-out-inside-input", {"data/problems.jsonl": GOOD_PROBLEM + "\n"},
         ["distill", "--problems", "{T}/data", "--out", "{T}/data/out"], ["is inside input 'problems'"]),
    Case("path-out-holds-input", {"data/problems.jsonl": GOOD_PROBLEM + "\n"},
         ["distill", "--problems", "{T}/data/problems.jsonl", "--out", "{T}/data"], ["holds input 'problems'"]),
    Case("path-out-is-a-file", {"problems.jsonl": GOOD_PROBLEM + "\n", "out": "a file"}, DISTILL, ["is a file, not a directory"]),
    Case("path-out-has-foreign-files", {"problems.jsonl": GOOD_PROBLEM + "\n", "out/notes.md": "mine"}, DISTILL,
         ["compass did not write (notes.md)"]),
    Case("path-out-root", {"problems.jsonl": GOOD_PROBLEM + "\n"}, ["distill", "--problems", "{P}", "--out", "/"], ["filesystem root"]),
    Case("path-workdir-has-foreign-stage-dir", {"problems.jsonl": GOOD_PROBLEM + "\n", "r.yaml": GOOD_RECIPE,
                                               "work/teacher/mine.txt": "x"},
         ["run", "{T}/r.yaml", "--workdir", "{T}/work"], ["teacher", "compass did not write (mine.txt)"]),
]

MERGE = ["merge", "--base", "{T}/base", "--finetuned", "{T}/ft", "--out", "{T}/merged"]
MODEL_FILES = {"base/config.json": '{"model_type": "toy"}', "ft/config.json": '{"model_type": "toy"}'}
MERGE_CASES = [
    Case("merge-nan-weight", MODEL_FILES, [*MERGE, "--weights", "[.nan]"], ["weights must be finite numbers", "nan"]),
    Case("merge-inf-weight", MODEL_FILES, [*MERGE, "--weights", "[0.5, .inf]"], ["weights must be finite numbers", "inf"]),
    Case("merge-empty-weights", MODEL_FILES, [*MERGE, "--weights", "[]"], ["needs weights"]),
    Case("merge-base-without-config", {"base/model.safetensors": b"", "ft/config.json": "{}"}, [*MERGE, "--weights", "[0.25]"],
         ["has no config.json", "would not load"]),
]

CASES = RECIPE_CASES + CONFIG_CASES + FLAG_CASES + JSONL_CASES + PATH_CASES + MERGE_CASES


def test_at_least_150_cases():
    assert len(CASES) >= 150 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, tmp_path, capsys):
    problems = tmp_path / "problems.jsonl"

    def fill(text):
        return text.replace("{P}", str(problems)).replace("{T}", str(tmp_path)) if isinstance(text, str) else text

    for rel, content in case.files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        content = fill(content)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    before, runs = tree(tmp_path), ledger_run_count()
    result = run_cli([fill(a) for a in case.argv], capsys)
    assert_one_line_error(result, *[fill(n) for n in case.needles], code=case.code)
    assert tree(tmp_path) == before, sorted(set(tree(tmp_path)) ^ set(before))  # nothing left behind, nothing removed
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_dir()) == \
        sorted({Path(rel).parent.as_posix() for rel in case.files if Path(rel).parent.as_posix() != "."}
               | {p.as_posix() for rel in case.files for p in Path(rel).parents if p.as_posix() != "."})
    assert ledger_run_count() == runs
