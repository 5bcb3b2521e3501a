"""One training session around a TRL trainer: checkpoints and resume, the TrainingArguments both stages
share, and metrics from the trainer's log history.

Checkpoints go to out_dir/.checkpoints (hidden, so not hashed as outputs). Beside them, run.json holds the
stage context's resume key (config, input hashes, code version): a rerun in the same out_dir resumes from the
latest complete checkpoint (trainer_state.json, which the Trainer writes last, parses) only when the key
matches; otherwise the old checkpoints are removed and training starts over.
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from compass.errors import CompassError
from compass.io import write_json_atomic
from compass.logs import get as get_logger
from compass.logs import is_verbose, number
from compass.train.device import DevicePlan

log = get_logger("train")

CHECKPOINTS = ".checkpoints"
LOG_HISTORY = "log_history.json"


def complete_checkpoints(ckpt_dir: Path) -> list[Path]:
    """checkpoint-N directories whose trainer_state.json (written last) parses, oldest first."""
    found = []
    for path in ckpt_dir.glob("checkpoint-*"):
        suffix = path.name.removeprefix("checkpoint-")
        if not suffix.isdigit() or not (path / "trainer_state.json").is_file():
            continue
        try:
            json.loads((path / "trainer_state.json").read_text())
        except json.JSONDecodeError:
            continue  # killed while writing it
        found.append((int(suffix), path))
    return [p for _, p in sorted(found)]


@dataclass(frozen=True)
class Resume:
    checkpoint: Path | None  # None: a fresh start
    step: int
    tokens_seen: int  # read now: the checkpoint may be rotated away during training


def prepare_checkpoints(out_dir: Path, config, resume_key: str, plan: DevicePlan) -> Resume:
    """Create out_dir/.checkpoints and choose the checkpoint to resume from. Checkpoints written under another
    `resume_key` (the stage context's: config, input hashes, code version) are not this run's and go."""
    from accelerate import PartialState

    ckpt_dir = out_dir / CHECKPOINTS
    run_file = ckpt_dir / "run.json"
    if plan.is_main:
        current = {"resume_key": resume_key}
        previous = json.loads(run_file.read_text()) if run_file.is_file() else None
        if ckpt_dir.exists() and (previous != current or not config.resume):
            shutil.rmtree(ckpt_dir)  # another config or other inputs: those checkpoints are not this run's
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(run_file, current)
    PartialState().wait_for_everyone()
    found = complete_checkpoints(ckpt_dir) if config.resume else []
    if not found:
        return Resume(None, 0, 0)
    state = json.loads((found[-1] / "trainer_state.json").read_text())
    return Resume(found[-1], int(state["global_step"]), int(state["num_input_tokens_seen"]))


def common_args(config, plan: DevicePlan, out_dir: Path) -> dict:
    """TrainingArguments fields shared by SFTConfig and DPOConfig."""
    return dict(
        output_dir=str(out_dir / CHECKPOINTS),
        learning_rate=config.learning_rate,
        per_device_train_batch_size=config.micro_batch_size,
        per_device_eval_batch_size=config.micro_batch_size,
        gradient_accumulation_steps=plan.gradient_accumulation_steps,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps or -1,
        lr_scheduler_type=config.lr_scheduler,
        warmup_steps=config.warmup_ratio,  # a float below 1 is a ratio of the total steps
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        optim="adamw_torch",
        bf16=plan.bf16,
        fp16=False,
        use_cpu=plan.device == "cpu",
        activation_checkpointing=plan.gradient_checkpointing,  # transformers 5's name (gradient_ is deprecated)
        logging_steps=config.logging_steps,
        logging_first_step=True,  # the first loss is a reported metric
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        seed=config.seed,
        # compass streams the metrics into the stage's own MLflow run (train()); these are the user's extra trackers
        report_to=list(config.report_to) or "none",
        disable_tqdm=not is_verbose(),  # compact lines from LogLines instead of a bar and raw dicts
        include_num_input_tokens_seen="non_padding",
        dataloader_num_workers=0,
    )


def train(trainer, resume: Resume, config, plan: DevicePlan):
    """trainer.train() with compass's log lines (a plan line first, a resume line, one compact line per log)
    and the stage's live MLflow run fed as the trainer logs."""
    from transformers.trainer_callback import PrinterCallback

    from compass.ledger.tracking import live_run_for

    trainer.remove_callback(PrinterCallback)  # the raw-dict printer disable_tqdm puts in; LogLines replaces it
    trainer.add_callback(LogLines(len(trainer.train_dataset), resume, config, plan))
    live = live_run_for(Path(trainer.args.output_dir).parent) if plan.is_main else None  # out_dir/.checkpoints
    if live is not None:
        trainer.add_callback(LiveMetrics(live))
    trainer.add_callback(StopAtStepLimit())
    started = time.perf_counter()
    try:
        return trainer.train(resume_from_checkpoint=str(resume.checkpoint) if resume.checkpoint else None)
    except StepLimitReached:
        # resumed from the checkpoint at the last step: its weights are loaded, nothing is left to train
        from transformers.trainer_utils import TrainOutput

        trainer.is_in_train = False
        trainer.control = trainer.callback_handler.on_train_end(trainer.args, trainer.state, trainer.control)
        return TrainOutput(trainer.state.global_step, 0.0, {"train_runtime": time.perf_counter() - started, "train_loss": 0.0})


class StepLimitReached(Exception):
    """The run already holds max_steps optimizer steps (see StopAtStepLimit)."""


# keys of a trainer log entry shown in the compact line, in this order, with their short names (every key
# is in log_history.json and the MLflow run)
LINE_KEYS = {"loss": "loss", "grad_norm": "grad_norm", "learning_rate": "lr", "mean_token_accuracy": "token_acc",
             "rewards/accuracies": "reward_acc", "rewards/margins": "reward_margin", "eval_loss": "eval_loss",
             "eval_rewards/accuracies": "eval_reward_acc", "eval_rewards/margins": "eval_reward_margin", "epoch": "epoch"}


def plan_warnings(steps: int, warmup: int, logging_steps: int) -> list[str]:
    """Schedules that are probably not what the user meant."""
    found = []
    if steps < warmup + 1:
        found.append(f"only {steps} optimizer step(s) but {warmup} warmup step(s): the learning rate never reaches "
                     "its peak; lower warmup_ratio or train longer")
    if steps > 1 and logging_steps > steps:
        found.append(f"logging_steps {logging_steps} > {steps} steps: no loss is logged after step 1; "
                     f"set logging_steps to {steps} or less")
    return found


def plan_line(examples: int, steps: int, plan: DevicePlan, config, micro: int, warmup: int) -> str:
    accumulation = plan.gradient_accumulation_steps
    global_batch = micro * accumulation * plan.num_processes
    precision = "bf16" if plan.bf16 else "fp32"
    return (f"plan: {examples} examples, {steps} optimizer steps, global batch {global_batch} = micro {micro} x "
            f"accumulation {accumulation} x {plan.num_processes} process(es), {plan.device}, {precision}, "
            f"lr {number(config.learning_rate)} {config.lr_scheduler} with {warmup} warmup step(s), "
            f"loss logged every {config.logging_steps} step(s)")


def _callback_base():
    from transformers import TrainerCallback

    return TrainerCallback


class StopAtStepLimit(_callback_base()):
    """The trainer checks max_steps only after a step: resumed from the checkpoint AT max_steps, with batches left
    in the epoch, it would train one step more. This stops it before that step begins (the model then holds the
    checkpoint's weights, the optimizer has not stepped)."""

    def on_step_begin(self, args, state, control, **kwargs):
        if state.max_steps > 0 and state.global_step >= state.max_steps:
            raise StepLimitReached(f"step {state.global_step} of {state.max_steps}")
        return control


class LogLines(_callback_base()):
    """compass's lines from the main process: the plan before step 1, where a resume starts, then one line
    per trainer log entry with a handful of keys and compact numbers."""

    def __init__(self, examples: int, resume: Resume, config, plan: DevicePlan):
        self.examples, self.resume, self.config, self.plan = examples, resume, config, plan

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        warmup = args.get_warmup_steps(state.max_steps)
        log.info(plan_line(self.examples, state.max_steps, self.plan, self.config, args.per_device_train_batch_size, warmup))
        if self.resume.checkpoint is not None:
            log.info(f"resuming from step {state.global_step} of {state.max_steps} ({self.resume.checkpoint.name})")
        for text in plan_warnings(state.max_steps, warmup, args.logging_steps):
            log.warning(f"warning: {text}")

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        if "train_loss" in logs:  # the trainer's closing entry (the mean loss over the run)
            log.info(f"trained to step {state.global_step} in {logs['train_runtime']:.1f}s, mean loss {number(logs['train_loss'])}")
            return
        parts = [f"{short} {number(logs[key])}" for key, short in LINE_KEYS.items() if key in logs]
        log.info(f"step {state.global_step}/{state.max_steps}  " + "  ".join(parts))


class LiveMetrics(_callback_base()):
    """Each trainer log entry into the stage's open MLflow run as it is logged, under the names the ledger's
    history uses (train/loss, ...), so the run's charts grow while it trains."""

    def __init__(self, live):
        from compass.ledger.history import HISTORY_PREFIX

        self.live, self.prefix = live, HISTORY_PREFIX

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            self.live.log_entry(state.global_step, logs, self.prefix)


def loss_metrics(log_history: list[dict], loss_key: str = "loss") -> dict:
    losses = [(entry["step"], entry[loss_key]) for entry in log_history if loss_key in entry]
    if not losses:
        raise CompassError("the trainer logged no loss (fewer steps than logging_steps?)")
    return {"first_loss": losses[0][1], "last_loss": losses[-1][1], "first_loss_step": losses[0][0],
            "last_loss_step": losses[-1][0]}


def finish(trainer, out_dir: Path, train_output, resume: Resume, config, plan: DevicePlan) -> dict:
    """Metrics of the run; rank 0 writes the log history and removes the checkpoints unless kept."""
    from accelerate import PartialState

    state = trainer.state
    runtime = train_output.metrics["train_runtime"]
    tokens = state.num_input_tokens_seen - resume.tokens_seen
    metrics = {
        **loss_metrics(state.log_history),
        "train_loss_mean": train_output.training_loss,
        "steps": state.global_step,
        "resumed_from_step": resume.step,
        "train_tokens": tokens,
        "train_runtime_s": round(runtime, 3),
        "train_tokens_per_s": round(tokens / runtime, 1) if runtime > 0 else None,
        **{f"device.{k}": v for k, v in plan.as_metrics().items() if k != "process_index"},
    }
    if plan.is_main:
        write_json_atomic(out_dir / LOG_HISTORY, state.log_history)
        if not config.keep_checkpoints:
            shutil.rmtree(out_dir / CHECKPOINTS, ignore_errors=False)
    PartialState().wait_for_everyone()
    return metrics
