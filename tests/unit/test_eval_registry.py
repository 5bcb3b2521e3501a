"""The eval task registry: the stage's config, inputs, flags and task list come from the benchmark modules."""
import pytest

from compass.evals import registry


def test_every_task_is_registered_once_with_its_block_and_inputs():
    from compass.stages import evaluate

    found = registry.tasks()
    assert sorted(found) == sorted(["gsm8k", "mgsm_ja", "problems", "chabsa", "cma_basics", "cpa_audit", "fp2",
                                    "security_sales_1", "edinet_fraud", "edinet_earnings", "edinet_industry",
                                    "mmlongbench"])
    assert evaluate.TASKS == tuple(found)
    assert {found[t][0].block for t in ("chabsa", "fp2")} == {"finharness"}
    assert found["edinet_industry"][0].block == "edinet" and found["mgsm_ja"][0].block == "mgsm_ja"
    # every block is a nested config field; every task's ports are stage inputs
    for bench in registry.benchmarks():
        assert evaluate.Config.model_fields[bench.block].annotation is bench.config
        for task in bench.tasks:
            assert set(task.inputs) <= set(evaluate.INPUTS)
    assert evaluate.HUB_DEFAULTS["gsm8k"] == "openai/gsm8k:main:test"
    assert "chabsa" not in evaluate.HUB_DEFAULTS  # the harness has no hub dataset


def test_blocks_are_nested_yaml_and_flat_flags(tmp_path):
    from compass.cli import _flag_fields, build_parser
    from compass.config import load_stage_config
    from compass.stages.evaluate import Config

    paths = {path for path, _ in _flag_fields(Config)}
    assert {("mmlongbench", "dpi"), ("edinet", "sheets"), ("finharness", "protocol"), ("gsm8k", "protocol")} <= paths
    assert ("mmlongbench",) not in paths  # the block itself is not a flag; --mmlongbench is the data input
    yaml_file = tmp_path / "eval.yaml"
    yaml_file.write_text("tasks: [mmlongbench]\nmmlongbench: {dpi: 20, max_pages: 4}\n")
    # a flag replaces one key of a block and keeps the others from the file
    config = load_stage_config(Config, yaml_file, {"mmlongbench": {"max_pages": 9}})
    assert (config.mmlongbench.dpi, config.mmlongbench.max_pages) == (20.0, 9)
    args = build_parser().parse_args(["eval", "--out", "o", "--mmlongbench-dpi", "30", "--finharness-protocol", "both"])
    assert args.cfg__mmlongbench__dpi == "30" and args.cfg__finharness__protocol == "both"
    with pytest.raises(ValueError, match="extra"):
        Config.model_validate({"mmlongbench": {"dpj": 3}})


def test_protocols_are_checked_per_task():
    from compass.stages.evaluate import Config

    with pytest.raises(ValueError, match="task problems has no 'reference' protocol"):
        Config.model_validate({"tasks": ["problems"], "problems": {"protocol": "both"}})
    with pytest.raises(ValueError, match="protocol"):
        Config.model_validate({"finharness": {"protocol": "maybe"}})


def test_output_names_carry_the_protocol_unless_compass_alone():
    from pathlib import Path

    from compass.stages.evaluate import Config, contexts

    def names(**blocks):
        config = Config.model_validate({"tasks": ["chabsa"], **blocks})
        ctx = contexts(config, {}, Path("."))[0]
        return [ctx.output_name(p) for p in ctx.protocols()]

    assert names() == ["chabsa"]
    assert names(finharness={"protocol": "reference", "repo": "harness"}) == ["chabsa.reference"]
    assert names(finharness={"protocol": "both", "repo": "harness"}) == ["chabsa.reference", "chabsa.compass"]
    with pytest.raises(ValueError, match="needs repo"):
        names(finharness={"protocol": "both"})


def test_a_new_benchmark_is_one_module(tmp_path, monkeypatch):
    """Dropping a module that exports BENCHMARK into compass.evals is all it takes to register its tasks."""
    import compass.evals

    (tmp_path / "toy_bench.py").write_text(
        "from compass.evals.registry import Benchmark, BenchmarkConfig, EvalTask, Requests\n"
        "from compass.stages import Port\n"
        "class ToySettings(BenchmarkConfig):\n"
        "    size: int = 3\n"
        "BENCHMARK = Benchmark('toy', ToySettings, (EvalTask(name='toy_task', kind='generate',\n"
        "    inputs={'toy_task': Port('toy rows', required=False)}, load=lambda ctx: [],\n"
        "    requests=lambda ctx, items: Requests(), score=lambda ctx, items, answers: [], summary='a toy'),), 'toy')\n")
    monkeypatch.setattr(compass.evals, "__path__", list(compass.evals.__path__) + [str(tmp_path)])
    monkeypatch.setattr(registry, "_FOUND", None)
    found = registry.tasks()
    assert found["toy_task"][0].block == "toy" and found["toy_task"][0].config.model_fields["size"].default == 3
    assert "gsm8k" in found  # the others are still there
    monkeypatch.setattr(registry, "_FOUND", None)  # the next caller rediscovers without the toy
