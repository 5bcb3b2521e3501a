"""japanese-lm-fin-harness reference protocol, the parts without a model: prompt versions as the harness's run
scripts pair them, the leaderboard's best-of-versions rule, and the prepared task files."""
import json

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
