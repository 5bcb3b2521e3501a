"""`compass card RUN`: a model card (README.md with hub metadata) for the checkpoint a run produced, from the ledger.

Everything in the card comes from the ledger: run records (config, metrics, lineage) and the stored output files
(config.json and safetensors headers give the architecture). Every figure is written as a link to the run that
recorded it, `[0.1234](#run-<id> "metrics.last_loss")`: the text, the run and the key it was read from. `compass card
--check CARD.md` reads those links back and re-derives each figure from the ledger; a figure that no run supports
(edited, or its run missing) fails the check with its line.

Keys: `config.<dotted path>` and `metrics.<dotted path>` of a run's manifest; `arch.config.<key>` from the checkpoint's
config.json, `arch.params.<part>` / `arch.params.total` counted from its safetensors headers.
"""
from __future__ import annotations

import argparse
import json
import re
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compass.errors import CompassError
from compass.ledger.flat import as_text, flatten
from compass.ledger.index import Index, RunRow
from compass.ledger.store import ContentStore
from compass.ledger.workspace import Workspace

EXAMPLE = "compass card 3f2a1b9c --out card/README.md --license apache-2.0 --base-model llm-jp/llm-jp-4-8b"
CHECK_EXAMPLE = "compass card --check card/README.md"

ID_CHARS = 12  # run ids in anchors and links: short to read, long enough not to collide
FIGURE = re.compile(r"\[(?P<text>(?:\\.|[^\]\\\n])*)\]\(#run-(?P<run>[0-9a-f]{%d}) \"(?P<key>[^\"\n]+)\"\)" % ID_CHARS)
# where a stage keeps the checkpoint it produced (first output that exists wins)
CHECKPOINT_OUTPUTS = ("merged", "model", "vlm", "llm")
TRAINING_STAGES = ("sft", "dpo", "merge", "compose", "decompose")
DATA_STAGES = ("sources", "sft-sources", "preference-sources", "decontaminate", "distill", "pairs", "pdf-fixtures",
               "pages", "evidence", "doc-traces", "doc-questions")
ARCH_KEYS = ("model_type", "architectures", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
             "num_key_value_heads", "vocab_size", "max_position_embeddings", "torch_dtype", "dtype", "tie_word_embeddings")


# --- reading figures ---------------------------------------------------------------------------------------


@dataclass
class Ledger:
    index: Index
    store: ContentStore
    runs: dict[str, RunRow] = field(default_factory=dict)

    @classmethod
    def open(cls, home: Path | None = None) -> "Ledger":
        workspace = Workspace.current(home)
        return cls(Index(workspace.index_db, create=False), ContentStore(workspace.store_dir))

    def run(self, ref: str) -> RunRow:
        if ref not in self.runs:
            row = self.index.resolve(ref)
            self.runs[ref] = row
        return self.runs[ref]


def checkpoint_files(ledger: Ledger, run: RunRow) -> tuple[str, dict[str, str]]:
    """(output folder, {path inside it: sha256}) of the checkpoint a run wrote."""
    outs = {path: sha for _, _, path, sha, _ in ledger.index.files(run.run_id, "out")}
    for folder in CHECKPOINT_OUTPUTS:
        files = {path[len(folder) + 1:]: sha for path, sha in outs.items() if path.startswith(folder + "/")}
        if "config.json" in files:
            return folder, files
    raise CompassError(f"run {run.run_id[:ID_CHARS]} ({run.stage} {run.name!r}) wrote no checkpoint (none of "
                       f"{', '.join(f'{c}/' for c in CHECKPOINT_OUTPUTS)} with a config.json); sft/dpo need merge: true")


def _safetensors_header(path: Path) -> dict[str, Any]:
    with open(path, "rb") as fh:
        (length,) = struct.unpack("<Q", fh.read(8))
        return json.loads(fh.read(length))


def _part_of(name: str, config: dict[str, Any]) -> str:
    from compass.models.families import BY_MODEL_TYPE

    family = BY_MODEL_TYPE.get(config.get("model_type", ""))
    if family is not None:
        def under(prefix: str) -> bool:
            bare = prefix.removeprefix("model.")
            return any(name == p or name.startswith(p + ".") for p in (prefix, bare))
        if any(under(p) for p in family.projector):
            return "projector"
        if under(family.vision_tower):
            return "vision_tower"
        if under(family.language_model):
            return "language_model"
    if name.startswith("lm_head."):
        return "lm_head"
    return "language_model" if family is None else "other"


def arch_figures(ledger: Ledger, run: RunRow) -> dict[str, Any]:
    """Architecture figures of a run's checkpoint: config.json keys and parameter counts per part."""
    _, files = checkpoint_files(ledger, run)
    config = json.loads(ledger.store.read_bytes(files["config.json"]))
    out: dict[str, Any] = {}
    for prefix, block in (("", config), ("text_config.", config.get("text_config") or {}),
                          ("vision_config.", config.get("vision_config") or {})):
        for key in ARCH_KEYS:
            if key in block:
                out[f"config.{prefix}{key}"] = block[key]
    counts: dict[str, int] = {}
    dtypes: set[str] = set()
    for path, sha in sorted(files.items()):
        if not path.endswith(".safetensors"):
            continue
        for name, info in _safetensors_header(ledger.store.path(sha)).items():
            if name == "__metadata__":
                continue
            size = 1
            for dim in info["shape"]:
                size *= dim
            part = _part_of(name, config)
            counts[part] = counts.get(part, 0) + size
            dtypes.add(info["dtype"])
    if not counts:
        raise CompassError(f"run {run.run_id[:ID_CHARS]}: its checkpoint has no safetensors weights")
    for part, count in sorted(counts.items()):
        out[f"params.{part}"] = count
    out["params.total"] = sum(counts.values())
    out["weights_dtype"] = ", ".join(sorted(dtypes))
    return out


def figure_value(ledger: Ledger, run_ref: str, key: str) -> Any:
    """The ledger's value for a figure key of a run; CompassError when the run or the key is not there."""
    run = ledger.run(run_ref)
    scope, _, rest = key.partition(".")
    if scope == "config":
        values = flatten(run.config)
    elif scope == "metrics":
        values = flatten(run.metrics)
    elif scope == "arch":
        values = arch_figures(ledger, run)
    else:
        raise CompassError(f"unknown figure key {key!r} (config.*, metrics.* or arch.*)")
    if rest not in values:
        raise CompassError(f"run {run.run_id[:ID_CHARS]} has no {key!r}")
    return values[rest]


def figure_text(value: Any) -> str:
    """A figure as the card writes it inside its link: the ledger's one text form, escaped for markdown tables."""
    text = as_text(value).replace("\n", " ")
    for char in "\\[]|":
        text = text.replace(char, "\\" + char)
    return text


def link(run: RunRow, key: str, value: Any) -> str:
    return f'[{figure_text(value)}](#run-{run.run_id[:ID_CHARS]} "{key}")'


# --- the card ---------------------------------------------------------------------------------------------


@dataclass
class CardInputs:
    run: str
    license: str = "other"
    base_model: str | None = None
    title: str | None = None


def lineage_runs(ledger: Ledger, run: RunRow) -> list[tuple[int, RunRow]]:
    """(depth, run) of the run and its ancestors, nearest first."""
    depths = [(0, run.run_id)] + [(d, a) for a, d in ledger.index.ancestors(run.run_id) if a != run.run_id]
    rows = ledger.index.runs_by_ids([a for _, a in depths])
    seen, out = set(), []
    for depth, run_id in sorted(depths, key=lambda item: (item[0], rows[item[1]].recorded_at if item[1] in rows else "")):
        if run_id in rows and run_id not in seen:
            seen.add(run_id)
            out.append((depth, rows[run_id]))
    return out


def eval_runs(ledger: Ledger, models: list[RunRow]) -> list[tuple[RunRow, RunRow]]:
    """(model run, eval run) for the evals whose `model` input is the output of one of `models`, in the order given;
    of several runs of the same eval step on the same model (rerun after a code change) the latest speaks."""
    found = []
    for model in models:
        latest: dict[str, RunRow] = {}
        for child_id in ledger.index.children(model.run_id):
            child = ledger.index.run(child_id)
            if child is None or child.stage != "eval" or (model.run_id, "model") not in ledger.index.parents(child_id):
                continue
            if child.name not in latest or child.recorded_at > latest[child.name].recorded_at:
                latest[child.name] = child
        found += [(model, run) for run in sorted(latest.values(), key=lambda r: r.recorded_at)]
    return found


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines + [""]


def _run_ref(run: RunRow) -> str:
    return f"[{run.stage} `{run.run_id[:8]}`](#run-{run.run_id[:ID_CHARS]})"


def _hub_datasets(runs: list[RunRow]) -> list[str]:
    from compass.data.sources import SOURCES

    found: list[str] = []
    for run in runs:
        if run.stage == "sources":
            for entry in run.config["datasets"]:
                if entry["path"] is None:
                    found.append(entry["hub_id"] or SOURCES[entry["name"]].hub_id)
        elif run.stage in ("sft-sources", "preference-sources"):
            found += [report["hub_id"] for report in run.metrics["sources"].values() if "hub_id" in report]
        elif run.stage == "sft" and "sources" in run.metrics:  # an SFT run on a `mix` of datasets
            found += [report["hub_id"] for report in run.metrics["sources"].values() if "hub_id" in report]
    return sorted(dict.fromkeys(h for h in found if h))


def _languages(runs: list[RunRow]) -> list[str]:
    langs: set[str] = set()
    for run in runs:
        if run.stage == "sources":
            langs |= set(run.metrics["langs"])
    return sorted(langs) or ["en"]


def _front_matter(inputs: CardInputs, runs: list[RunRow], vision: bool) -> list[str]:
    import yaml

    stages = {run.stage for run in runs}
    tags = ["compass"] + [t for t in ("sft", "dpo", "lora", "trl", "peft") if t in stages or
                          (t in ("lora", "trl", "peft") and stages & {"sft", "dpo"})]
    meta: dict[str, Any] = {"license": inputs.license}
    if inputs.base_model:
        meta["base_model"] = inputs.base_model
    datasets = _hub_datasets(runs)
    if datasets:
        meta["datasets"] = datasets
    meta.update(language=_languages(runs), library_name="transformers",
                pipeline_tag="image-text-to-text" if vision else "text-generation", tags=tags)
    return ["---", yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).rstrip(), "---", ""]


def _numeric_items(values: dict[str, Any]) -> list[tuple[str, Any]]:
    return [(k, v) for k, v in flatten(values).items() if isinstance(v, (int, float)) and not isinstance(v, bool)]


def build_card(ledger: Ledger, inputs: CardInputs) -> str:
    run = ledger.run(inputs.run)
    folder, _ = checkpoint_files(ledger, run)
    lineage = lineage_runs(ledger, run)
    runs = [r for _, r in lineage]
    arch = arch_figures(ledger, run)
    vision = "params.vision_tower" in arch
    title = inputs.title or f"{run.name} ({run.stage})"
    lines = _front_matter(inputs, runs, vision)
    lines += [f"# {title}", "",
              f"Written by `compass card` from the run ledger alone. Every figure links to the run that recorded it "
              f"(see [Runs](#runs)); `compass card --check README.md` re-derives each one from the ledger.", "",
              "## Model details", "",
              f"- checkpoint: `{folder}/` written by {_run_ref(run)} ('{run.name}'), recorded {run.recorded_at}",
              f"- code: commit `{run.code_commit or 'unknown'}`" + (" (uncommitted changes)" if run.code_dirty else ""),
              f"- recipe: `{run.recipe}`" if run.recipe else "- recipe: none (stages run one by one)", ""]

    # architecture
    lines += ["## Architecture", ""]
    part_rows = [(part.removeprefix("params."), link(run, f"arch.{part}", value)) for part, value in arch.items()
                 if part.startswith("params.")]
    lines += _table(("part", "parameters"), part_rows)
    lines += _table(("config", "value"), [(k.removeprefix("config."), link(run, f"arch.{k}", v)) for k, v in arch.items()
                                          if k.startswith("config.")] + [("weights dtype", link(run, "arch.weights_dtype", arch["weights_dtype"]))])

    # training procedure: every hyperparameter of every training stage in the lineage
    lines += ["## Training procedure", ""]
    chronological = sorted(runs, key=lambda r: r.recorded_at)
    for stage_run in chronological:
        if stage_run.stage not in TRAINING_STAGES:
            continue
        lines += [f"### {stage_run.name} ({stage_run.stage}) {_run_ref(stage_run)}", ""]
        lines += _table(("hyperparameter", "value"),
                        [(k, link(stage_run, f"config.{k}", v)) for k, v in flatten(stage_run.config).items()])
        results = _numeric_items(stage_run.metrics)
        if results:
            lines += _table(("result", "value"), [(k, link(stage_run, f"metrics.{k}", v)) for k, v in results])

    # data
    lines += ["## Training data", ""]
    for data_run in chronological:
        if data_run.stage not in DATA_STAGES:
            continue
        lines += [f"### {data_run.name} ({data_run.stage}) {_run_ref(data_run)}", ""]
        lines += _data_section(data_run)

    # evaluation
    evals = eval_runs(ledger, chronological)  # earliest checkpoint first: base, SFT, DPO, ...
    lines += ["## Evaluation", ""]
    if not evals:
        lines += ["No evaluation run of this checkpoint or its ancestors is in the ledger.", ""]
    for task, columns in _eval_tables(evals).items():
        lines += [f"### {task}", ""]
        keys = sorted({k for _, _, metrics in columns for k in metrics})
        header = ("metric",) + tuple(f"{model.name} ({e.name})" for model, e, _ in columns)
        rows = [(key,) + tuple(link(e, f"metrics.{task}.{key}", metrics[key]) if key in metrics else "-"
                               for _, e, metrics in columns) for key in keys]
        lines += _table(header, rows)

    # lineage and reproduction
    lines += ["## Lineage", "", "Each run, then the runs whose outputs it read (and through which input):", ""]
    lines += _lineage_tree(ledger, run)
    lines += ["", "## Reproducing", "",
              "Each figure above comes from one run; this reruns it from its recorded config and input bytes and "
              "compares outputs and metrics:", ""]
    for _, row in lineage + [(0, e) for _, e in evals]:
        lines.append(f"- {row.name} ({row.stage}): `compass runs reproduce {row.run_id[:ID_CHARS]}`")
    if run.recipe:
        lines += ["", f"The whole chain: `compass run {run.recipe}`."]
    lines += ["", "## Limitations", "",
              "The figures describe exactly the data and evaluations listed here; the card claims nothing beyond them. "
              "Evaluation sets were held out by the decontamination runs listed under Training data, where present.", "",
              "## Runs", ""]
    for row in runs + [e for _, e in evals]:
        lines.append(f'- <a id="run-{row.run_id[:ID_CHARS]}"></a>`{row.run_id}` {row.stage} \'{row.name}\', '
                     f"recorded {row.recorded_at}, commit `{(row.code_commit or 'unknown')[:12]}`")
    return "\n".join(lines) + "\n"


def _lineage_tree(ledger: Ledger, run: RunRow) -> list[str]:
    lines: list[str] = []
    shown: set[str] = set()

    def walk(row: RunRow, port: str | None, depth: int) -> None:
        via = f" via `{port}`" if port else ""
        if row.run_id in shown:
            lines.append(f"{'  ' * depth}- {row.name} ({row.stage}){via} {_run_ref(row)}, as above")
            return
        shown.add(row.run_id)
        lines.append(f"{'  ' * depth}- {row.name} ({row.stage}){via} {_run_ref(row)}")
        parents = ledger.index.parents(row.run_id)
        found = ledger.index.runs_by_ids([p for p, _ in parents])
        for parent_id, parent_port in parents:
            if parent_id in found:
                walk(found[parent_id], parent_port, depth + 1)

    walk(run, None, 0)
    return lines + [""]


def _data_section(run: RunRow) -> list[str]:
    metrics = flatten(run.metrics)
    lines: list[str] = []
    if run.stage == "pairs":
        weights, strategies = run.config["weights"], run.metrics["strategies"]
        lines += _table(("DPO strategy", "weight", "pairs"),
                        [(name, link(run, f"config.weights.{name}", weights[name]),
                          link(run, f"metrics.strategies.{name}", strategies[name]) if name in strategies else "-")
                         for name in weights]
                        + ([("real preference pairs (share of all)", link(run, "config.preference_ratio", run.config["preference_ratio"]),
                             link(run, "metrics.preference_pairs", run.metrics["preference_pairs"]))]
                           if "preference_pairs" in run.metrics else []))
    if run.stage == "sources":
        for entry in run.config["datasets"]:
            where = entry["path"] or entry["hub_id"] or "(the source's own hub id)"
            lines.append(f"- {entry['name']} split {entry['split'] or 'default'}: {where}")
        for entry in run.config["reasoning_gym"]:
            seed = run.config["seed"] if entry["seed"] is None else entry["seed"]
            lines.append(f"- reasoning-gym {entry['generator']}, seed {seed}")
        lines.append("")
    if run.stage in ("sft-sources", "preference-sources"):
        for name, report in run.metrics["sources"].items():
            where = (f"hub `{report['hub_id']}` split {report['split']}, revision `{report['revision']}`"
                     if "hub_id" in report else ", ".join(f"`{Path(p).name}` sha256 `{s[:12]}`" for p, s in report["files"].items()))
            lines.append(f"- {name}: {where}")
        lines.append("")
    shown = ("strategies.",) if run.stage == "pairs" else ()  # already in the strategy table
    counts = [(k, link(run, f"metrics.{k}", v)) for k, v in metrics.items()
              if isinstance(v, (int, float)) and not isinstance(v, bool) and not k.startswith(("files.", *shown))]
    if counts:
        lines += _table(("count", "value"), counts)
    return lines


def _eval_tables(evals: list[tuple[RunRow, RunRow]]) -> dict[str, list[tuple[RunRow, RunRow, dict[str, Any]]]]:
    """task -> columns (model run, eval run, {metric key under the task: value}); protocols (e.g. cot_on/cot_off,
    lm-eval log-likelihood vs generation) stay rows of their task, so both show where present."""
    tables: dict[str, list] = {}
    for model, run in evals:
        per_task: dict[str, dict[str, Any]] = {}
        for key, value in _numeric_items(run.metrics):
            task, _, rest = key.partition(".")
            if rest:
                per_task.setdefault(task, {})[rest] = value
        for task, metrics in per_task.items():
            tables.setdefault(task, []).append((model, run, metrics))
    return dict(sorted(tables.items()))


# --- check ------------------------------------------------------------------------------------------------


@dataclass
class CheckResult:
    figures: int
    failures: list[str]


def check_card(ledger: Ledger, text: str, where: str = "card") -> CheckResult:
    failures: list[str] = []
    figures = 0
    for lineno, line in enumerate(text.splitlines(), 1):
        for match in FIGURE.finditer(line):
            figures += 1
            written, run_ref, key = match["text"], match["run"], match["key"]
            try:
                value = figure_value(ledger, run_ref, key)
            except CompassError as err:
                failures.append(f"{where}:{lineno}: {written!r} ({key}): no run supports it: {err}")
                continue
            expected = figure_text(value)
            if written != expected:
                failures.append(f"{where}:{lineno}: {key} of run {run_ref} is {expected!r} in the ledger, the card says {written!r}")
    if figures == 0:
        failures.append(f"{where}: no linked figures found (is this a card written by `compass card`?)")
    return CheckResult(figures, failures)


# --- command line -----------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="compass card", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"examples:\n  {EXAMPLE}\n  {CHECK_EXAMPLE}")
    parser.add_argument("run", nargs="?", help="run id (or unique prefix) whose checkpoint the card describes")
    parser.add_argument("--out", type=Path, help="where to write the card, e.g. card/README.md (required with RUN; an "
                        "existing file is replaced)")
    parser.add_argument("--check", type=Path, metavar="CARD.md", help="re-derive every figure of a card from the ledger")
    parser.add_argument("--license", default="other", help="hub license id for the front matter (default: other)")
    parser.add_argument("--base-model", help="hub id of the model the chain started from (front matter base_model)")
    parser.add_argument("--title", help="card title (default: the run's name and stage)")
    parser.add_argument("--home", type=Path, help="ledger workspace (default: $COMPASS_HOME, else the nearest .compass/)")
    return parser


def write_card(ledger: Ledger, inputs: CardInputs, out: Path) -> Path:
    from compass.io import write_text_atomic

    text = build_card(ledger, inputs)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, text)
    return out


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    ledger = Ledger.open(args.home)
    if args.check is not None:
        if args.run:
            raise CompassError("give either RUN (write a card) or --check CARD.md, not both")
        if not args.check.is_file():
            raise CompassError(f"no such card: {args.check}")
        result = check_card(ledger, args.check.read_text(encoding="utf-8"), str(args.check))
        for failure in result.failures:
            print(failure, file=sys.stderr)
        if result.failures:
            print(f"card check failed: {len(result.failures)} of {result.figures} figures unsupported", file=sys.stderr)
            return 1
        print(f"card check passed: {result.figures} figures, each re-derived from its run")
        return 0
    if not args.run:
        raise CompassError("give the RUN whose checkpoint the card describes (or --check CARD.md)")
    if args.out is None:
        raise CompassError("give --out PATH for the card (e.g. card/README.md)")
    out = write_card(ledger, CardInputs(args.run, args.license, args.base_model, args.title), args.out)
    print(out)
    return 0
