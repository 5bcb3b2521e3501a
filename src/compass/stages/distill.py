"""Teacher traces: Problem records -> verified Trace records in the <Problem>/<Thinking>/<Answer> format.

docs/method.md A, step 0. Each problem is sent `n` times to the teacher with the system prompt of its language
(EN or JA) and the question as the user turn. A reply is parsed and validated, its \\boxed answer compared
with the reference answer (rejection sampling); verified traces are kept, the rest go to rejects.jsonl with
a reason: server_error (every retry failed), no_reference (the reference teacher has no solution to
render), bad_encoding (the reply holds a lone UTF-16 surrogate, which no UTF-8 file can store), empty,
bad_tags, wrong_answer. The stage fails when the reject rate passes `max_reject_rate`.

Resumable through the stage kit's journal (compass.io.Journal): every sample's outcome (a Trace, or a Reject)
is appended and flushed as soon as its answer arrives, so a killed run loses only requests in flight; a rerun
with the same resume key (config, inputs, VERSION) sends only the samples not finished. A server_error reject
is transient (an outage, a timeout): the next run asks it again, so rerunning once the server is back finishes
the job. The outputs are written from the journal at the end, in input order (problem, then sample index),
whatever order the teacher answered in: a resumed run writes the bytes of an uninterrupted one.
"""
from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from compass.data.shards import ShardedStageConfig, ShardRun, concat_files, sum_metrics
from compass.errors import CompassError
from compass.generate.config import BackendKind, OpenAISettings, TransformersSettings
from compass.ledger.redact import redact_text
from compass.stagekit import TRANSIENT, Journal, StageContext, check_reject_rate, journal_path
from compass.stages import Port
from compass.vocab import strip_leading_think

VERSION = 1  # code version of what this stage writes: bump when the same config and inputs would give other bytes
EXAMPLE = ("compass distill --problems problems.jsonl --out distill/ --backend openai "
           "--openai '{base_urls: [http://localhost:8000/v1], model: Qwen/Qwen3-30B-A3B}' --n 2")

INPUTS = {"problems": Port("Problem records: a JSONL file or a directory of *.jsonl shards")}
OUTPUTS = {"traces": "traces", "rejects": "rejects.jsonl"}

JOURNAL_TAG = "distill"  # the resume journal: .distill-journal.jsonl, hidden (not an artifact, not hashed)
SHARD_NAME = "traces-{:05d}.jsonl"

# Told to the teacher only (appended to its system prompt): the Trace's own messages keep the plain docs/method.md
# system prompt, so the student learns to write the format without being told.
FORMAT_INSTRUCTIONS = {
    "en": (
        "Write your whole reply in exactly this structure, with nothing before or after it:\n"
        "<Problem>\n(restate the problem)\n</Problem>\n\n<Thinking>\n(step-by-step reasoning)\n</Thinking>\n\n"
        "<Answer>\n\\boxed{final answer}\n</Answer>"
    ),
    "ja": (
        "回答全体を必ず次の構造だけで書いてください。前後に他の文章を付けないでください：\n"
        "<Problem>\n（問題の言い換え）\n</Problem>\n\n<Thinking>\n（ステップバイステップの推論）\n</Thinking>\n\n"
        "<Answer>\n\\boxed{最終回答}\n</Answer>"
    ),
}

# Reasoning models (Qwen3 without a server-side reasoning parser) put their scratchpad first.

REASONS = ("server_error", "no_reference", "bad_encoding", "empty", "bad_tags", "wrong_answer")
TRANSIENT_REASONS = frozenset({"server_error"})  # asked again by the next run; the others are final


class Config(ShardedStageConfig):
    backend: BackendKind = Field("reference", description="teacher: reference (the dataset's own solution), openai "
                                 "(any OpenAI-compatible server: vLLM, SGLang), transformers (local model)")
    openai: OpenAISettings = Field(default_factory=OpenAISettings, description="settings of the openai backend")
    transformers: TransformersSettings = Field(default_factory=TransformersSettings,
                                               description="settings of the transformers backend")
    teacher: str | None = Field(None, description="teacher id written into every Trace (default: the backend's name, "
                                "e.g. openai:Qwen/Qwen3-30B-A3B)")
    n: int = Field(1, ge=1, description="samples per problem (each its own request and seed)")
    max_tokens: int = Field(4096, ge=1, description="completion token limit per request")
    temperature: float = Field(0.6, ge=0, description="sampling temperature (0: greedy)")
    top_p: float = Field(0.95, gt=0, le=1, description="nucleus sampling mass")
    format_instruction: bool = Field(True, description="append the format instruction to the teacher's system prompt "
                                     "(the Trace's messages keep the plain system prompt)")
    strip_think: bool = Field(True, description="drop a leading <think>...</think> block from replies")
    keep: Literal["verified", "parsed"] = Field("verified", description="verified: keep traces whose answer matches the "
                                                "reference; parsed: also keep well-formed traces with a wrong answer "
                                                "(verified=false)")
    max_reject_rate: float = Field(0.5, ge=0, le=1, description="fail when more than this share of samples is rejected")
    shard_size: int = Field(10000, ge=1, description="Trace records per shard file in traces/")
    answer_timeout_s: int = Field(5, ge=1, description="time limit of one answer comparison (math-verify)")

    @model_validator(mode="after")
    def _consistent(self):
        if self.backend == "openai" and not self.openai.model:
            raise ValueError("backend 'openai' needs openai.model (the name the server serves, e.g. Qwen/Qwen3-30B-A3B)")
        if self.backend == "transformers" and not self.transformers.model_dir:
            raise ValueError("backend 'transformers' needs transformers.model_dir (a local model directory)")
        if self.backend == "reference" and self.n != 1:
            raise ValueError(f"the reference teacher renders one fixed text per problem; n must be 1, got {self.n}")
        if self.n > 1 and self.temperature == 0:
            raise ValueError(f"n={self.n} samples at temperature 0 would be identical; set temperature > 0")
        return self


# --- helpers -------------------------------------------------------------------------------------------


def sample_seed(seed: int, problem_id: str, index: int) -> int:
    """A per-sample seed that depends only on (run seed, problem id, sample index): stable under resume."""
    from compass.io import record_seed

    return record_seed(seed, problem_id, index)


def teacher_messages(problem, format_instruction: bool) -> list[dict]:
    from compass.formats import SYSTEM_PROMPTS

    system = SYSTEM_PROMPTS[problem.lang]
    if format_instruction:
        system = f"{system}\n\n{FORMAT_INSTRUCTIONS[problem.lang]}"
    return [{"role": "system", "content": system}, {"role": "user", "content": problem.question}]


# --- the stage -------------------------------------------------------------------------------------------


def run(config: Config, ctx: StageContext) -> dict:
    inputs, out_dir = ctx.inputs, ctx.out_dir
    from tqdm import tqdm

    from compass.generate import GenRequest, make_backend
    from compass.io import iter_jsonl
    from compass.records import Problem

    # Pass 1: validate every problem and refuse duplicate ids before any request is sent.
    ids: set[str] = set()
    for problem in iter_jsonl(inputs["problems"], Problem):
        if problem.id in ids:
            raise CompassError(f"distill: duplicate problem id {problem.id!r} in {inputs['problems']}")
        ids.add(problem.id)
    if not ids:
        raise CompassError(f"distill: no Problem records in {inputs['problems']}")

    backend = make_backend(config.backend, config.openai, config.transformers)
    teacher = config.teacher or backend.name
    # a shard's units are problems, in input order; task index = (position - start) * n + sample index, the
    # output order
    start, stop = (0, len(ids)) if ctx.shard is None else ctx.shard.bounds(len(ids))
    total = (stop - start) * config.n
    journal = Journal(journal_path(out_dir, JOURNAL_TAG), ctx.resume_key)
    todo = sum(journal.needs(index) for index in range(total))
    sampling = {"max_tokens": config.max_tokens, "temperature": config.temperature, "top_p": config.top_p, "n": config.n}

    def requests() -> Iterator[GenRequest]:
        for position, problem in enumerate(iter_jsonl(inputs["problems"], Problem)):
            if not start <= position < stop:
                continue
            messages = teacher_messages(problem, config.format_instruction)
            for index in range(config.n):
                task = (position - start) * config.n + index
                if not journal.needs(task):
                    continue
                yield GenRequest(
                    id=f"{problem.id}#{index}", messages=messages, max_tokens=config.max_tokens,
                    temperature=config.temperature, top_p=config.top_p, seed=sample_seed(config.seed, problem.id, index),
                    meta={"problem": problem, "index": index, "task": task},
                )

    counts: Counter[str] = Counter()
    bar = tqdm(total=todo, desc="distill", unit="req", mininterval=1.0, dynamic_ncols=True)
    try:
        for result in backend.generate(requests()):
            outcome, record = judge(result, teacher, sampling, config)
            kind = "ok" if outcome == "kept" else TRANSIENT if outcome in TRANSIENT_REASONS else "reject"
            journal.add(result.meta["task"], 0, kind, record.model_dump(mode="json"))
            counts[outcome] += 1
            bar.update(1)
            bar.set_postfix(accept=f"{counts['kept'] / sum(counts.values()):.1%}", refresh=False)
        write_outputs(journal, total, out_dir, config.shard_size)
    finally:
        journal.close()
        bar.close()

    metrics = count_outputs(out_dir, total)
    metrics["teacher"] = teacher
    metrics["backend"] = config.backend
    metrics["generated_this_run"] = sum(counts.values())
    metrics["resumed_records"] = journal.resumed
    metrics["retried_transient"] = journal.retried
    if ctx.shard is None:  # a shard's share is checked with the others' at gather
        check_rejects(config, metrics, out_dir / OUTPUTS["rejects"])
    journal_path(out_dir, JOURNAL_TAG).unlink()  # the outputs are final: the journal is done
    return metrics


def check_rejects(config: Config, metrics: dict, rejects_path: Path | None) -> None:
    reasons = metrics["rejects_by_reason"]
    transient = sum(count for reason, count in reasons.items() if reason in TRANSIENT_REASONS)
    check_reject_rate("distill", metrics["rejects"], metrics["samples"], config.max_reject_rate, what="samples",
                      reasons=reasons, rejects_path=rejects_path, transient=transient if rejects_path else 0)


def gather(config: Config, shards: list[ShardRun], out_dir: Path) -> dict:
    """The shards' traces in shard order, cut again into shard_size files, and their rejects: the unsharded
    files; the reject-rate limit over the whole (server failures in a finished shard are asked again by rerunning
    that shard with --force)."""
    from contextlib import ExitStack

    from compass.io import atomic_open, iter_jsonl_lines

    summed = sum_metrics([s.metrics for s in shards], ["samples", "rejects", "rejects_by_reason", "generated_this_run",
                                                       "resumed_records", "retried_transient"])
    summed["rejects_by_reason"] = {r: summed["rejects_by_reason"][r] for r in REASONS if r in summed["rejects_by_reason"]}
    check_rejects(config, summed, None)  # before anything is written
    concat_files([s.out_dir / OUTPUTS["rejects"] for s in shards], out_dir / OUTPUTS["rejects"])
    traces_dir = out_dir / OUTPUTS["traces"]
    if traces_dir.is_dir():  # what an interrupted gather wrote: rewritten whole
        shutil.rmtree(traces_dir)
    traces_dir.mkdir()
    kept = 0
    with ExitStack() as shard:
        for run in shards:
            if not run.metrics["traces"]:  # a shard whose every sample was rejected wrote no trace file
                continue
            for _, _, line in iter_jsonl_lines(run.out_dir / OUTPUTS["traces"]):
                if kept % config.shard_size == 0:
                    shard.close()  # the full file is renamed into place
                    fh = shard.enter_context(atomic_open(traces_dir / SHARD_NAME.format(kept // config.shard_size)))
                fh.write(line)
                kept += 1
    metrics = count_outputs(out_dir, summed["samples"])
    first = shards[0].metrics
    return {**metrics, "teacher": first["teacher"], "backend": first["backend"],
            **{key: summed[key] for key in ("generated_this_run", "resumed_records", "retried_transient")}}


def write_outputs(journal: Journal, total: int, out_dir: Path, shard_size: int) -> None:
    """traces/traces-NNNNN.jsonl (shard_size traces each) and rejects.jsonl from the journal, in task order;
    each file atomically, so a kill here leaves the journal to write them again from."""
    from contextlib import ExitStack

    from compass.io import atomic_open, dumps_record

    traces_dir = out_dir / OUTPUTS["traces"]
    if traces_dir.is_dir():  # what an earlier attempt wrote: rewritten whole (a shard count may have shrunk)
        shutil.rmtree(traces_dir)
    traces_dir.mkdir()
    kept = 0
    with atomic_open(out_dir / OUTPUTS["rejects"]) as rejects, ExitStack() as shard:
        for kind, value in journal.outcomes("distill", total):
            if kind != "ok":
                rejects.write(dumps_record(value) + "\n")
                continue
            if kept % shard_size == 0:
                shard.close()  # the full shard is renamed into place
                fh = shard.enter_context(atomic_open(traces_dir / SHARD_NAME.format(kept // shard_size)))
            fh.write(dumps_record(value) + "\n")
            kept += 1


def judge(result, teacher: str, sampling: dict, config: Config):
    """Turn one teacher reply into ("kept", Trace) or (reason, Reject)."""
    from compass.formats import SYSTEM_PROMPTS, FormatError, answers_match, parse_reasoning
    from compass.records import Message, Reject, Trace

    problem = result.meta["problem"]
    index = result.meta["index"]
    if result.error is not None:
        reason = "no_reference" if config.backend == "reference" else "server_error"
        return reason, Reject(id=result.id, reason=reason, detail=redact_text(result.error),
                              record={"problem_id": problem.id, "sample": index, "attempts": result.attempts})
    raw = result.text or ""
    bad = lone_surrogate_at(raw)
    if bad is not None:
        # JSON's \ud800 escape decodes to a str no UTF-8 file can hold: reject this reply, keep the rest going
        return "bad_encoding", Reject(
            id=result.id, reason="bad_encoding",
            detail=f"reply holds a lone UTF-16 surrogate {raw[bad]!r} at character {bad} (not valid Unicode text)",
            record={"problem_id": problem.id, "sample": index, "attempts": result.attempts,
                    "raw_output": raw.encode("utf-8", "backslashreplace").decode("utf-8")})
    text = strip_leading_think(raw) if config.strip_think else raw.strip()
    trace = Trace(
        id=result.id, problem_id=problem.id, source=problem.source, lang=problem.lang,
        messages=[Message(role="system", content=SYSTEM_PROMPTS[problem.lang]),
                  Message(role="user", content=problem.question),
                  Message(role="assistant", content=text)],
        raw_output=raw, reference_answer=problem.reference_answer, verified=False, teacher=teacher,
        sampling={**sampling, "seed": sample_seed(config.seed, problem.id, index), "sample_index": index,
                  "attempts": result.attempts, "output_tokens": result.output_tokens,
                  "finish_reason": result.finish_reason},
    )
    if not text:
        return "empty", Reject(id=result.id, reason="empty", detail=f"finish_reason={result.finish_reason}",
                               record=trace.model_dump(mode="json"))
    try:
        parts = parse_reasoning(text)
    except FormatError as err:
        detail = str(err) + (" (output cut at max_tokens)" if result.finish_reason == "length" else "")
        return "bad_tags", Reject(id=result.id, reason="bad_tags", detail=detail, record=trace.model_dump(mode="json"))
    trace.problem_part, trace.thinking, trace.answer_part = parts.problem, parts.thinking, parts.answer
    trace.extracted_answer = parts.boxed
    trace.verified = answers_match(parts.boxed, problem.reference_answer, timeout_s=config.answer_timeout_s)
    if not trace.verified and config.keep == "verified":
        return "wrong_answer", Reject(id=result.id, reason="wrong_answer",
                                      detail=f"answer {parts.boxed!r} does not match reference {problem.reference_answer!r}",
                                      record=trace.model_dump(mode="json"))
    return "kept", trace


def lone_surrogate_at(text: str) -> int | None:
    """Index of the first lone surrogate code point in `text` (what a JSON reply's bare \\ud800 becomes), or None."""
    try:
        text.encode("utf-8")
        return None
    except UnicodeEncodeError as err:
        return err.start


def count_outputs(out_dir: Path, total: int) -> dict:
    """Metrics recounted from the files (so a resumed run reports the whole output, not its last part)."""
    from compass.io import iter_jsonl

    traces_dir = out_dir / OUTPUTS["traces"]
    kept = verified = tokens = 0
    by_source: Counter[str] = Counter()
    if any(traces_dir.glob("*.jsonl")):
        for record in iter_jsonl(traces_dir):
            kept += 1
            verified += bool(record["verified"])
            by_source[record["source"]] += 1
            tokens += record["sampling"]["output_tokens"] or 0
    reasons: Counter[str] = Counter()
    rejects_path = out_dir / OUTPUTS["rejects"]
    if rejects_path.is_file() and rejects_path.stat().st_size:
        for record in iter_jsonl(rejects_path):
            reasons[record["reason"]] += 1
    rejects = sum(reasons.values())
    if kept + rejects != total:
        raise CompassError(f"distill: {kept} traces + {rejects} rejects != {total} samples in {out_dir}; "
                           "the output is incomplete or holds duplicates")
    return {
        "samples": total,
        "traces": kept,
        "verified": verified,
        "rejects": rejects,
        "rejects_by_reason": {reason: reasons[reason] for reason in REASONS if reasons[reason]},
        "acceptance_rate": round(kept / total, 4),
        "reject_rate": round(rejects / total, 4),
        "traces_by_source": dict(sorted(by_source.items())),
        "output_tokens": tokens,
    }
