"""Sweeps: variants of one recipe that share every stage they don't change (`compass sweep`).

A sweep is named variants (each a set of overrides) crossed with every combination of a grid of axes. An
axis is a path into the recipe, `<stage>.config.<key>[.<key>...]`, or `seed` (the recipe's seed, i.e. every
stage's). The stage graph decides what is shared: an axis *reaches* the stage it sets and everything
downstream of it (by input references). A stage that no axis reaches is one run for all variants; a stage
that some axes reach is one run per distinct combination of *those* axes' values, named
`<stage>__<values>`. So a sweep of the eval's `<cot>` setting retrains nothing, and one of the training data
retrains but re-renders no page.

The expansion is an ordinary recipe, written to WORKDIR/sweep.yaml (run it with `compass run` and you get
the same runs) whose stages carry a `sweep:` block: the sweep's name, the variants that use the stage and
the axis values that reach it. The runner records that block on each run, which is what
`compass runs table` reads. WORKDIR/sweep.json maps each variant to its stage directories.
"""
from __future__ import annotations

import copy
import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from compass.config import Recipe, Sweep, SweepVariant, load_recipe
from compass.errors import CompassError
from compass.io import write_json_atomic, write_text_atomic

SWEEP_RECIPE = "sweep.yaml"
SWEEP_INDEX = "sweep.json"
VARIANT_AXIS = "variant"  # the named variants, as one axis whose value is the variant's name
SEED_AXIS = "seed"


@dataclass(frozen=True)
class Variant:
    name: str
    values: dict[str, Any]  # axis -> value ('variant' -> name for a named variant; a grid path -> value)


@dataclass(frozen=True)
class Expansion:
    recipe: dict[str, Any]  # the expanded recipe, as YAML data
    variants: list[Variant]
    stage_of: dict[str, dict[str, str]]  # variant name -> recipe stage name -> expanded stage name
    axes: dict[str, list[Any]]  # axis -> its values, in order


def parse_set(text: str) -> tuple[str, list[Any]]:
    """One `--set 'PATH=[v1, v2]'`: the axis path and its values (YAML, a non-empty list)."""
    path, sep, values_text = text.partition("=")
    if not sep or not path.strip():
        raise CompassError(f"--set {text!r}: expected PATH=[VALUE, ...], e.g. 'doc_examples.config.top_k=[16, 24]'")
    try:
        values = yaml.safe_load(values_text)
    except yaml.YAMLError as err:
        raise CompassError(f"--set {text!r}: the values are not YAML ({err.problem})") from None
    if not isinstance(values, list) or not values:
        raise CompassError(f"--set {text!r}: the values must be a non-empty YAML list, e.g. [16, 24]; got {values!r}")
    return path.strip(), values


def _axis_stage(axis: str, recipe: Recipe) -> str | None:
    """The stage an axis path sets (None for the seed axis, which sets every stage)."""
    if axis == SEED_AXIS:
        return None
    parts = axis.split(".")
    names = [e.name for e in recipe.stages]
    if len(parts) < 3 or parts[1] != "config":
        raise CompassError(f"sweep axis {axis!r}: expected '<stage>.config.<key>[.<key>...]' or 'seed'")
    if parts[0] not in names:
        from difflib import get_close_matches

        close = get_close_matches(parts[0], names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise CompassError(f"sweep axis {axis!r}: the recipe has no stage {parts[0]!r}{hint}; stages: {', '.join(names)}")
    return parts[0]


def sweep_variants(sweep: Sweep, extra_grid: dict[str, list[Any]]) -> tuple[list[Variant], dict[str, list[Any]]]:
    """Every variant: each named variant (or none) crossed with every combination of the grid."""
    grid = {**sweep.grid, **extra_grid}
    named: list[SweepVariant | None] = list(sweep.variants) or [None]
    axes: dict[str, list[Any]] = {}
    if sweep.variants:
        axes[VARIANT_AXIS] = [v.name for v in sweep.variants]
        duplicates = {v.name for v in sweep.variants if axes[VARIANT_AXIS].count(v.name) > 1}
        if duplicates:
            raise CompassError(f"sweep: duplicate variant name(s) {sorted(duplicates)}")
    axes.update(grid)
    variants = []
    for base in named:
        for combo in itertools.product(*grid.values()):
            values = ({VARIANT_AXIS: base.name} if base is not None else {}) | dict(zip(grid, combo))
            variants.append(Variant(name=variant_label(values, short_names(list(axes))), values=values))
    if len(variants) < 2:
        raise CompassError("sweep: fewer than two variants; give a grid (--set PATH=[a, b]) or named variants")
    return variants, axes


def short_names(axes: list[str]) -> dict[str, str]:
    """The shortest trailing part of each axis path that no other axis shares ('top_k' for
    'doc_examples.config.top_k'); the `variant` and `seed` axes keep their names."""
    shorts = {}
    for axis in axes:
        parts = axis.split(".")
        for n in range(1, len(parts) + 1):
            tail = ".".join(parts[-n:])
            if not any(other != axis and (other == tail or other.endswith("." + tail)) for other in axes):
                break
        shorts[axis] = tail
    return shorts


def _value_label(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"), sort_keys=True)
    text = text.replace(".", "p")
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-") or "x"


def variant_label(values: dict[str, Any], shorts: dict[str, str]) -> str:
    """A name made of values, usable as a directory and stage name: 'mixed_top_k-16'."""
    parts = []
    for axis, value in values.items():
        if axis == VARIANT_AXIS:
            parts.append(value)
        else:
            parts.append(f"{_value_label(shorts[axis])}-{_value_label(value)}")
    return "_".join(parts)


def _set_path(config: dict[str, Any], keys: list[str], value: Any, axis: str) -> None:
    node = config
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise CompassError(f"sweep axis {axis!r}: {key!r} holds {child!r}, not a mapping")
        node = child
    node[keys[-1]] = copy.deepcopy(value)


def _overrides(variant: Variant, sweep: Sweep) -> dict[str, Any]:
    """Axis path -> value for one variant, the named variant's `set` included."""
    out = {}
    for axis, value in variant.values.items():
        if axis == VARIANT_AXIS:
            out.update(next(v for v in sweep.variants if v.name == value).set)
        else:
            out[axis] = value
    return out


def expand(recipe: Recipe, sweep: Sweep, variants: list[Variant], axes: dict[str, list[Any]], sweep_name: str) -> Expansion:
    tables = [t.model_dump() for t in sweep.tables]
    stage_names = [e.name for e in recipe.stages]
    # which axes reach which stage: the paths a stage's config is set by, and those of its upstream stages
    paths_of_axis: dict[str, list[str]] = {axis: [axis] for axis in axes if axis != VARIANT_AXIS}
    if VARIANT_AXIS in axes:
        paths_of_axis[VARIANT_AXIS] = sorted({p for v in sweep.variants for p in v.set})
    direct: dict[str, set[str]] = {name: set() for name in stage_names}
    for axis, paths in paths_of_axis.items():
        for path in paths:
            target = _axis_stage(path, recipe)
            for name in ([target] if target is not None else stage_names):
                direct[name].add(axis)
    reach: dict[str, set[str]] = {}
    for entry in recipe.stages:
        upstream = set()
        for ref in entry.inputs.values():
            head = ref.split(".", 1)[0]
            if head in reach and not ref.startswith(("/", "./", "../")):
                upstream |= reach[head]
        reach[entry.name] = direct[entry.name] | upstream
    axis_order = list(axes)
    shorts = short_names(axis_order)

    stages: list[dict[str, Any]] = []
    by_name: dict[str, dict[str, Any]] = {}
    stage_of: dict[str, dict[str, str]] = {}
    for variant in variants:
        overrides = _overrides(variant, sweep)
        mine: dict[str, str] = {}
        for entry in recipe.stages:
            reaching = {a: variant.values[a] for a in axis_order if a in reach[entry.name]}
            name = entry.name if not reaching else f"{entry.name}__{variant_label(reaching, shorts)}"
            mine[entry.name] = name
            if name in by_name:
                by_name[name]["sweep"]["variants"].append(variant.name)
                continue
            config = copy.deepcopy(entry.config)
            for path, value in overrides.items():
                if path == SEED_AXIS:
                    config["seed"] = value
                elif path.split(".", 1)[0] == entry.name:
                    _set_path(config, path.split(".")[2:], value, path)
            inputs = {}
            for port, ref in entry.inputs.items():
                head, dot, rest = ref.partition(".")
                inputs[port] = (mine[head] + dot + rest) if head in mine and not ref.startswith(("/", "./", "../")) else ref
            stage = {"name": name, "stage": entry.stage, "inputs": inputs, "config": config,
                     "sweep": {"name": sweep_name, "variants": [variant.name], "values": reaching, "axes": axes,
                               "tables": tables}}
            if entry.launch is not None:
                stage["launch"] = entry.launch.model_dump(exclude_defaults=True)
            stages.append(stage)
            by_name[name] = stage
        stage_of[variant.name] = mine
    expanded = {"name": sweep_name, "description": f"compass sweep of recipe {recipe.name!r}: {len(variants)} variants",
                "stages": stages}
    if recipe.seed is not None:
        expanded["seed"] = recipe.seed
    return Expansion(recipe=expanded, variants=variants, stage_of=stage_of, axes=axes)


def plan_sweep(recipe_path: str | Path, sets: list[str]) -> tuple[Recipe, Sweep, Expansion]:
    from compass.packaged import resolve_recipe

    recipe, _doc = load_recipe(resolve_recipe(recipe_path))
    sweep = recipe.sweep or Sweep()
    extra: dict[str, list[Any]] = {}
    for text in sets:
        path, values = parse_set(text)
        extra[path] = values
    for axis in {**sweep.grid, **extra}:
        _axis_stage(axis, recipe)
    for variant in sweep.variants:
        for path in variant.set:
            _axis_stage(path, recipe)
    name = sweep.name or recipe.name
    variants, axes = sweep_variants(sweep, extra)
    return recipe, sweep, expand(recipe, sweep, variants, axes, name)


def write_sweep(expansion: Expansion, workdir: Path, command: str) -> Path:
    """WORKDIR/sweep.yaml (the expanded recipe, starting with the command that made it) and sweep.json."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / SWEEP_RECIPE
    header = f"# {command}\n# generated by compass sweep; `compass run {path.name} --workdir .` runs the same stages\n"
    write_text_atomic(path, header + yaml.safe_dump(expansion.recipe, sort_keys=False, allow_unicode=True))
    write_json_atomic(workdir / SWEEP_INDEX, {
        "sweep": expansion.recipe["name"], "axes": expansion.axes,
        "variants": [{"name": v.name, "values": v.values, "stages": expansion.stage_of[v.name]} for v in expansion.variants],
    })
    return path


def run_sweep(recipe_path: str | Path, workdir: str | Path, sets: list[str], *, command: str, rehash: bool = False,
              dry_run: bool = False, jobs: int = 1, log=print) -> dict:
    """Expand, write and run a sweep; returns the runner's results by expanded stage name ({} on a dry run)."""
    from compass.pipeline import run_recipe

    _recipe, sweep, expansion = plan_sweep(recipe_path, sets)
    workdir = Path(workdir).resolve()
    path = write_sweep(expansion, workdir, command)
    shared = sum(1 for s in expansion.recipe["stages"] if len(s["sweep"]["variants"]) == len(expansion.variants))
    log(f"sweep {expansion.recipe['name']}: {len(expansion.variants)} variants, {len(expansion.recipe['stages'])} stage "
        f"runs ({shared} shared by all variants) -> {path}")
    for variant in expansion.variants:
        log(f"  {variant.name}: " + ", ".join(f"{axis}={value}" for axis, value in variant.values.items()))
    if dry_run:
        return {}
    results = run_recipe(path, workdir, rehash=rehash, jobs=jobs, log=log)
    log(f"tables: compass runs table --sweep {expansion.recipe['name']} --rows AXIS --cols AXIS --metric METRIC")
    return results
