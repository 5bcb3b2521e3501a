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
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from compass.errors import CompassError
from compass.io import NONE, OK, REJECT, TRANSIENT, Journal, journal_path  # noqa: F401 - the kit's resume journal
from compass.ledger.redact import redact_text

T = TypeVar("T")

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
        yield from journal.outcomes(tag)
    finally:
        journal.close()
