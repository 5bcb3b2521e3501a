"""The data recipe of a run, from its lineage: the sources, pair strategies and hyperparameters of the
nearest runs of each kind (the run itself included), as the sources / pairs / hparams columns of lists,
leaderboards and the report."""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from compass.ledger.flat import as_number, as_text, flatten, human_size
from compass.ledger.index import Index

# Leaf names of config fields shown as a run's key hyperparameters (leaderboard, report, tags).
HPARAM_LEAVES = {
    "learning_rate", "lr", "num_train_epochs", "epochs", "max_steps", "beta", "loss_type", "r", "lora_r",
    "lora_alpha", "alpha", "per_device_train_batch_size", "micro_batch_size", "batch_size", "global_batch_size",
    "gradient_accumulation_steps", "max_length", "max_seq_length", "warmup_ratio", "scale", "weight", "top_k",
    "threshold", "temperature",
}
HPARAM_STAGES = ("sft", "dpo", "merge", "evidence", "doc-traces", "distill")
SOURCE_STAGES = ("sources", "pdf-fixtures")
PAIR_STAGES = ("pairs",)
MAX_PER_KIND = 4  # summary columns name at most this many runs of one kind (the nearest)


def _describe_weights(config: dict[str, Any]) -> list[str]:
    """Numeric sub-mappings (strategy weights) as 'name 0.34', zero weights as 'name dropped'."""
    parts = []
    for key, value in config.items():
        if isinstance(value, dict) and value and all(as_number(v) is not None for v in value.values()):
            parts += [f"{k} dropped" if as_number(v) == 0 else f"{k} {as_text(v)}" for k, v in value.items()]
    return parts


COUNT_MAPPINGS = ("per_source", "counts", "sources")  # metrics a sources stage reports its pools' sizes under


def _describe_counts(metrics: dict[str, Any]) -> list[str]:
    """Record counts of a sources run: its per-source sizes ('gsm8k 7473') when it reports them, else every
    integer metric ('n_pairs=100', 'counts.gsm8k=50')."""
    for key in COUNT_MAPPINGS:
        if key in metrics and isinstance(metrics[key], dict) and metrics[key]:
            return [f"{name} {as_text(value)}" for name, value in metrics[key].items()]
    parts = []
    for key, value in flatten(metrics).items():
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            parts.append(f"{key}={value}")
    return parts


HELD_OUT_PORT_WORDS = ("eval", "held", "test", "valid")  # an input port named so takes held-out data


def _applies(key: str, value: Any, config: dict[str, Any]) -> bool:
    """Whether a hyperparameter took effect: None never did; epochs do not when max_steps is set; warmup
    does not under a constant schedule."""
    leaf = key.split(".")[-1]
    prefix = key[: -len(leaf)]
    if value is None:
        return False
    if leaf in ("epochs", "num_train_epochs") and config.get(prefix + "max_steps") not in (None, -1, 0):
        return False
    if leaf in ("max_steps",) and value in (-1, 0):
        return False
    if leaf == "warmup_ratio" and config.get(prefix + "lr_scheduler") == "constant":
        return False
    return True


def build_summary(index: Index, run: dict[str, Any], depths: dict[str, int], raw_inputs: list[tuple[str, int]],
                  parents: list[tuple[str, str]] = ()) -> dict[str, str]:
    """The data-recipe columns, from the nearest runs of each kind in the run's lineage (itself included):
    sources, training pairs and held-out pairs (told apart by the input port the pairs entered through),
    the seed of each stage, and the hyperparameters that took effect. `pairs` joins both pair columns,
    labelled. `parents` are the run's own (parent id, port) edges (not yet in the index)."""
    lineage: list[tuple[int, str, str, dict, dict]] = [(0, run["stage"], run["name"], run["config"], run["metrics"])]
    # only the ancestors that can speak: the nearest few of each kind the columns read (lineages can be long)
    wanted = SOURCE_STAGES + PAIR_STAGES + HPARAM_STAGES
    kinds: dict[str, str] = {}
    ancestor_ids = [r for r in depths if r != run["run_id"]]
    kinds.update(index.stages_of(ancestor_ids, wanted))
    per_kind: Counter[str] = Counter()
    chosen = []
    for run_id in sorted(kinds, key=lambda r: (depths[r], r)):
        per_kind[kinds[run_id]] += 1
        if per_kind[kinds[run_id]] <= MAX_PER_KIND:
            chosen.append(run_id)
    lineage_ids = [(*lineage[0], run["run_id"])]
    for run_id, row in index.runs_by_ids(chosen).items():
        lineage.append((depths[run_id], row.stage, row.name, row.config, row.metrics))
        lineage_ids.append((depths[run_id], row.stage, row.name, row.config, row.metrics, run_id))
    lineage.sort(key=lambda item: (item[0], item[1], item[2]))
    lineage_ids.sort(key=lambda item: (item[0], item[1], item[2]))

    sources = []
    for _, stage, name, config, metrics in lineage:
        if stage in SOURCE_STAGES:
            counts = _describe_counts(metrics)
            sources.append(f"{name}: {', '.join(counts[:8]) if counts else 'no counts'}")
    sources += [f"{Path(path).name} ({human_size(size)})" for path, size in raw_inputs]

    edges = list(parents) + [(parent, port) for _, parent, port in index.parent_edges([r for r in depths if r != run["run_id"]])]
    training, held_out = [], []
    for _, stage, name, config, metrics, run_id in lineage_ids:
        if stage in PAIR_STAGES:
            ports = {port for parent, port in edges if parent == run_id}
            text = ", ".join(_describe_weights(config)) or name
            if any(word in port for port in ports for word in HELD_OUT_PORT_WORDS):
                held_out.append(text)
            if not ports or any(not any(word in port for word in HELD_OUT_PORT_WORDS) for port in ports):
                training.append(text)
    pairs = [f"training: {t}" for t in training] + [f"held-out: {t}" for t in held_out]

    seeds, seen_seed = [], set()
    for _, stage, name, config, _, _ in lineage_ids:
        if stage not in seen_seed and "seed" in config:
            seen_seed.add(stage)
            seeds.append(f"{stage} {as_text(config['seed'])}")

    hparams = []
    seen_stage: set[str] = set()
    for _, stage, name, config, _ in lineage:
        if stage not in HPARAM_STAGES or stage in seen_stage:
            continue  # the nearest run of each kind speaks for it
        seen_stage.add(stage)
        flat = flatten(config)
        for key, value in flat.items():
            if key.split(".")[-1] in HPARAM_LEAVES and _applies(key, value, flat):
                hparams.append(f"{stage}.{key}={as_text(value)}")
    return {"sources": "; ".join(sources), "training pairs": "; ".join(training), "held-out pairs": "; ".join(held_out),
            "pairs": "; ".join(pairs), "seeds": ", ".join(seeds), "hparams": " ".join(hparams)}
