"""Stream tasks through a generation backend: results in input order, malformed replies asked again, and a
journal that lets a killed run resume where it stopped.

The backend answers in completion order and keeps every slot busy. Each finished request is appended (and
flushed) to a hidden journal in work_dir as one line: {"i": task index, "a": attempt, "k": ok | reject |
retry | transient, "v": payload}; transient is a server failure: a reject for this run, but not final, so the
next run (the server back) asks again. Round r streams the tasks that need attempt r: in round 0 those never answered, in
round r > 0 those whose attempt r - 1 was malformed. At the end the journal is read back by task index
(one seek per task), so the output order is the input order whatever the server did.

Memory: the requests in flight, plus two small integers per task (its state and the journal offset of its
final line). A restarted run with the same resume key (compass.stagekit.resume_key: config, input hashes, stage
version) reads the journal (a torn last line from a kill is cut off) and sends only what is not finished; a
journal written under another key starts over.
"""
from __future__ import annotations

import dataclasses
import json
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from compass.errors import CompassError
from compass.ledger.redact import redact_text

T = TypeVar("T")

TRANSIENT = "transient"  # journal kind of a server failure: rejected in this run, asked again by the next
NONE, OK, REJECT = -1, 100, 101  # task states; 0..99: the attempt whose reply was malformed (a re-ask is due)


class Journal:
    """The append-only record of finished requests, and the per-task state derived from it."""

    def __init__(self, path: Path, resume_key: str):
        self.path = path
        self.state = array("b")
        self.offset = array("q")
        self.due = Counter()  # attempt -> tasks waiting for a re-ask after it
        self.resumed = 0
        if path.exists():
            self._load(resume_key)
        if not path.exists():
            with open(path, "w", encoding="utf-8") as fh:
                fh.write(json.dumps({"resume_key": resume_key}) + "\n")
        self.fh = open(path, "ab")  # noqa: SIM115 - closed by close(); bytes, so tell() is a byte offset

    def _load(self, resume_key: str) -> None:
        with open(self.path, "rb") as fh:
            data = fh.read()
        end = data.rfind(b"\n") + 1
        lines = data[:end].split(b"\n")[:-1]
        try:
            header = json.loads(lines[0]) if lines else {}
        except json.JSONDecodeError:
            header = {}
        if not isinstance(header, dict) or header.get("resume_key") != resume_key:  # another run's: nothing to reuse
            self.path.unlink()
            return
        if end < len(data):  # a line torn by a kill: cut it off, its request is simply sent again
            with open(self.path, "r+b") as fh:
                fh.truncate(end)
        offset = len(lines[0]) + 1
        for line in lines[1:]:
            entry = json.loads(line)
            if entry["k"] != TRANSIENT:  # a server failure of an earlier run is not final: its task is sent again
                self._set(entry["i"], entry["a"], entry["k"], offset)
            offset += len(line) + 1
        self.resumed = sum(1 for s in self.state if s in (OK, REJECT))

    def _grow(self, index: int) -> None:
        while len(self.state) <= index:
            self.state.append(NONE)
            self.offset.append(-1)

    def _set(self, index: int, attempt: int, kind: str, offset: int) -> None:
        self._grow(index)
        previous = self.state[index]
        if 0 <= previous < OK:
            self.due[previous] -= 1
        if kind == "retry":
            self.state[index] = attempt
            self.due[attempt] += 1
        else:
            self.state[index] = OK if kind == "ok" else REJECT
            self.offset[index] = offset

    def needs(self, index: int, attempt: int) -> bool:
        self._grow(index)
        state = self.state[index]
        return state == NONE if attempt == 0 else state == attempt - 1

    def add(self, index: int, attempt: int, kind: str, value: Any) -> None:
        """kind: ok | reject | retry | transient (a reject for this run that the next run asks again)."""
        offset = self.fh.tell()
        self.fh.write((json.dumps({"i": index, "a": attempt, "k": kind, "v": value}, ensure_ascii=False) + "\n").encode())
        self.fh.flush()  # a kill loses only the requests in flight
        self._set(index, attempt, "reject" if kind == TRANSIENT else kind, offset)

    def read(self, index: int, fh) -> tuple[str, Any]:
        fh.seek(self.offset[index])
        entry = json.loads(fh.readline())
        return ("reject" if entry["k"] == TRANSIENT else entry["k"]), entry["v"]

    def close(self) -> None:
        self.fh.close()


def journal_path(work_dir: Path, tag: str) -> Path:
    return work_dir / f".{tag}-journal.jsonl"


def stream_in_order(
    backend,
    tasks: Callable[[], Iterable[T]],
    request_of: Callable[[T, int], Any],
    parse: Callable[[T, str], Any],
    *,
    malformed: type[Exception],
    retries: int,
    work_dir: Path,
    tag: str,
    resume_key: str,
    dump: Callable[[Any], Any],
    reject: Callable[[T, str, str], dict],
    malformed_reason: str = "malformed",
    stats: dict | None = None,
) -> Iterator[tuple[str, Any]]:
    """("ok", dump(parsed)) or ("reject", reject record) per task, in task order.

    `tasks()` enumerates the same tasks in the same order every time it is called (once per round);
    `request_of(task, attempt)` builds the GenRequest (its id is replaced); `parse` raises `malformed` for a
    reply worth asking again; server failures (after the backend's own HTTP retries) are rejected at once
    with reason backend_error. The journal stays in work_dir: remove it (journal_path) once the outputs
    are final. `stats`, when given, gets resumed (tasks finished by an earlier, interrupted run) and sent
    (requests sent by this run)."""
    from tqdm import tqdm

    if retries >= OK:
        raise CompassError(f"retries must be below {OK}, got {retries}")
    journal = Journal(journal_path(work_dir, tag), resume_key)
    counts = stats if stats is not None else {}
    counts.update(resumed=journal.resumed, sent=0)
    try:
        for attempt in range(retries + 1):
            if attempt > 0 and journal.due[attempt - 1] == 0:
                continue
            in_flight: dict[str, T] = {}

            def requests(attempt=attempt):
                for index, task in enumerate(tasks()):
                    if journal.needs(index, attempt):
                        request = dataclasses.replace(request_of(task, attempt), id=str(index))
                        in_flight[request.id] = task
                        counts["sent"] += 1
                        yield request

            progress = tqdm(backend.generate(requests()), desc=f"{tag} (attempt {attempt + 1})", unit="req")
            for result in progress:
                task = in_flight.pop(result.id)
                index = int(result.id)
                if not result.ok:  # final for this run; a rerun (the server back) asks again
                    journal.add(index, attempt, TRANSIENT, reject(task, "backend_error", redact_text(result.error)))
                    continue
                try:
                    journal.add(index, attempt, "ok", dump(parse(task, result.text)))
                except malformed as err:
                    if attempt == retries:
                        journal.add(index, attempt, "reject",
                                    reject(task, malformed_reason, f"after {attempt + 1} replies: {err}"))
                    else:
                        journal.add(index, attempt, "retry", str(err))
            if in_flight:
                raise CompassError(f"{tag}: the backend left {len(in_flight)} requests unanswered")
        journal.fh.flush()
        with open(journal.path, "rb") as fh:
            for index, state in enumerate(journal.state):
                if state not in (OK, REJECT):
                    raise CompassError(f"{tag}: task {index} has no final outcome (state {state})")
                yield journal.read(index, fh)
    finally:
        journal.close()
