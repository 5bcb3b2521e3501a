"""japanese-lm-fin-harness, the parts without a model: the compass protocol's prompts read from the checkout
(task files, prompt functions), scoring; the reference protocol's prompt versions as the harness's run scripts
pair them, the leaderboard's best-of-versions rule, and the prepared task files."""
import json
from pathlib import Path

import pytest

from compass.errors import CompassError
from compass.evals import finharness


def _checkout(root, files):
    for task, names in files.items():
        folder = root / finharness.TASK_FILES / task
        folder.mkdir(parents=True)
        for name in names:
            (folder / name).write_text(f"task: {name[:-5]}\n", encoding="utf-8")
    return root


def test_versions_are_the_union_and_a_missing_one_runs_its_parent(tmp_path):
    repo = _checkout(tmp_path, {"chabsa": ["chabsa.yaml", "chabsa-1.0-0.1.yaml"],
                                "fp2": ["fp2.yaml", "fp2-1.0-0.1.yaml", "fp2-1.0-0.1.2.yaml"]})
    table = finharness.version_files(repo, ["chabsa", "fp2"], None)
    assert list(table) == ["default", "1.0-0.1", "1.0-0.1.2"]
    assert table["1.0-0.1.2"] == {"chabsa": "chabsa-1.0-0.1", "fp2": "fp2-1.0-0.1.2"}  # as harness-1.0-0.1.2.sh
    assert table["default"] == {"chabsa": "chabsa", "fp2": "fp2"}
    assert list(finharness.version_files(repo, ["fp2"], ["1.0-0.1"])) == ["1.0-0.1"]
    with pytest.raises(CompassError, match=r"prompt_versions \['9.9'\] not in"):
        finharness.version_files(repo, ["fp2"], ["9.9"])
    with pytest.raises(CompassError, match="japanese-lm-fin-harness"):
        finharness.version_files(tmp_path / "elsewhere", ["fp2"], None)


def test_best_version_is_the_highest_average_with_zeros_left_out():
    table = {"default": {"chabsa": "chabsa", "fp2": "fp2"}, "1.0-0.1": {"chabsa": "chabsa-1.0-0.1", "fp2": "fp2-1.0-0.1"}}
    results = {"chabsa": {"f1,none": 0.6, "acc,none": 0.9}, "fp2": {"acc,none": 0.2},  # chabsa counts its f1
               "chabsa-1.0-0.1": {"f1,none": 0.5, "acc,none": 0.5}, "fp2-1.0-0.1": {"acc,none": 0.0}}
    best, averages = finharness.best_version(results, table)
    assert averages == {"default": pytest.approx(0.4), "1.0-0.1": 0.5}  # the zero is not averaged in
    assert best == "1.0-0.1"
    results["fp2-1.0-0.1"]["acc,none"] = 0.3  # 0.4 = 0.4: the first version wins a tie
    assert finharness.best_version(results, table)[0] == "default"


def test_prepared_task_dir_keeps_the_prompts_and_reads_the_converted_rows(tmp_path):
    repo = tmp_path / "repo"
    folder = repo / finharness.TASK_FILES / "fp2"
    folder.mkdir(parents=True)
    base = ("task: fp2\ndataset_path: jlm_fin_eval/datasets/fp2/fp2.py\ndataset_name: fp2\n"
            "doc_to_text: !function utils.doc_to_text_00\nmetric_list:\n  - metric: acc\n    aggregation: mean\n"
            "  - metric: map\n    aggregation: mean\nmetadata:\n  version: 1.0\n")
    (folder / "fp2.yaml").write_text(base, encoding="utf-8")
    (folder / "fp2-1.0-0.1.yaml").write_text("include: fp2.yaml\ntask: fp2-1.0-0.1\n", encoding="utf-8")
    (folder / "utils.py").write_text("def doc_to_text_00(doc):\n    return doc['question']\n", encoding="utf-8")
    data = tmp_path / "data.json"
    data.write_text(json.dumps({"data": [{"id": 7, "question": "q", "context": "", "answer": 1,
                                          "choices": [{"id": 0, "text": "１"}, {"id": 1, "text": "２"}]}]}), encoding="utf-8")
    out = finharness.prepare_task_dir(repo, {"fp2": data}, tmp_path / "tasks")
    prepared = (out / "fp2" / "fp2.yaml").read_text(encoding="utf-8")
    assert "dataset_path: json" in prepared and "dataset_name: null" in prepared
    assert "doc_to_text: !function utils.doc_to_text_00" in prepared and "metric: map" not in prepared
    assert "metadata:\n  version: 1.0" in prepared
    assert (out / "fp2" / "fp2-1.0-0.1.yaml").read_text(encoding="utf-8") == "include: fp2.yaml\ntask: fp2-1.0-0.1\n"
    assert (out / "fp2" / "utils.py").is_file()
    row = json.loads((out / "fp2" / "data.jsonl").read_text(encoding="utf-8"))
    assert row == {"id": 7, "question": "q", "context": "", "choices": {"id": [0, 1], "text": ["１", "２"]}, "answer": 1}


# --- the compass protocol: prompts read from the checkout ----------------------------------------------------

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "evals"
HARNESS = Path(__file__).resolve().parents[1] / "fixtures" / "finharness" / "checkout"


def items_of(task, path, repo=HARNESS, version=finharness.DEFAULT_VERSION):
    return finharness.load_items(task, path, finharness.task_prompt(repo, task, version))


def test_fin_harness_prompts_are_the_checkouts_default_prompts():
    items = items_of("cma_basics", FIXTURES / "cma_basics.json")
    assert items[1].context == (
        "以下の問題の適切な答えを選択肢から選んでアルファベットで答えなさい。\n\n\n"
        "【問題】\nPERの計算式はどれか。\n1株当たり利益をEPSとする。\n\n"
        "【選択肢】\nA: EPS÷株価\nB: 株価÷EPS\nC: 株価×EPS\n\n【答え】\n"
    )
    assert items[1].options == ("A", "B", "C") and items[1].gold == "B" and items[1].delimiter == ""
    fp2 = items_of("fp2", FIXTURES / "fp2.json")[0]
    assert fp2.options == ("１", "２", "３", "４") and fp2.gold == "２"
    assert "【選択肢】" not in fp2.context and fp2.context.endswith("\n\n【答え】\n")
    cpa = items_of("cpa_audit", FIXTURES / "cpa_audit.json")[0]
    assert cpa.options == tuple("ABCDEF") and cpa.gold == "B"
    assert cpa.context.startswith("以下の問題の答えとして適切な記号の組み合わせを")
    assert finharness.requests([items[0]]) == [(items[0].context, o) for o in "ABCD"]


def test_chabsa_reads_the_chabsa_dataset_files_one_item_per_opinion():
    items = items_of("chabsa", FIXTURES / "chabsa")
    assert [i.gold for i in items] == ["positive", "positive", "negative", "neutral", "negative", "positive"]
    assert items[0].context == ("以下のセンテンスにおける、ターゲットのセンチメントをpositiveかnegativeで答えてください。\n\n\n"
                                "センテンス: 当連結会計年度におけるわが国経済は、企業収益の改善により緩やかな回復基調で推移した\n"
                                "ターゲット: わが国経済\n回答:")
    # chabsa's file leaves target_delimiter unset: lm-eval's default " "
    assert finharness.requests(items[:1]) == [(items[0].context, " positive"), (items[0].context, " negative")]


def test_the_prompts_follow_the_checkout_not_compass(tmp_path):
    """Edit the checkout's task file and prompt function: the compass protocol's requests change with them."""
    import shutil

    repo = tmp_path / "harness"
    shutil.copytree(HARNESS, repo)
    folder = repo / finharness.TASK_FILES / "cma_basics"
    task_file = folder / "cma_basics.yaml"
    task_file.write_text(task_file.read_text(encoding="utf-8").replace(
        'description: "以下の問題の適切な答えを選択肢から選んでアルファベットで答えなさい。\\n\\n\\n"', 'description: "Q{{id}}. "'),
        encoding="utf-8")
    (folder / "utils.py").write_text((folder / "utils.py").read_text(encoding="utf-8").replace('"【問題】\\n"', '"[Q] "'),
                                     encoding="utf-8")
    item = items_of("cma_basics", FIXTURES / "cma_basics.json", repo)[1]
    assert item.context.startswith("Q1. [Q] PERの計算式はどれか。")  # the description is a template too, as in lm-eval
    # a version file's include chain: its own description and Jinja doc_to_text over the base file's choices
    variant = items_of("cma_basics", FIXTURES / "cma_basics.json", HARNESS, "1.0-0.1")[1]
    assert variant.context == "次の問いの答えを記号で選べ。\n\n問い: PERの計算式はどれか。\nA. EPS÷株価\nB. 株価÷EPS\nC. 株価×EPS\n答え:"
    assert variant.options == ("A", "B", "C") and variant.gold == "B"


def test_a_template_target_that_is_a_number_is_an_index_and_list_choices_are_taken_as_written(tmp_path):
    folder = tmp_path / finharness.TASK_FILES / "fp2"
    folder.mkdir(parents=True)
    (folder / "fp2.yaml").write_text('output_type: multiple_choice\ndoc_to_text: "{{question}}?"\n'
                                     'doc_to_target: "{{answer}}"\ndoc_to_choice: ["no", "yes"]\n', encoding="utf-8")
    data = tmp_path / "data.json"
    data.write_text(json.dumps({"data": [{"id": 3, "question": "q", "context": "", "answer": 1,
                                          "choices": [{"id": 0, "text": "x"}, {"id": 1, "text": "y"}]}]}), encoding="utf-8")
    [item] = finharness.load_items("fp2", data, finharness.task_prompt(tmp_path, "fp2"))
    assert (item.id, item.context, item.options, item.gold, item.delimiter) == ("fp2/3", "q?", ("no", "yes"), "yes", " ")


@pytest.mark.parametrize("yaml_text, message", [
    ("output_type: multiple_choice\ndoc_to_text: !function utils.nowhere\ndoc_to_target: a\ndoc_to_choice: [a]\n",
     r"!function utils.nowhere needs .*utils.py, which is not there"),
    ("output_type: generate_until\ndoc_to_text: a\n", "output_type 'generate_until'; compass scores multiple_choice only"),
    ("output_type: multiple_choice\ndoc_to_text: a\ndoc_to_choice: [a]\n", "has no doc_to_target"),
    ("output_type: [unclosed\n", "not a readable task file"),
])
def test_a_bad_task_file_is_one_clear_error(tmp_path, yaml_text, message):
    folder = tmp_path / finharness.TASK_FILES / "fp2"
    folder.mkdir(parents=True)
    (folder / "fp2.yaml").write_text(yaml_text, encoding="utf-8")
    with pytest.raises(CompassError, match=message):
        finharness.task_prompt(tmp_path, "fp2")


def test_a_missing_prompt_function_names_the_file(tmp_path):
    folder = tmp_path / finharness.TASK_FILES / "fp2"
    folder.mkdir(parents=True)
    (folder / "fp2.yaml").write_text("output_type: multiple_choice\ndoc_to_text: !function utils.doc_to_text_00\n"
                                     "doc_to_target: a\ndoc_to_choice: [a]\n", encoding="utf-8")
    (folder / "utils.py").write_text("def other(doc):\n    return ''\n", encoding="utf-8")
    with pytest.raises(CompassError, match=r"!function utils.doc_to_text_00: .*utils.py defines no doc_to_text_00"):
        finharness.task_prompt(tmp_path, "fp2")


def test_compass_keeps_no_harness_text():
    """The harness's prompt texts live in the user's checkout only (each default description, a prompt line)."""
    source = "".join(p.read_text(encoding="utf-8") for p in (Path(finharness.__file__).parents[1]).rglob("*.py"))
    for text in ("アルファベットで答えなさい", "ターゲットのセンチメント", "１～４の数字で", "【選択肢】", "センテンス:"):
        assert text not in source


def test_the_compass_protocol_without_a_checkout_is_refused_before_any_model_runs():
    from compass.stages.evaluate import Config, check_data

    config = Config(tasks=["chabsa"])
    with pytest.raises(CompassError, match="give a checkout of pfnet-research/japanese-lm-fin-harness with "
                                           "--finharness-repo DIR"):
        check_data(config, {"model": Path("m"), "chabsa": FIXTURES / "chabsa"})
    check_data(Config(tasks=["chabsa"], finharness={"repo": str(HARNESS)}), {"model": Path("m"), "chabsa": FIXTURES / "chabsa"})


def test_fin_harness_scoring_acc_acc_norm_and_chabsa_macro_f1():
    items = items_of("chabsa", FIXTURES / "chabsa")
    # per item (positive, negative): acc picks the larger; acc_norm divides by 8 chars for both -> same argmax
    lls = [-1.0, -2.0, -3.0, -1.0, -2.0, -1.0, -1.0, -2.0, -2.0, -1.0, -1.0, -2.0]
    rows, metrics = finharness.score("chabsa", items, lls)
    assert [r["extracted"] for r in rows] == ["positive", "negative", "negative", "positive", "negative", "positive"]
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    # positive: tp 2, fp 1 (the neutral item), fn 1 -> F1 2/3; negative: tp 2, fp 1, fn 0 -> 0.8
    assert metrics["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)
    from sklearn.metrics import f1_score  # the harness's figure: macro over present labels x 1.5

    golds, preds = [i.gold for i in items], [r["extracted"] for r in rows]
    assert metrics["macro_f1"] == pytest.approx(f1_score(golds, preds, average="macro") * 1.5)


def test_fin_harness_acc_norm_divides_by_option_length():
    item = finharness.ChoiceItem("x/0", "ctx", ("ab", "abcdef"), "", "abcdef")
    rows, metrics = finharness.score("fp2", [item], [-2.0, -3.0])
    assert rows[0]["extracted"] == "ab" and rows[0]["extracted_norm"] == "abcdef"
    assert metrics["accuracy"] == 0.0 and metrics["accuracy_norm"] == 1.0


def test_fin_harness_bad_answer_id_names_the_record(tmp_path):
    bad = tmp_path / "data.json"
    bad.write_text('{"data": [{"id": 0, "question": "q", "context": "", "choices": [{"id": 0, "text": "a"}], "answer": 3}]}')
    with pytest.raises(CompassError, match=r"data.json record 1: answer 3 is not one of the choice ids \[0\]"):
        items_of("cma_basics", bad)


def test_the_demos_checkout_is_read_like_a_harness_checkout(tmp_path):
    """`compass demo` shows both protocols on a checkout it writes in the harness's layout (its own texts):
    both prompt versions build lettered / numeric options over the held-out problems, the answer among them."""
    from compass import demo

    problems = tmp_path / "problems.jsonl"
    problems.write_text("".join(json.dumps({"question": f"Calculate {a} + 1.", "reference_answer": str(a + 1)}) + "\n"
                                for a in (3, 0, 8)), encoding="utf-8")
    repo, data = demo.write_demo_harness(tmp_path / "harness", problems)
    first = data.read_bytes()
    assert demo.write_demo_harness(tmp_path / "harness", problems)[1].read_bytes() == first  # same bytes every run
    assert finharness.version_files(repo, [demo.PROTOCOL_TASK], None) == {
        "default": {demo.PROTOCOL_TASK: demo.PROTOCOL_TASK}, "1.0-0.1": {demo.PROTOCOL_TASK: f"{demo.PROTOCOL_TASK}-1.0-0.1"}}
    lettered = items_of(demo.PROTOCOL_TASK, data, repo)
    numeric = items_of(demo.PROTOCOL_TASK, data, repo, "1.0-0.1")
    for problem, letter, number in zip((3, 0, 8), lettered, numeric):
        assert letter.options == tuple("ABCD") and letter.context.endswith("Answer:") and letter.delimiter == " "
        assert sorted(int(o) for o in number.options) == [problem, problem + 1, problem + 2, problem + 3]
        assert number.gold == str(problem + 1) and f"{letter.gold}: {problem + 1}\n" in letter.context
    # the table puts each figure's reference and compass values side by side, every version's accuracy below
    table = demo.protocol_table({"cma_basics.reference.accuracy": 0.5, "cma_basics.reference.v1_0-0_1.accuracy": 0.25,
                                 "cma_basics.reference.v1_0-0_1.n": 3, "cma_basics.compass.accuracy": 0.5})
    lines = table.splitlines()
    assert lines[1].split()[-2:] == ["(SFT+DPO)", "compass"] and lines[2].split() == ["accuracy", "0.500", "0.500"]
    assert lines[3].split() == ["v1_0-0_1.accuracy", "0.250", "-"] and "v1_0-0_1.n" not in table


def test_a_job_without_lm_evals_own_tasks_needs_task_files():
    from compass.evals.lm_harness import run_job
    from compass.evals.registry import LmEvalJob

    with pytest.raises(CompassError, match="builtin_tasks=False needs an include_path"):
        run_job(None, LmEvalJob(tasks=("cma_basics",), builtin_tasks=False), seed=0)


def test_cpa_audit_xlsx_reads_as_the_harness_dataset_script_does(tmp_path):
    """The layout of the harness's jlm_fin_eval/datasets/cpa/CPA_AUDIT.xlsx (index column, q_no, question,
    statements ア..カ, a_no, choices 1..6, abnormal_flg; rows of our own): rows without a question or with
    abnormal_flg 1 are skipped, ids count the kept rows, empty statements leave the context, answer is a_no - 1.
    (On the real file: 398 rows.)"""
    from openpyxl import Workbook

    sheet_rows = [
        ["", "q_no", "question", "ア", "イ", "ウ", "エ", "オ", "カ", "a_no", 1, 2, 3, 4, 5, 6, "abnormal_flg"],
        ["R9_1", 1, "正しいものの組合せを選びなさい。", "監査人は独立である。", "監査は保証である。", "", None, None, None,
         2, "アイ", "アウ", "アエ", "イウ", "イエ", "ウエ", 0],
        ["R9_1", 2, None, "空の問題", None, None, None, None, None, 1, "a", "b", "c", "d", "e", "f", 0],
        ["R9_1", 3, "異常な問題", "x", None, None, None, None, None, "1,2", "a", "b", "c", "d", "e", "f", 1],
        ["R9_1", 4, "誤っているものを選びなさい。", "ア文", "イ文", "ウ文", "エ文", "オ文", "カ文",
         6, 1, 2, 3, 4, 5, 6, 0],
    ]
    book = Workbook()
    for row in sheet_rows:
        book.active.append(row)
    book.save(tmp_path / "CPA_AUDIT.xlsx")
    rows = finharness.harness_rows("cpa_audit", tmp_path / "CPA_AUDIT.xlsx")
    assert rows == [
        {"id": 0, "question": "正しいものの組合せを選びなさい。", "context": "ア: 監査人は独立である。\nイ: 監査は保証である。",
         "choices": {"id": [0, 1, 2, 3, 4, 5], "text": ["アイ", "アウ", "アエ", "イウ", "イエ", "ウエ"]}, "answer": 1},
        {"id": 1, "question": "誤っているものを選びなさい。",
         "context": "ア: ア文\nイ: イ文\nウ: ウ文\nエ: エ文\nオ: オ文\nカ: カ文",
         "choices": {"id": [0, 1, 2, 3, 4, 5], "text": ["1", "2", "3", "4", "5", "6"]}, "answer": 5},
    ]
