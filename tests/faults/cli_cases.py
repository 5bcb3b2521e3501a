"""Shared checks of the fault tests: run the `compass` CLI in-process, and look at what a refused run left."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from compass.cli import main
from compass.ledger.index import Index
from compass.ledger.workspace import find_workspace


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    @property
    def error_lines(self) -> list[str]:
        # progress bars (tqdm draws with \r, "NN%|") are not messages
        return [line for line in self.err.replace("\r", "\n").splitlines() if line.strip() and "%|" not in line]


def run_cli(argv: list[str], capsys) -> CliResult:
    capsys.readouterr()
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return CliResult(code, captured.out, captured.err)


def ledger_run_count() -> int:
    db = find_workspace() / "index.db"
    if not db.is_file():
        return 0
    index = Index(db, create=False)
    try:
        return len(index.runs())
    finally:
        index.close()


def tree(root: Path) -> dict[str, bytes]:
    """Every file under root (relative path -> bytes): to compare before and after a refused run."""
    root = Path(root)
    if not root.exists():
        return {}
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def assert_one_line_error(result: CliResult, *needles: str, code: int = 2) -> str:
    assert result.code == code, (result.code, result.err, result.out)
    lines = result.error_lines
    assert len(lines) == 1, lines
    line = lines[0]
    assert line.startswith("error: "), line
    for needle in needles:
        assert needle in line, (needle, line)
    assert "Traceback" not in result.err
    return line


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
