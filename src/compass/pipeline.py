"""Recipe runner: stages in order, outputs wired to inputs by name, cached stages skipped."""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from compass.config import Recipe, YamlDoc, load_recipe
from compass.errors import CompassError
from compass.ledger.tracking import recipe_experiment, recipe_run
from compass.logs import get as get_logger
from compass.logs import number, result_warnings
from compass.runner import StageResult, execute_stage
from compass.stagekit import LOCK_NAME, DirLock
from compass.stages import STAGES, get_stage


def stage_output_path(workdir: Path, stage_name: str, output: str | None, recipe: Recipe, doc: YamlDoc, where: tuple) -> Path:
    entry = next(e for e in recipe.stages if e.name == stage_name)
    if output is None:
        return workdir / stage_name
    outputs = get_stage(entry.stage).OUTPUTS
    if output not in outputs:
        raise doc.error(where, f"stage '{stage_name}' ({entry.stage}) has no output '{output}'; it has {sorted(outputs)}")
    return workdir / stage_name / outputs[output]


def check_recipe(recipe: Recipe, doc: YamlDoc) -> dict[str, dict]:
    """Validate stage kinds, configs, and input references before anything runs; returns parsed configs."""
    seen: set[str] = set()
    configs = {}
    for index, entry in enumerate(recipe.stages):
        where = ("stages", index)
        if entry.name in seen:
            raise doc.error(where + ("name",), f"duplicate stage name {entry.name!r}")
        try:
            module = get_stage(entry.stage)
        except CompassError as err:
            raise doc.error(where + ("stage",), str(err)) from None
        raw = dict(entry.config)
        if recipe.seed is not None:
            raw.setdefault("seed", recipe.seed)
        configs[entry.name] = doc.validate(module.Config, raw, prefix=where + ("config",))
        for input_name, ref in entry.inputs.items():
            if input_name not in module.INPUTS:
                raise doc.error(where + ("inputs", input_name), f"stage {entry.stage} has no input {input_name!r}; it takes {sorted(module.INPUTS)}")
            head = ref.split(".", 1)[0]
            if ref.startswith(("/", "./", "../")) or head not in {e.name for e in recipe.stages}:
                continue  # a path
            if head not in seen:
                raise doc.error(where + ("inputs", input_name), f"refers to stage {head!r}, which does not run before {entry.name!r}")
        missing = [n for n, port in module.INPUTS.items() if port.required and n not in entry.inputs]
        if missing:
            raise doc.error(where + ("inputs",), f"stage {entry.stage} needs input(s) {missing}")
        seen.add(entry.name)
    return configs


def is_stage_reference(ref: str, stage_names: set[str]) -> bool:
    """'<stage>.<output>' or '<stage>' of a stage in the recipe; anything else is a path (relative to the cwd)."""
    return not ref.startswith(("/", "./", "../", "~")) and ref.partition(".")[0] in stage_names


def check_references(recipe: Recipe, doc: YamlDoc, only: list[str] | None) -> None:
    """Before any stage runs: every --only name is a stage of the recipe, every '<stage>.<output>' names an output
    that stage has, and every path input of a stage that will run exists (a typo gets a "did you mean")."""
    import difflib

    names = [e.name for e in recipe.stages]
    for name in only or []:
        if name not in names:
            close = difflib.get_close_matches(name, names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; its stages are {', '.join(names)}"
            raise CompassError(f"--only {name}: {doc.path} has no stage {name!r}{hint}")
    references = [f"{e.name}.{output}" for e in recipe.stages for output in get_stage(e.stage).OUTPUTS] + names
    for index, entry in enumerate(recipe.stages):
        for input_name, ref in entry.inputs.items():
            where = ("stages", index, "inputs", input_name)
            if not ref.strip():
                raise doc.error(where, "empty input reference; give '<stage>.<output>' or a path")
            head, _, output = ref.partition(".")
            if is_stage_reference(ref, set(names)):
                stage_output_path(Path("."), head, output or None, recipe, doc, where)
                continue
            if (only and entry.name not in only) or Path(ref).expanduser().exists():
                continue
            close = difflib.get_close_matches(ref, references, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else (
                " (relative paths are read from the current directory)" if not Path(ref).is_absolute() else "")
            raise doc.error(where, f"{ref!r} is neither a stage of this recipe nor an existing file or directory{hint}")


def run_recipe(recipe_path: str | Path, workdir: str | Path, **options) -> dict[str, StageResult]:
    """Run a recipe (options: see _run_recipe) holding the workdir's lock: one run per workdir at a time. A
    workdir this call made is removed again when the recipe fails before any stage wrote there."""
    workdir = Path(workdir).resolve()
    existed = workdir.exists()
    with DirLock(workdir, "workdir"):
        try:
            return _run_recipe(recipe_path, workdir, **options)
        except BaseException:
            if not existed and not [p for p in workdir.iterdir() if p.name != LOCK_NAME]:
                (workdir / LOCK_NAME).unlink(missing_ok=True)
                workdir.rmdir()
            raise


def _run_recipe(
    recipe_path: str | Path,
    workdir: str | Path,
    *,
    only: list[str] | None = None,
    rehash: bool = False,
    jobs: int = 1,
    log: Callable[[str], None] = print,
) -> dict[str, StageResult]:
    from compass.packaged import resolve_launch_config, resolve_recipe

    if jobs < 1:
        raise CompassError(f"--jobs must be at least 1, got {jobs}")

    recipe_file = resolve_recipe(recipe_path)
    recipe, doc = load_recipe(recipe_file)
    configs = check_recipe(recipe, doc)
    check_references(recipe, doc, only)  # --only names, stage outputs and input paths, before any stage runs
    # launch configs are found now (beside the recipe, else under the cwd), before any stage runs
    launches = {e.name: e.launch.model_copy(update={"accelerate_config": str(resolve_launch_config(e.launch.accelerate_config, recipe_file))})
                if e.launch is not None and e.launch.accelerate_config else e.launch for e in recipe.stages}
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    stage_names = {e.name for e in recipe.stages}
    results: dict[str, StageResult] = {}
    # MLflow: the recipe's own experiment (unless $MLFLOW_EXPERIMENT_NAME says otherwise), one parent run for
    # this invocation, the stages that run as its children
    with recipe_experiment(recipe.name), recipe_run(recipe.name, str(recipe_path), workdir) as parent:
        def inputs_of(index: int, entry) -> dict[str, Path]:
            inputs = {}
            for input_name, ref in entry.inputs.items():
                head, _, output = ref.partition(".")
                if head in stage_names and not ref.startswith(("/", "./", "../")):
                    inputs[input_name] = stage_output_path(workdir, head, output or None, recipe, doc, ("stages", index, "inputs", input_name))
                else:
                    inputs[input_name] = Path(ref)
            return inputs

        def finished(index: int, entry, result: StageResult, t0: float) -> None:
            state = "cached" if result.cached else f"done in {time.perf_counter() - t0:.1f}s"
            log(f"[{index + 1}/{len(recipe.stages)}] {entry.name}: {state} -> {result.out_dir}")
            for text in result_warnings(entry.stage, result.manifest.metrics):
                get_logger("run").warning(f"warning: {entry.name}: {text}")
            results[entry.name] = result

        todo = [(index, entry) for index, entry in enumerate(recipe.stages) if not only or entry.name in only]
        if jobs == 1:
            for index, entry in todo:
                t0 = time.perf_counter()
                log(f"[{index + 1}/{len(recipe.stages)}] {entry.name} ({entry.stage}) ...")
                result = execute_stage(
                    entry.stage, configs[entry.name], inputs_of(index, entry), workdir / entry.name,
                    name=entry.name, launch=launches[entry.name], recipe=str(recipe_path), rehash=rehash, sweep=entry.sweep,
                )
                finished(index, entry, result, t0)
        else:
            _run_concurrently(todo, jobs, lambda index, entry: (
                (entry.stage, configs[entry.name], inputs_of(index, entry), workdir / entry.name),
                {"name": entry.name, "launch": launches[entry.name], "recipe": str(recipe_path), "rehash": rehash,
                 "sweep": entry.sweep}), finished, stage_names, log, len(recipe.stages))
        parent.log_summary(summary_table(results), {name: {"kind": r.manifest.stage, "cached": r.cached, "run_id": r.manifest.run_id,
                                                    "wall_time_s": r.manifest.wall_time_s} for name, r in results.items()})
    return results


def _stage_in_child(registry: dict[str, str], args: tuple, options: dict) -> StageResult:
    from compass import stages

    stages.STAGES.update(registry)  # the parent's registry, stages registered at run time included
    return execute_stage(*args, **options)


def _run_concurrently(todo: list, jobs: int, call_of, finished, stage_names: set[str], log, total: int) -> None:
    """Run stages whose upstream stages are done, up to `jobs` at once, each in its own process (spawned: a
    stage seeds the process's RNGs and sets torch's threads, so two must not share one). The first failure
    stops new submissions; running stages finish, then it is raised."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    scheduled = {entry.name for _, entry in todo}
    needs = {entry.name: {ref.partition(".")[0] for ref in entry.inputs.values()
                          if is_stage_reference(ref, stage_names)} & scheduled for _, entry in todo}
    pending, running, done = list(todo), {}, set()
    failure: BaseException | None = None
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        while pending or running:
            if failure is None:
                for item in [item for item in pending if needs[item[1].name] <= done][: jobs - len(running)]:
                    pending.remove(item)
                    index, entry = item
                    log(f"[{index + 1}/{total}] {entry.name} ({entry.stage}) ...")
                    args, options = call_of(index, entry)
                    running[pool.submit(_stage_in_child, dict(STAGES), args, options)] = (index, entry, time.perf_counter())
            if not running:
                break
            complete, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in complete:
                index, entry, t0 = running.pop(future)
                try:
                    finished(index, entry, future.result(), t0)
                    done.add(entry.name)
                except BaseException as err:  # kept until the running stages are done, then raised
                    failure = failure or err
    if failure is not None:
        raise failure


def headline(metrics: dict) -> str:
    """A stage's result in a few words: the loss curve of a training run, the accuracies of an eval, else its
    first few numbers."""
    if "first_loss" in metrics and "last_loss" in metrics:
        return f"loss {number(metrics['first_loss'])} -> {number(metrics['last_loss'])} in {metrics['steps']} steps"
    scalars = [(k, v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
               and not k.startswith("device.") and "time" not in k and not k.endswith("_s")]
    scores = [(k, v) for k, v in scalars if k.endswith(("accuracy", ".f1", "reward_accuracy"))]
    return ", ".join(f"{k} {number(v)}" for k, v in (scores or scalars)[:4])


def summary_table(results: dict[str, StageResult]) -> str:
    """The closing table of `compass run`: every stage that ran, cached or not, with its time and headline."""
    rows = [(name, r.manifest.stage, "cached" if r.cached else "ran", f"{r.manifest.wall_time_s:.1f}s", headline(r.manifest.metrics))
            for name, r in results.items()]
    header = ("stage", "kind", "state", "time", "result")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(4)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths)) + "  " + row[4] for row in [header, *rows]]
    total = sum(r.manifest.wall_time_s for r in results.values() if not r.cached)
    ran = sum(1 for r in results.values() if not r.cached)
    lines.append(f"{len(results)} stage(s): {ran} ran ({total:.1f}s of stage time), {len(results) - ran} cached")
    return "\n".join(lines)
