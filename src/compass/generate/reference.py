"""The `reference` teacher: renders a dataset's own solution and answer into the reasoning format.

It is the offline teacher of the demo, and the teacher for datasets that ship worked solutions. It reads
the Problem from `request.meta["problem"]` (a records.Problem) and ignores the messages: the reference
solution becomes <Thinking>, the question <Problem>, the reference answer the \\boxed{} of <Answer>.
"""
from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

from compass.errors import CompassError
from compass.formats import FormatError, render_reasoning
from compass.generate.base import GenRequest, GenResult
from compass.records import Problem


class ReferenceBackend:
    name = "reference"

    def generate(self, requests: Iterable[GenRequest]) -> Iterator[GenResult]:
        for request in requests:
            if "problem" not in request.meta or not isinstance(request.meta["problem"], Problem):
                raise CompassError(f"reference backend: request {request.id!r} carries no Problem in meta['problem']")
            t0 = time.perf_counter()
            problem: Problem = request.meta["problem"]
            text, error = None, None
            if not problem.reference_solution or not problem.reference_solution.strip():
                error = f"problem {problem.id!r} has no reference_solution to render"
            else:
                try:
                    text = render_reasoning(problem.question, problem.reference_solution, problem.reference_answer)
                except FormatError as err:
                    error = f"problem {problem.id!r}: {err}"
            yield GenResult(request.id, text, error, 1, None, time.perf_counter() - t0, "stop" if text else None, request.meta)
