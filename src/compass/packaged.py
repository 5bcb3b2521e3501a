"""Recipes that ship inside the package, by name: `compass run tiny` works from an installed wheel, and
`compass recipes copy NAME DIR` writes an editable copy together with the launch configs it refers to.

A recipe's relative `launch.accelerate_config` is read relative to the recipe file first (the packaged
recipes say `configs/accelerate/zero3.yaml`, which sits beside them in the package and in any copy),
then relative to the current directory (recipes written for a checkout's root)."""
from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

from compass.errors import CompassError

RECIPE_DIR = Path(str(resources.files("compass") / "recipes"))
ACCELERATE_DIR = RECIPE_DIR / "configs" / "accelerate"


def recipe_names() -> list[str]:
    return sorted(path.stem for path in RECIPE_DIR.glob("*.yaml"))


def packaged_recipe(name: str) -> Path:
    path = RECIPE_DIR / f"{name}.yaml"
    if not path.is_file():
        raise CompassError(f"no packaged recipe {name!r}; there are {recipe_names()} (`compass recipes` lists them)")
    return path


def resolve_recipe(name_or_path: str | Path) -> Path:
    """A recipe file: an existing path as given, else a packaged recipe's name (`tiny`, `tiny.yaml`)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    stem = path.name.removesuffix(".yaml").removesuffix(".yml")
    if path.parent == Path(".") and stem in recipe_names():
        return packaged_recipe(stem)
    # a path that looks like one of ours from the checkout (recipes/tiny.yaml run outside the clone)
    if path.parent.name == "recipes" and stem in recipe_names():
        return packaged_recipe(stem)
    raise CompassError(f"recipe not found: {name_or_path} (not a file, and not a packaged recipe: {recipe_names()})")


def resolve_launch_config(value: str, recipe_file: Path) -> Path:
    """The accelerate config a recipe names: absolute, else beside the recipe file, else under the cwd."""
    path = Path(value).expanduser()
    if path.is_absolute():
        candidates = [path]
    else:
        candidates = [recipe_file.resolve().parent / path, Path.cwd() / path]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    raise CompassError(f"{recipe_file}: launch.accelerate_config {value!r} not found (looked at "
                       f"{', '.join(str(c) for c in candidates)})")


def launch_configs_of(recipe_file: Path) -> list[str]:
    """The relative accelerate_config paths a recipe's stages name, in order, without repeats."""
    from compass.config import load_recipe

    recipe, _ = load_recipe(recipe_file)
    found: list[str] = []
    for entry in recipe.stages:
        value = entry.launch.accelerate_config if entry.launch is not None else None
        if value and not Path(value).is_absolute() and value not in found:
            found.append(value)
    return found


def describe_recipes() -> list[tuple[str, str, int]]:
    """(name, description, number of stages) of every packaged recipe."""
    from compass.config import load_recipe

    rows = []
    for name in recipe_names():
        recipe, _ = load_recipe(packaged_recipe(name))
        rows.append((name, recipe.description, len(recipe.stages)))
    return rows


def copy_recipe(name: str, dest: Path, *, overwrite: bool = False) -> list[Path]:
    """Write DEST/NAME.yaml and the launch configs it names (same relative paths); returns what was written.
    Refuses to replace existing files unless overwrite: an edited copy is the user's work."""
    source = packaged_recipe(name)
    plan = [(source, dest / source.name)]
    for rel in launch_configs_of(source):
        plan.append((resolve_launch_config(rel, source), dest / rel))
    existing = [str(target) for _, target in plan if target.exists()]
    if existing and not overwrite:
        raise CompassError(f"not overwriting {', '.join(existing)} (pass --force to replace)")
    written = []
    for src, target in plan:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, target)
        written.append(target)
    return written
