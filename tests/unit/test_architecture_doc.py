"""docs/ARCHITECTURE.md stays true: every `compass.x` module it names exists, every test file it names
exists, and every top-level module or package of src/compass is named in its layer table."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "ARCHITECTURE.md"


def _exists(module: str) -> bool:
    path = ROOT / "src" / Path(*module.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def test_every_module_named_exists():
    text = DOC.read_text(encoding="utf-8")
    named = set(re.findall(r"`(compass(?:\.[a-z_]+)*)`", text)) | set(re.findall(r"\((compass(?:\.[a-z_]+)+)", text))
    assert len(named) > 30
    missing = sorted(m for m in named if not _exists(m))
    assert not missing, f"docs/ARCHITECTURE.md names modules that do not exist: {missing}"
    tests = set(re.findall(r"`(tests/[\w/]+\.py)`", text))
    assert tests and not [t for t in tests if not (ROOT / t).is_file()]


def test_every_top_level_module_has_a_layer():
    table = DOC.read_text(encoding="utf-8").split("## The record flow")[0]
    tops = {p.stem if p.is_file() else p.name for p in (ROOT / "src" / "compass").iterdir()
            if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").is_file()}
    missing = sorted(t for t in tops if f"`compass.{t}`" not in table)
    assert not missing, f"add these to the layer table of docs/ARCHITECTURE.md (and tests/unit/test_layers.py): {missing}"
