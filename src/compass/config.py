"""Recipe and stage configs. Defaults live only in the pydantic classes; YAML errors name file, key path and line."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, ClassVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from compass.errors import CompassError


class StageConfig(BaseModel):
    """Base of every stage's config: unknown keys are errors, and every run has an explicit seed."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    seed: int = Field(42, description="seed for every random choice the stage makes")

    # fields that change how a run is carried out but never its output bytes (e.g. `workers`): left out of
    # the cache key, so a run with 8 workers is found by a check with 1
    NOT_IN_CACHE_KEY: ClassVar[frozenset[str]] = frozenset()


class ConfigBlock(BaseModel):
    """A nested section of a stage config (e.g. one benchmark's settings in eval): unknown keys are errors; the CLI
    shows its fields as --<section>-<field> flags, and a flag overrides only that key of the section."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


class SlurmLaunch(BaseModel):
    """Submit the stage to Slurm (sbatch) and wait for it; `compass run` streams the job's log and records the run."""

    model_config = ConfigDict(extra="forbid")

    partition: str | None = Field(None, description="sbatch --partition (default: the cluster's default)")
    nodes: int = Field(1, ge=1, description="nodes of one job; more than 1 runs `accelerate launch` on each through srun")
    gpus_per_node: int = Field(0, ge=0, description="GPUs per node (--gpus-per-node); accelerate starts one process per GPU")
    cpus_per_task: int | None = Field(None, ge=1, description="--cpus-per-task (a data stage's default workers)")
    mem: str | None = Field(None, description="--mem, e.g. 64G")
    time: str | None = Field(None, description="--time limit, e.g. 04:00:00")
    account: str | None = Field(None, description="--account")
    qos: str | None = Field(None, description="--qos")
    shards: int = Field(1, ge=1, description="data stages: a job array of this many shards (--shard I/N each), "
                        "gathered into the stage's output when all are done; finished shards are not resubmitted")
    max_parallel: int | None = Field(None, ge=1, description="most array tasks running at once (--array=...%N)")
    main_process_port: int = Field(29500, ge=1, le=65535, description="multi-node: rendezvous port on the first node")
    setup: list[str] = Field(default_factory=list, description="shell lines run before compass in the job, e.g. "
                             "'module load cuda/12.4', 'source .venv/bin/activate'")
    sbatch_args: list[str] = Field(default_factory=list, description="further sbatch options, verbatim, e.g. ['--exclusive']")
    poll_s: float = Field(5.0, gt=0, description="seconds between job state checks while waiting")


class Launch(BaseModel):
    """How the runner launches a stage: in-process, under `accelerate launch` on several processes, or on Slurm."""

    model_config = ConfigDict(extra="forbid")

    accelerate_config: str | None = Field(None, description="path of an accelerate config, e.g. configs/accelerate/zero3.yaml")
    num_processes: int = Field(1, ge=1)
    cpu: bool = Field(False, description="pass --cpu to accelerate launch (gloo, no GPU)")
    slurm: SlurmLaunch | None = Field(None, description="run the stage as a Slurm job (see SlurmLaunch)")


def plain_name(value: str, what: str) -> str:
    """A name that is also a directory name: letters, digits, '-' and '_'."""
    if not value or not all(c.isalnum() or c in "-_" for c in value):
        raise ValueError(f"{what} must be letters, digits, '-' or '_', got {value!r}")
    return value


class StageEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="unique within the recipe; the stage's output directory is WORKDIR/<name>")
    stage: str = Field(description="stage kind, e.g. sft, pairs, compose")
    inputs: dict[str, str] = Field(default_factory=dict, description="input name -> '<stage name>.<output>' or a path")
    config: dict[str, Any] = Field(default_factory=dict)
    launch: Launch | None = None
    sweep: dict[str, Any] | None = Field(None, description="written by `compass sweep` into the recipe it expands: the "
                                         "sweep's name, the variants sharing this stage and the grid values that reach "
                                         "it (recorded on the stage's run)")

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        return plain_name(value, "stage name")


class SweepVariant(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="the variant's name in tables and stage directories (letters, digits, '-', '_')")
    set: dict[str, Any] = Field(description="'<stage>.config.<key>[.<key>...]' (or 'seed') -> value")

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        return plain_name(value, "variant name")


class SweepTable(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rows: str = Field(description="an axis: 'variant', a grid path or its last part, or a key of `values`")
    cols: str
    metric: str = Field(description="metric key; '{axis}' is replaced by the cell's value of a `values` axis")
    values: dict[str, list[Any]] = Field(default_factory=dict, description="axes that live in metric names, e.g. "
                                         "{cot: [on, off]} with metric 'mmlongbench.cot_{cot}.accuracy'")


class Sweep(BaseModel):
    """Variants of a recipe (`compass sweep`): named variants, crossed with every combination of the grid."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, description="default: the recipe's name")
    variants: list[SweepVariant] = Field(default_factory=list)
    grid: dict[str, list[Any]] = Field(default_factory=dict, description="'<stage>.config.<key>' (or 'seed') -> values")
    tables: list[SweepTable] = Field(default_factory=list, description="ablation tables `compass runs table` builds")


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    seed: int | None = Field(None, description="default seed for stages that don't set their own")
    stages: list[StageEntry] = Field(min_length=1)
    sweep: Sweep | None = Field(None, description="variants for `compass sweep` (`compass run` runs the recipe as written)")


# --- YAML with line numbers -------------------------------------------------------------------------


def _node_lines(node: yaml.Node, path: tuple = ()) -> dict[tuple, int]:
    """Map every key path in a composed YAML tree to its 1-based line."""
    lines = {path: node.start_mark.line + 1}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            child = path + (key_node.value,)
            lines.update(_node_lines(value_node, child))
            lines[child] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines.update(_node_lines(item, path + (index,)))
    return lines


MAX_YAML_VALUES = 100_000  # a hand-written recipe has hundreds; an alias bomb expands to billions


def read_utf8(path: Path) -> str:
    """A text file's content; a byte that is not UTF-8 fails naming the file, line and column."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        raise CompassError(f"{path}:{line}: not UTF-8 text (byte 0x{data[err.start]:02x} at column {column}); "
                           "save the file as UTF-8") from None


def check_yaml_tree(root: yaml.Node, path: Path) -> None:
    """Refuse duplicate keys in a mapping (YAML would keep the last one silently), an alias that contains
    itself, and aliases that expand to more than MAX_YAML_VALUES values (each node is counted once, so this is
    linear in the file whatever the expansion)."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        line = node.start_mark.line + 1
        if key in open_nodes:
            raise CompassError(f"{path}:{line}: a YAML alias refers to a value that contains it")
        open_nodes.add(key)
        total = 1
        if isinstance(node, yaml.MappingNode):
            first_line: dict[str, int] = {}
            for key_node, value_node in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                    if key_node.value in first_line:
                        raise CompassError(f"{path}:{key_node.start_mark.line + 1}: duplicate key {key_node.value!r} "
                                           f"(first at line {first_line[key_node.value]}); remove one")
                    first_line[key_node.value] = key_node.start_mark.line + 1
                total += size(key_node) + size(value_node)
        elif isinstance(node, yaml.SequenceNode):
            total += sum(size(item) for item in node.value)
        open_nodes.discard(key)
        if total > MAX_YAML_VALUES:
            raise CompassError(f"{path}:{line}: YAML aliases expand to more than {MAX_YAML_VALUES} values; "
                               "write the values out instead of nesting aliases")
        sizes[key] = total
        return total

    size(root)


class YamlDoc:
    """A parsed YAML file that remembers the line of every key, for error messages."""

    def __init__(self, path: str | Path, text: str | None = None):
        self.path = Path(path)
        if text is None:
            if not self.path.is_file():
                raise CompassError(f"config file not found: {self.path}")
            text = read_utf8(self.path)
        try:
            node = yaml.compose(text, Loader=yaml.SafeLoader)
            if node is not None:
                check_yaml_tree(node, self.path)  # before anything walks or builds the (possibly huge) tree
            self.data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            if isinstance(err, yaml.MarkedYAMLError) and err.problem_mark is not None:
                raise CompassError(f"{self.path}:{err.problem_mark.line + 1}: not valid YAML: {err.problem}") from None
            raise CompassError(f"{self.path}: not valid YAML: {err}") from None
        self.lines = _node_lines(node) if node is not None else {(): 1}
        if self.data is None:
            self.data = {}

    def line_of(self, path: tuple) -> int:
        """Line of the deepest existing prefix of `path` (a missing key reports its parent's line)."""
        for end in range(len(path), -1, -1):
            if path[:end] in self.lines:
                return self.lines[path[:end]]
        return 1

    def error(self, path: tuple, message: str) -> CompassError:
        key = ".".join(str(p) for p in path) or "<top level>"
        return CompassError(f"{self.path}:{self.line_of(path)}: {key}: {message}")

    def validate(self, model: type[BaseModel], data: Any = None, prefix: tuple = ()):
        data = self.data if data is None else data
        try:
            return model.model_validate(data)
        except ValidationError as err:
            raise self._from_validation(err, prefix) from None

    def _from_validation(self, err: ValidationError, prefix: tuple) -> CompassError:
        messages = []
        for item in err.errors():
            path = prefix + tuple(item["loc"])
            messages.append(str(self.error(path, describe_error(item))))
        return CompassError("; ".join(messages))


def describe_error(item: dict) -> str:
    kind = item["type"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "missing required value"
    return f"{item['msg']} (got {item.get('input')!r})"


def format_validation_error(err: ValidationError, origin: str) -> str:
    return "; ".join(
        f"{origin}: {'.'.join(str(p) for p in item['loc']) or '<config>'}: {describe_error(item)}" for item in err.errors()
    )


def config_hash(config: BaseModel) -> str:
    """Hash of the resolved config (every field, defaults included): the stage's cache key, with input hashes."""
    exclude = set(config.NOT_IN_CACHE_KEY) if isinstance(config, StageConfig) else set()
    canonical = json.dumps(config.model_dump(mode="json", exclude=exclude), sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def load_recipe(path: str | Path) -> tuple[Recipe, YamlDoc]:
    doc = YamlDoc(path)
    if not isinstance(doc.data, dict):
        raise doc.error((), f"a recipe must be a mapping with 'name' and 'stages', got {type(doc.data).__name__}")
    return doc.validate(Recipe), doc


def load_stage_config(model: type[StageConfig], path: str | Path | None, overrides: dict[str, Any]) -> StageConfig:
    """A stage config from an optional YAML file, then CLI overrides; validated once, errors with lines."""
    data: dict[str, Any] = {}
    doc = None
    if path is not None:
        doc = YamlDoc(path)
        if not isinstance(doc.data, dict):
            raise doc.error((), f"a stage config must be a mapping, got {type(doc.data).__name__}")
        data = dict(doc.data)
    for key, value in overrides.items():  # a --section-field flag replaces one key of a section, not the section
        if isinstance(value, dict) and key in data and isinstance(data[key], dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    try:
        return model.model_validate(data)
    except ValidationError as err:
        if doc is not None and not overrides:
            raise doc._from_validation(err, ()) from None
        raise CompassError(format_validation_error(err, str(path) if path else "command line")) from None
