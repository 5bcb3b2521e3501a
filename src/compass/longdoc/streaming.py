"""Stream tasks through a generation backend and get parsed results back in input order, with re-asks.

The backend answers in completion order. Each round streams its tasks through `backend.generate` (which
keeps every slot busy and reads the tasks lazily) and flushes the finished prefix, in order, to a run
file; a reply that fails to parse is asked again in the next round, up to `retries` times, then rejected.
The runs are sorted by task index, so a k-way merge gives the final order in constant memory: what is
held at once is the requests in flight plus the replies that finished ahead of an earlier slow one.
"""
from __future__ import annotations

import dataclasses
import heapq
import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from compass.errors import CompassError

T = TypeVar("T")
R = TypeVar("R")


def stream_in_order(
    backend,
    tasks: Iterable[T],
    request_of: Callable[[T, int], Any],
    parse: Callable[[T, str], R],
    *,
    malformed: type[Exception],
    retries: int,
    work_dir: Path,
    tag: str,
    dump: Callable[[R], dict],
    load: Callable[[dict], R],
    on_reject: Callable[[T, str, str], None],
    malformed_reason: str = "malformed",
) -> Iterator[R]:
    """Parsed results in task order. `request_of(task, attempt)` builds the GenRequest (its id is replaced);
    `parse` raises `malformed` for a reply worth asking again; server failures (after the backend's own
    HTTP retries) are rejected at once with reason backend_error."""
    runs: list[Path] = []
    round_items: Iterable[tuple[int, T]] = enumerate(tasks)
    try:
        for attempt in range(retries + 1):
            last = attempt == retries
            in_flight: dict[str, tuple[int, int, T]] = {}  # request id -> (position in round, task index, task)

            def requests(items=round_items, attempt=attempt):
                for position, (index, task) in enumerate(items):
                    request = dataclasses.replace(request_of(task, attempt), id=str(index))
                    in_flight[request.id] = (position, index, task)
                    yield request

            path = work_dir / f".{tag}-run{attempt}.jsonl"
            runs.append(path)
            retry: list[tuple[int, T]] = []
            buffer: dict[int, tuple[int, T, str, Any]] = {}
            cursor = 0
            with open(path, "w", encoding="utf-8") as fh:
                for result in backend.generate(requests()):
                    position, index, task = in_flight.pop(result.id)
                    if not result.ok:
                        outcome = ("reject", ("backend_error", result.error))
                    else:
                        try:
                            outcome = ("ok", parse(task, result.text))
                        except malformed as err:
                            outcome = (("reject", (malformed_reason, f"after {attempt + 1} replies: {err}")) if last
                                       else ("retry", None))
                    buffer[position] = (index, task, *outcome)
                    while cursor in buffer:  # the finished prefix, in order
                        index_, task_, kind, value = buffer.pop(cursor)
                        cursor += 1
                        if kind == "ok":
                            fh.write(json.dumps({"i": index_, "r": dump(value)}, ensure_ascii=False) + "\n")
                        elif kind == "reject":
                            on_reject(task_, *value)
                        else:
                            retry.append((index_, task_))
            if buffer or in_flight:
                raise CompassError(f"{tag}: the backend left {len(buffer) + len(in_flight)} requests unanswered")
            if not retry:
                break
            round_items = retry
        yield from (load(record) for _, record in heapq.merge(*(_read_run(p) for p in runs), key=lambda x: x[0]))
    finally:
        for path in runs:
            path.unlink(missing_ok=True)


def _read_run(path: Path) -> Iterator[tuple[int, dict]]:
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            item = json.loads(line)
            yield item["i"], item["r"]
