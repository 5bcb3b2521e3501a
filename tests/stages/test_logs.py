"""What `compass sft` prints (in a subprocess, as a user sees it): a plan line, compact step lines and
warnings; no progress bars or library FutureWarnings unless --verbose; a resume line when rerun after an
interruption. Plus the pure pieces: plan warnings, the merge warning, numbers, the run summary table."""
import os
import subprocess
import sys

import pytest

from support.traces import synthetic_trace

from compass.logs import QUIET_ENV, number, result_warnings
from compass.manifest import MANIFEST_NAME
from compass.pipeline import headline, summary_table
from compass.runner import StageResult
from compass.train.session import plan_warnings

NOISE = ("Loading weights", "Writing model shards", "FutureWarning", "it/s]", "{'loss': ")


def compass(args, cwd, home):
    # as outside the test suite: no TQDM_DISABLE, and none of the quiet settings an in-process CLI call of an
    # earlier test left in this process's environment
    env = {k: v for k, v in os.environ.items() if k != "TQDM_DISABLE" and k not in QUIET_ENV}
    env.update(PYTHONPATH=os.pathsep.join(sys.path), COMPASS_HOME=str(home))
    return subprocess.run([sys.executable, "-m", "compass.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_sft_prints_plan_steps_warning_and_resume_without_library_noise(tiny_models, tmp_path):
    data = tmp_path / "traces.jsonl"
    data.write_text("".join(synthetic_trace(i).model_dump_json() + "\n" for i in range(12)))
    out = tmp_path / "sft"
    args = ["sft", "--model", str(tiny_models.llm), "--data", str(data), "--out", str(out), "--max-steps", "4",
            "--global-batch-size", "2", "--logging-steps", "5", "--save-steps", "2", "--keep-checkpoints",
            "--max-length", "128", "--merge"]
    first = compass(args, tmp_path, tmp_path / "home")
    assert first.returncode == 0, first.stderr[-3000:]
    lines = first.stderr.splitlines()
    assert lines[0] == ("plan: 12 examples, 4 optimizer steps, global batch 2 = micro 2 x accumulation 1 x 1 process(es), "
                        "cpu, fp32, lr 0.0002 linear with 1 warmup step(s), loss logged every 5 step(s)"), lines[:3]
    assert "warning: logging_steps 5 > 4 steps: no loss is logged after step 1; set logging_steps to 4 or less" in lines
    steps = [line for line in lines if line.startswith("step ")]
    assert len(steps) == 1 and steps[0].startswith("step 1/4  loss ") and "  lr 0  " in steps[0], steps
    assert lines[-1].startswith("trained to step 4 in ") and " mean loss " in lines[-1]
    for noise in NOISE:
        assert noise not in first.stderr + first.stdout, noise
    # metrics printed compactly: no 16-digit floats
    loss_line = next(line for line in first.stdout.splitlines() if line.startswith("  first_loss: "))
    assert len(loss_line.split(": ")[1]) <= 6, loss_line

    # an interrupted run (no manifest) rerun in the same out dir resumes; --verbose brings the bars back
    (out / MANIFEST_NAME).unlink()
    second = compass(["--verbose", *args], tmp_path, tmp_path / "home")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming from step 4 of 4 (checkpoint-4)" in second.stderr.splitlines()
    assert "Loading weights" in second.stderr


def test_plan_warnings():
    assert plan_warnings(100, 3, 10) == []
    assert plan_warnings(7, 1, 7) == []
    (warmup,) = plan_warnings(3, 3, 1)
    assert warmup.startswith("only 3 optimizer step(s) but 3 warmup step(s)")
    (logging,) = plan_warnings(7, 1, 10)
    assert logging.startswith("logging_steps 10 > 7 steps")
    assert len(plan_warnings(1, 1, 10)) == 1  # one step: nothing after step 1 to log


def test_merge_that_changed_nothing_is_flagged():
    assert result_warnings("merge", {"method": "task_arithmetic", "changed_tensors": 0})
    assert result_warnings("merge", {"method": "task_arithmetic", "changed_tensors": 21}) == []
    assert result_warnings("merge", {"method": "lora", "tensors": 21}) == []
    assert result_warnings("sft", {"changed_tensors": 0}) == []


def test_numbers_and_summary_table():
    assert [number(v) for v in (7.666027069091797, 0.0002, 1.818e-05, 12, 3.0, True, "x")] == \
        ["7.666", "0.0002", "1.818e-05", "12", "3", "True", "x"]

    class M:  # the manifest fields the table reads
        def __init__(self, stage, wall, metrics):
            self.stage, self.wall_time_s, self.metrics = stage, wall, metrics

    results = {
        "sft": StageResult(M("sft", 12.34, {"first_loss": 7.63, "last_loss": 0.0912, "steps": 1100}), None, cached=False),
        "eval_sft": StageResult(M("eval", 3.0, {"problems.accuracy": 0.1, "problems.format_valid_rate": 0.97, "n": 32,
                                                "wall_s": 3.0}), None, cached=True),
    }
    assert headline(results["sft"].manifest.metrics) == "loss 7.63 -> 0.0912 in 1100 steps"
    assert headline(results["eval_sft"].manifest.metrics) == "problems.accuracy 0.1"
    table = summary_table(results).splitlines()
    assert table[0].split() == ["stage", "kind", "state", "time", "result"]
    assert table[1].split()[:4] == ["sft", "sft", "ran", "12.3s"]
    assert table[2].split()[:4] == ["eval_sft", "eval", "cached", "3.0s"]
    assert table[-1] == "2 stage(s): 1 ran (12.3s of stage time), 1 cached"


def test_report_to_passes_through_to_the_trainer_and_tqdm_follows_verbose(tmp_path, monkeypatch):
    from compass.stages.sft import Config
    from compass.train.device import DevicePlan
    from compass.train.session import common_args, plan_line

    plan = DevicePlan(device="cpu", num_processes=1, process_index=0, bf16=False, gradient_checkpointing=False,
                      gradient_accumulation_steps=32)
    monkeypatch.delenv("COMPASS_VERBOSE", raising=False)
    quiet = common_args(Config(), plan, tmp_path)
    assert quiet["report_to"] == "none" and quiet["disable_tqdm"] is True
    assert "gradient_checkpointing" not in quiet and quiet["activation_checkpointing"] is False
    monkeypatch.setenv("COMPASS_VERBOSE", "1")
    loud = common_args(Config(report_to=["tensorboard", "wandb"]), plan, tmp_path)
    assert loud["report_to"] == ["tensorboard", "wandb"] and loud["disable_tqdm"] is False
    assert plan_line(427, 7, plan, Config(), 2, 1) == (
        "plan: 427 examples, 7 optimizer steps, global batch 64 = micro 2 x accumulation 32 x 1 process(es), cpu, fp32, "
        "lr 0.0002 linear with 1 warmup step(s), loss logged every 10 step(s)")
