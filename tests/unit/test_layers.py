"""Imports only point down, and no modules import each other in a circle.

Every module under src/compass is read with ast (nothing is imported), every `import compass...` and
`from compass... import ...` is collected, including those inside functions (a cycle hidden in a function
is still a cycle), and each is checked against the layer order below.

The layers, lowest first. A module may import its own layer and any layer below, never one above:
  0 base        errors, io, records, vocab, config, manifest, logs, formats, packaged, hub: words, records,
                files, hashes, the recipes shipped in the package; and compass.stages' own __init__, the
                stage contract (Port, the verb -> module table, loaded by name), which imports only errors
  1 libraries   data, generate, evals, models, train, longdoc, ledger, card/export: domain logic; the
                ledger records and queries runs and knows nothing of the runner or the stages
  2 stages      compass.stages.* (one module per verb) and stagekit (what stages share)
  3 runner      runner, pipeline, worker, sweep, launch/slurm: executing stages, caching, recipes
  4 commands    compass.commands.*: commands that need the runner and the ledger (runs, reproduce, demo tables)
  5 entry       cli, demo, __main__: the command line
A new top-level module or package must be given a layer here (the test names it when it is missing).
"""
from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"

LAYERS: dict[str, int] = {
    "compass": 0,  # the package itself (its __init__)
    "compass.errors": 0, "compass.io": 0, "compass.records": 0, "compass.vocab": 0, "compass.config": 0,
    "compass.manifest": 0, "compass.logs": 0, "compass.formats": 0, "compass.packaged": 0, "compass.hub": 0,
    "compass.data": 1, "compass.generate": 1, "compass.evals": 1, "compass.models": 1, "compass.train": 1,
    "compass.longdoc": 1, "compass.ledger": 1, "compass.card": 1, "compass.export": 1,
    "compass.stages": 2, "compass.stagekit": 2,
    "compass.runner": 3, "compass.pipeline": 3, "compass.worker": 3, "compass.launch": 3, "compass.slurm": 3,
    "compass.sweep": 3,
    "compass.commands": 4,
    "compass.cli": 5, "compass.demo": 5, "compass.__main__": 5,
}
# exact modules whose layer differs from their package's: the stage contract sits below the libraries that
# declare ports with it (the eval task registry), while the stage modules themselves are layer 2
EXACT_LAYERS: dict[str, int] = {"compass.stages": 0}
LAYER_NAMES = ["base", "libraries", "stages", "runner", "commands", "entry"]

# Cycles known today, each with the issue that removes it. When one is gone, its entry must go too
# (test_known_cycles_are_still_there), so this list only shrinks.
KNOWN_CYCLES: dict[frozenset[str], str] = {}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted((SRC / "compass").rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The compass modules `name` imports anywhere in its file (module level or inside functions)."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            # `from compass.data import pairs` imports the submodule compass.data.pairs too
            found |= {f"{target}.{alias.name}" for alias in node.names if f"{target}.{alias.name}" in known}
    return {m for m in found if (m == "compass" or m.startswith("compass.")) and m != name}


def layer_of(name: str) -> int | None:
    """The layer of the longest LAYERS prefix of `name` (compass.ledger.index -> compass.ledger)."""
    if name in EXACT_LAYERS:
        return EXACT_LAYERS[name]
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in LAYERS and (prefix != "compass" or name == "compass"):
            return LAYERS[prefix]
    return None


@functools.cache
def import_graph() -> dict[str, set[str]]:
    modules = all_modules()
    known = set(modules)
    graph = {}
    for name, path in modules.items():
        # an import of a name that is no module (e.g. `import compass.x.y` of a function) counts as its module
        graph[name] = {_nearest_module(m, known) for m in imports_of(name, path, known)} - {name}
    return graph


def _nearest_module(name: str, known: set[str]) -> str:
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in known:
            return ".".join(parts[:end])
    return name


def strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's algorithm, iterative (no recursion limit); components of more than one module are cycles."""
    index_of: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[set[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index_of:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index_of[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in graph:
                    continue
                if child not in index_of:
                    index_of[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index_of[child])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index_of[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(component)
    return found


def test_every_module_has_a_layer():
    missing = sorted(name for name in all_modules() if layer_of(name) is None)
    assert not missing, f"give these modules a layer in tests/unit/test_layers.py LAYERS: {missing}"


def test_imports_point_down():
    graph = import_graph()
    upward = []
    for name, targets in sorted(graph.items()):
        own = layer_of(name)
        for target in sorted(targets):
            theirs = layer_of(target)
            if own is not None and theirs is not None and theirs > own:
                upward.append(f"{name} ({LAYER_NAMES[own]}) imports {target} ({LAYER_NAMES[theirs]})")
    assert not upward, "upward imports:\n  " + "\n  ".join(upward)


def test_no_import_cycles():
    cycles = [c for c in strongly_connected(import_graph()) if frozenset(c) not in KNOWN_CYCLES]
    assert not cycles, "import cycles:\n  " + "\n  ".join(" <-> ".join(sorted(c)) for c in cycles)


def test_known_cycles_are_still_there():
    present = {frozenset(c) for c in strongly_connected(import_graph())}
    gone = [sorted(c) for c in KNOWN_CYCLES if c not in present]
    assert not gone, f"these cycles are gone: remove them from KNOWN_CYCLES: {gone}"


def test_the_walker_sees_function_level_and_relative_imports(tmp_path):
    """The checker itself: an import inside a function and a relative import are both edges, and a cycle
    through them is found (a walker that saw nothing would pass every test above)."""
    pkg = tmp_path / "compass" / "low"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from compass.runner import execute_stage\n")
    (pkg / "b.py").write_text("from .a import f\n")
    (pkg / "c.py").write_text("from . import b\n")
    known = {"compass.low", "compass.low.a", "compass.low.b", "compass.low.c", "compass.runner"}
    assert imports_of("compass.low.a", pkg / "a.py", known) == {"compass.runner"}
    assert imports_of("compass.low.b", pkg / "b.py", known) == {"compass.low.a"}
    assert imports_of("compass.low.c", pkg / "c.py", known) == {"compass.low", "compass.low.b"}
    assert strongly_connected({"x": {"y"}, "y": {"z"}, "z": {"x"}, "w": {"x"}}) == [{"x", "y", "z"}]
    assert layer_of("compass.ledger.index") == 1 and layer_of("compass.commands.runs") == 4
    assert layer_of("compass.unplaced") is None
    assert layer_of("compass.stages") == 0 and layer_of("compass.stages.pairs") == 2


@pytest.mark.parametrize("module", ["compass.ledger.record", "compass.ledger.query", "compass.ledger.index"])
def test_the_ledger_imports_neither_runner_nor_stages(module):
    graph = import_graph()
    assert not {t for t in graph[module] if layer_of(t) >= 2}, graph[module]
