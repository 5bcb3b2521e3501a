"""LoRA DPO with TRL's DPOTrainer on Pair records; the reference is the same model with its adapter disabled.

docs/method.md A step 3: from the SFT-merged LLM, lr 5e-6, global batch 32, micro batch 1, 1 epoch, beta 0.1,
max length 2048; `sft_loss_weight` adds an NLL term on the chosen answers (RPO). With eval_pairs, DPO's
reward accuracy and margin on those held-out pairs are measured once before training (adapter at its
initial, no-op state) and once after. Writes out_dir/adapter, out_dir/merged with `merge: true`, and
out_dir/log_history.json. Resumes like sft; under `accelerate launch` only the main process writes.
"""
from __future__ import annotations

from pathlib import Path

from pydantic import Field

from compass.errors import CompassError
from compass.stages import Port
from compass.stagekit import StageContext, whole_run_training_figures
from compass.train.config import TrainConfig

VERSION = 1  # code version of what this stage writes: bump when the same config and inputs would give other bytes
EXAMPLE = ("compass dpo --model sft/merged --pairs pairs/pairs.jsonl --eval-pairs heldout.jsonl --out dpo/ --merge "
           "--max-steps 30 --global-batch-size 4 --micro-batch-size 2")


class Config(TrainConfig):
    learning_rate: float = Field(5e-6, gt=0, description="peak AdamW learning rate")
    micro_batch_size: int = Field(1, gt=0, description="pairs per device per forward pass")
    global_batch_size: int = Field(32, gt=0, description="pairs per optimizer step over all devices; "
                                   "gradient accumulation = global / (micro x processes)")
    max_length: int = Field(2048, gt=0, description="tokens of prompt + answer; longer ones are cut (start kept)")
    beta: float = Field(0.1, gt=0, description="DPO beta: how far the policy may move from the reference")
    sft_loss_weight: float = Field(
        0.0, ge=0, description="weight of an NLL (SFT) loss on the chosen answers added to the DPO loss (RPO, TRL loss_type "
                               "[sigmoid, sft]): DPO alone can make the chosen answers less likely too, which on few pairs "
                               "breaks the output format; 0 = plain DPO (the recipe's). eval losses include the term")


INPUTS = {
    "model": Port("LLM directory or hub id (owner/name[@revision]) to train, e.g. the merged SFT model", hub_model=True),
    "pairs": Port("Pair records (JSONL file or shard directory)"),
    "eval_pairs": Port("held-out Pair records: reward accuracy and margin before vs after", required=False),
    "chat_template": Port("a chat template file (Jinja) to render with instead of the model's own", required=False),
}
OUTPUTS = {"adapter": "adapter", "merged": "merged", "log_history": "log_history.json"}

EVAL_KEYS = {"loss": "eval_loss", "reward_accuracy": "eval_rewards/accuracies", "reward_margin": "eval_rewards/margins",
             "reward_chosen": "eval_rewards/chosen", "reward_rejected": "eval_rewards/rejected"}


def run(config: Config, ctx: StageContext) -> dict:
    inputs, out_dir = ctx.inputs, ctx.out_dir
    import torch
    from trl import DPOConfig, DPOTrainer

    from compass.train import data as D
    from compass.train import model as M
    from compass.train.device import plan_device
    from compass.train.session import common_args, finish, prepare_checkpoints, train

    plan = plan_device(config)
    kind = M.model_kind(inputs["model"])
    if kind != "llm":
        raise CompassError(f"dpo trains text Pair records on an LLM; {inputs['model']} is a VLM "
                           "(take its LLM out with `compass decompose`)")
    train_pairs = D.read_pairs(inputs["pairs"])
    eval_pairs = D.read_pairs(inputs["eval_pairs"]) if "eval_pairs" in inputs else None
    # DPO needs no assistant mask: the model's own template, or --chat-template's
    tokenizer = M.load_processing_class(inputs["model"], kind, inputs.get("chat_template"), assistant_masks=False)
    resume = prepare_checkpoints(out_dir, config, ctx.resume_key, plan)
    # TRL's config first: under ZeRO-3 it must exist before the model loads, so that loading partitions it
    args = DPOConfig(
        **common_args(config, plan, out_dir),
        beta=config.beta,
        # RPO: DPO's sigmoid loss plus the chosen answers' NLL, weighted
        **(dict(loss_type=["sigmoid", "sft"], loss_weights=[1.0, config.sft_loss_weight]) if config.sft_loss_weight else {}),
        max_length=config.max_length,
        eval_strategy="no",  # held-out pairs are evaluated exactly twice, below
    )
    model = M.load_model(inputs["model"], kind, torch.bfloat16 if plan.bf16 else torch.float32)
    trainer = DPOTrainer(
        model=model, ref_model=None, args=args, train_dataset=D.dpo_dataset(train_pairs),
        eval_dataset=D.dpo_dataset(eval_pairs) if eval_pairs else None, processing_class=tokenizer,
        peft_config=M.lora_config(config, model, kind, []),
    )
    trainable = M.trainable_parameter_count(trainer.model)
    metrics: dict = {"pairs": len(train_pairs), "eval_pairs": len(eval_pairs) if eval_pairs else 0,
                     "trainable_params": trainable}
    if eval_pairs:
        metrics.update(_eval(trainer, "eval_before"))
    output = train(trainer, resume, config, plan)  # compass's log lines and live MLflow metrics around trainer.train
    if eval_pairs:
        metrics.update(_eval(trainer, "eval_after"))

    adapter_dir = out_dir / "adapter"
    trainer.save_model(str(adapter_dir))
    if plan.is_main:
        M.tidy_adapter_dir(adapter_dir)
    trainer.accelerator.wait_for_everyone()
    if config.merge and plan.is_main:
        metrics.update(M.write_merged(inputs["model"], adapter_dir, out_dir / "merged"))
    metrics.update(finish(trainer, out_dir, output, resume, config, plan))
    # a resumed run's trainer counts only its own part: record the whole run's loss mean and tokens
    metrics.update(whole_run_training_figures(trainer.state.log_history, output.training_loss, trainer.state.global_step,
                                              resume.step, trainer.state.num_input_tokens_seen, resume.tokens_seen,
                                              metrics["train_runtime_s"]))
    return metrics


def _eval(trainer, prefix: str) -> dict:
    result = trainer.evaluate()
    return {f"{prefix}.{name}": result[key] for name, key in EVAL_KEYS.items()}
