"""The metric history of a training stage: the trainer's log entries ({"step": 3, "loss": ...}), written by
the SFT/DPO stages as log_history.json (a transformers trainer_state.json works too), as (metric, step, value)."""
from __future__ import annotations

import json
from pathlib import Path

from compass.errors import CompassError
from compass.ledger.flat import as_number

HISTORY_FILES = ("log_history.json", "trainer_state.json")
HISTORY_PREFIX = "train/"


def read_history(out_dir: Path) -> list[tuple[str, int, float]]:
    """(metric, step, value) from the stage's trainer log; entries without a step count by position."""
    for name in HISTORY_FILES:
        path = out_dir / name
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise CompassError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None
        entries = data["log_history"] if isinstance(data, dict) and "log_history" in data else data
        if not isinstance(entries, list):
            raise CompassError(f"{path}: expected a list of log entries, got {type(entries).__name__}")
        points: list[tuple[str, int, float]] = []
        for position, entry in enumerate(entries):
            if not isinstance(entry, dict):
                raise CompassError(f"{path}: entry {position} is {type(entry).__name__}, expected an object")
            step = entry["step"] if isinstance(entry.get("step"), int) else position
            for key, value in entry.items():
                number = as_number(value)
                if key != "step" and number is not None and not isinstance(value, bool):
                    points.append((HISTORY_PREFIX + key, step, number))
        return points
    return []
