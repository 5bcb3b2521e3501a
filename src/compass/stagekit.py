"""The stage kit: what every stage run shares, written once.

- Output directories (`claim_out_dir`): compass writes only into a directory that is new, empty, or carries
  its marker file (`.compass-out`, written when compass first takes a directory). It never deletes a file it
  did not write: clearing a finished run removes the files its manifest lists (and compass's own hidden
  bookkeeping), and refuses, naming them, when other files were put there since. An `--out` equal to an
  input, inside an input directory, or holding an input is refused before anything runs, as are `/`, the
  home directory, the current directory and its ancestors (clearing one would take the working area with it).
  An `--out` outside the current directory (`../../x`, /scratch/...) is allowed: the marker rule alone keeps
  whatever is there safe.
- Locks (`DirLock`): a run holds an exclusive lock on its workdir and on each output directory (flock on a
  hidden `.compass.lock` that names the holder's pid, host and start time; removed when the run ends). A second
  run refuses in one line naming the holder; a lock whose holder was killed is released by the kernel and
  simply taken over (flock is per host: two hosts sharing a directory over NFS are not kept apart).
- Cleanup of a failed run (`tidy_failed_out_dir`): empty files and directories, orphan temp files of atomic
  writes and the directory itself when nothing else is left; anything with content stays for the resume.
- The stage context (`StageContext`): what a stage's `run(config, ctx)` gets besides its config: resolved
  input paths, their hashes, the config hash, the stage's code version, rank/world size, shard and out dir,
  and `resume_key`, the one definition of "same config and inputs" for resuming partial work (journals,
  state files). The runner builds it; `run_stage` builds one for a direct call from Python.
- The record sink (`RecordSink`): records and rejects with reasons, written together, counted, gated once.
- The resume journal (`Journal`, defined in compass.io): finished tasks appended and flushed one by one under
  the run's resume key, read back in input order; transient failures asked again by the next run.
"""
from __future__ import annotations

import datetime as dt
import errno
import fcntl
import json
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from compass.errors import CompassError
from compass.io import TRANSIENT, Journal, journal_path  # noqa: F401 - the kit's one resume journal (defined in io,
# below the libraries that stream through it)

if TYPE_CHECKING:
    from compass.data.shards import Shard

MARKER_NAME = ".compass-out"
LOCK_NAME = ".compass.lock"
MANIFEST_NAME = "manifest.json"  # == compass.manifest.MANIFEST_NAME (kept here so this module imports nothing heavy)
# temp files of compass.io.atomic_open / staged_dir: ".<name>.<random>.tmp"
ATOMIC_TEMP = re.compile(r"^\..+\.tmp$")
BOOKKEEPING = frozenset({MARKER_NAME, LOCK_NAME})


# --- the stage context -----------------------------------------------------------------------------------

# Fields a resume may change without invalidating finished work: they decide how results are judged or fetched,
# never what a finished item holds. Top level of every stage config:
RESUME_NEUTRAL = frozenset({"max_reject_rate"})
# ... and inside every OpenAI-compatible endpoint section: where and how fast the same model is asked (a server
# restarted on another host or port, more slots, longer timeouts keep the answers already journalled)
TRANSPORT_NEUTRAL = frozenset({"base_urls", "concurrency", "timeout_s", "max_retries", "backoff_base_s",
                               "backoff_max_s", "api_key_env"})


@dataclass(frozen=True)
class StageContext:
    """Everything a stage run knows besides its config. Stages read inputs and write outputs only through it."""

    kind: str
    inputs: dict[str, Path]  # resolved input paths, by port name
    out_dir: Path
    config_hash: str  # compass.config.config_hash of the config (the cache key's config part)
    input_hashes: dict[str, dict[str, str]]  # port -> {relative file path: sha256}
    stage_version: int  # the stage module's VERSION
    resume_key: str  # see resume_key(): partial work with another key is not this run's
    rank: int = 0  # of the processes `accelerate launch` started for this run
    world_size: int = 1
    shard: Shard | None = None  # compass.data.shards.Shard of a `--shard I/N` run, else None

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes shared outputs and metrics."""
        return self.rank == 0


def resume_key(config, input_hashes: dict[str, dict[str, str]], stage_version: int) -> str:
    """The one definition of "same config and inputs" for resuming partial work: sha256 of the config (less the
    cache key's exclusions, e.g. workers, and the resume-neutral fields above), the input files' hashes and the
    stage's code version. A journal or state file written under another key is started over."""
    import hashlib

    from compass.generate.config import OpenAISettings

    exclude: dict = {name: True for name in (set(config.NOT_IN_CACHE_KEY) | RESUME_NEUTRAL) if name in type(config).model_fields}
    for name in type(config).model_fields:
        if isinstance(getattr(config, name), OpenAISettings):
            exclude[name] = {field: True for field in TRANSPORT_NEUTRAL}
    settings = config.model_dump(mode="json", exclude=exclude)
    blob = json.dumps({"config": settings, "inputs": input_hashes, "stage_version": stage_version},
                      sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


def build_context(kind: str, config, inputs: dict[str, Path], out_dir: Path, *,
                  input_hashes: dict[str, dict[str, str]], stage_version: int) -> StageContext:
    """The context of one run of stage `kind` (inputs already resolved and hashed by the caller)."""
    from compass.config import config_hash
    from compass.data.shards import ShardedStageConfig

    shard_spec = config.shard_spec() if isinstance(config, ShardedStageConfig) else None
    return StageContext(kind=kind, inputs=dict(inputs), out_dir=Path(out_dir), config_hash=config_hash(config),
                        input_hashes=input_hashes, stage_version=stage_version,
                        resume_key=resume_key(config, input_hashes, stage_version),
                        rank=int(os.environ.get("RANK", "0")), world_size=int(os.environ.get("WORLD_SIZE", "1")),
                        shard=shard_spec)


def stage_kind(module: ModuleType) -> str:
    from compass.stages import STAGES

    kinds = [kind for kind, name in STAGES.items() if name == module.__name__]
    if not kinds:
        raise CompassError(f"{module.__name__} is not a registered stage module (compass.stages.STAGES)")
    return kinds[0]


def run_stage(module: ModuleType, config, inputs: dict[str, str | Path], out_dir: str | Path) -> dict:
    """Call a stage's `run` directly from Python, as the runner would but without caching, lock, manifest or
    ledger: inputs are resolved and hashed here (no stat cache), out_dir is created. Returns its metrics."""
    from compass.io import hash_tree

    paths = {name: Path(path).resolve() for name, path in inputs.items() if path is not None}
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    hashes = {name: hash_tree(path) for name, path in paths.items()}
    ctx = build_context(stage_kind(module), config, paths, out_dir, input_hashes=hashes, stage_version=module.VERSION)
    return module.run(config, ctx)


# --- locks ---------------------------------------------------------------------------------------------------


class DirLock:
    """An exclusive lock on a directory, held for the life of a run (a context manager).

    flock is released by the kernel when its holder dies, so a lock file left by a killed run is free and
    is taken over; the holder's pid/host/start written into the file are only for the refusal message."""

    def __init__(self, directory: Path, what: str):
        self.directory = Path(directory)
        self.what = what  # "output directory", "workdir": for the message
        self.path = self.directory / LOCK_NAME
        self._fd: int | None = None
        self.created_file = False

    def __enter__(self) -> DirLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.created_file = not self.path.exists()
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                os.close(fd)
                if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                raise CompassError(f"{self.what} {self.directory} is in use by {self.holder()}; wait for that run to "
                                   "finish or stop it, then run again") from None
            # the holder before us removes the file as it finishes: a lock on that removed file guards nothing
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        holder = {"pid": os.getpid(), "host": socket.gethostname(),
                  "since": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        self._fd = fd

    def holder(self) -> str:
        try:
            info = json.loads(self.path.read_text(encoding="utf-8"))
            return f"compass pid {info['pid']} on host {info['host']} (since {info['since']})"
        except (OSError, ValueError, KeyError, TypeError):
            return "another compass run (holder not yet written)"

    def discard(self) -> None:
        """Release; a directory compass may not use is left as found (the lock file goes with the release)."""
        self.release()

    def release(self) -> None:
        """Remove the lock file (while still holding it: a run that opened it meanwhile sees it gone and retries),
        then unlock. Only a killed run leaves its lock file behind, and that one is free."""
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None


# --- output directories ---------------------------------------------------------------------------------------


def _overlaps(a: Path, b: Path) -> bool:
    return a == b or a.is_relative_to(b) or b.is_relative_to(a)


def check_out_dir_location(out_dir: Path, inputs: dict[str, Path], *, flag: str = "--out") -> None:
    """Refuse an output directory whose clearing could take inputs or the working area with it.
    `out_dir` and the inputs are resolved paths. Nothing is created or changed."""
    cwd, home = Path.cwd().resolve(), Path.home().resolve()
    if out_dir == Path(out_dir.anchor) or out_dir == home or cwd.is_relative_to(out_dir):
        raise CompassError(f"{flag} {out_dir}: refusing to write into the filesystem root, the home directory, or "
                           "the current directory or one above it; name a directory of its own, e.g. out/STAGE")
    for name, path in inputs.items():
        if _overlaps(out_dir, path):
            relation = ("is the input" if out_dir == path else
                        "is inside input" if out_dir.is_relative_to(path) else "holds input")
            raise CompassError(f"{flag} {out_dir} {relation} '{name}' ({path}); a rerun there would overwrite or "
                               "delete it: choose another output directory")
    if out_dir.exists() and not out_dir.is_dir():
        raise CompassError(f"{flag} {out_dir} is a file, not a directory")


def visible_entries(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name not in BOOKKEEPING)


def claim_out_dir(out_dir: Path, *, flag: str = "--out") -> bool:
    """Make `out_dir` a compass output directory, or refuse one compass did not make. Call with its lock held.
    Returns True when this call created the directory or found it empty (so it may be removed on failure)."""
    marker = out_dir / MARKER_NAME
    if marker.is_file():
        return False
    entries = visible_entries(out_dir)
    fresh = not entries
    if entries and not _is_compass_manifest(out_dir / MANIFEST_NAME):
        shown = ", ".join(entries[:5]) + (f", ... ({len(entries)} entries)" if len(entries) > 5 else "")
        raise CompassError(f"{flag} {out_dir} already holds files compass did not write ({shown}); compass writes "
                           "only into a new or empty directory or one it made: choose another output directory")
    # empty, or a finished run recorded before markers existed: ours from now on
    marker.write_text(json.dumps({"made_by": "compass", "note": "compass may replace the files its manifest lists"}) + "\n",
                      encoding="utf-8")
    return fresh


def _is_compass_manifest(path: Path) -> bool:
    if not path.is_file():
        return False
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and {"stage", "run_id", "config_hash", "outputs"} <= data.keys()


def clear_finished_run(out_dir: Path, listed_outputs: dict[str, str]) -> None:
    """Remove a finished run's files before another run writes there: the outputs its manifest lists, the
    manifest, and hidden bookkeeping of compass; other visible files were put there by someone else and make
    this fail (naming them) instead of being deleted."""
    listed = set(listed_outputs) | {MANIFEST_NAME}
    foreign = []
    for file in sorted(p for p in out_dir.rglob("*") if p.is_file() or p.is_symlink()):
        rel = file.relative_to(out_dir)
        if rel.as_posix() in listed or any(part.startswith(".") for part in rel.parts):
            continue
        foreign.append(rel.as_posix())
    if foreign:
        shown = ", ".join(foreign[:5]) + (f", ... ({len(foreign)} files)" if len(foreign) > 5 else "")
        raise CompassError(f"{out_dir} holds file(s) the finished run there did not write ({shown}); compass does not "
                           "delete files it did not write: move them away, then run again")
    for file in sorted((p for p in out_dir.rglob("*") if p.is_file() or p.is_symlink()), reverse=True):
        if file.name in BOOKKEEPING and file.parent == out_dir:
            continue
        file.unlink()
    _remove_empty_dirs(out_dir)


def clear_interrupted_run(out_dir: Path) -> None:
    """`--force` on a directory an interrupted run left (no manifest): everything in a directory compass made
    (it carries the marker) is that run's partial output."""
    if not (out_dir / MARKER_NAME).is_file():
        raise CompassError(f"{out_dir} was not made by compass (no {MARKER_NAME}); --force clears only compass's own directories")
    for file in sorted((p for p in out_dir.rglob("*") if p.is_file() or p.is_symlink()), reverse=True):
        if file.name in BOOKKEEPING and file.parent == out_dir:
            continue
        file.unlink()
    _remove_empty_dirs(out_dir)


def remove_orphan_temps(out_dir: Path) -> int:
    """Temp files of atomic writes a killed run left (the rename never came): never anyone's data."""
    removed = 0
    for file in out_dir.rglob(".*.tmp"):
        if ATOMIC_TEMP.match(file.name):
            if file.is_dir() and not file.is_symlink():
                import shutil

                shutil.rmtree(file)
            else:
                file.unlink()
            removed += 1
    return removed


def _remove_empty_dirs(root: Path) -> None:
    for directory in sorted((p for p in root.rglob("*") if p.is_dir() and not p.is_symlink()), reverse=True):
        try:
            directory.rmdir()
        except OSError:
            pass  # not empty: it holds something worth keeping


# resume journals (compass.io.Journal, journal_path): ".<tag>-journal.jsonl", a header line, then one line
# per finished request
JOURNAL = re.compile(r"^\..+-journal\.jsonl$")
JOURNAL_HEAD_BYTES = 1 << 16


def _journal_without_entries(file: Path) -> bool:
    """A resume journal holding its header and at most a torn line: no finished request, nothing to resume."""
    if not JOURNAL.match(file.name) or file.stat().st_size > JOURNAL_HEAD_BYTES:
        return False
    return file.read_bytes().count(b"\n") <= 1


def tidy_failed_out_dir(out_dir: Path, *, remove_if_empty: bool) -> None:
    """After a failed run: drop orphan temps, empty files and empty directories (nothing to resume from); the
    directory itself goes when this run made it and nothing but bookkeeping is left."""
    if not out_dir.is_dir():
        return
    remove_orphan_temps(out_dir)
    for file in out_dir.rglob("*"):
        if file.is_file() and not file.is_symlink() and file.name not in BOOKKEEPING and (
                file.stat().st_size == 0 or _journal_without_entries(file)):
            file.unlink()
    _remove_empty_dirs(out_dir)
    if remove_if_empty and not visible_entries(out_dir) and not any(
            p.name not in BOOKKEEPING for p in out_dir.iterdir()):
        (out_dir / MARKER_NAME).unlink(missing_ok=True)
        (out_dir / LOCK_NAME).unlink(missing_ok=True)
        try:
            out_dir.rmdir()
        except OSError:
            pass


# --- training runs: whole-run figures after a resume ------------------------------------------------------


def whole_run_training_figures(log_history: list[dict], session_loss_mean: float, global_step: int, resume_step: int,
                               tokens_seen: int, resume_tokens_seen: int, runtime_s: float) -> dict:
    """Figures of the whole training run when it resumed from a checkpoint at `resume_step` (the trainer's own
    figures cover only the part after the resume: its loss mean is over this session's steps, its token count
    starts at the checkpoint's).

    train_loss_mean = (sum of per-step losses before the resume + this session's sum) / global_step. The part
    before comes from the logged losses (each the mean of its logging interval, rounded to 4 decimals by the
    trainer): exact up to that rounding when checkpoints fall on logging steps; steps between the last log and
    the checkpoint count at the last logged mean. train_tokens is the whole run's; the rate is this session's."""
    this_run_tokens = tokens_seen - resume_tokens_seen
    figures = {
        "train_tokens": tokens_seen,
        "train_tokens_this_run": this_run_tokens,
        "train_tokens_per_s": round(this_run_tokens / runtime_s, 1) if runtime_s > 0 else None,
        "train_steps_this_run": global_step - resume_step,
    }
    if resume_step == 0:
        figures["train_loss_mean"] = session_loss_mean
        return figures
    before, last_step, last_loss = 0.0, 0, None
    for entry in log_history:
        if "loss" in entry and "step" in entry and entry["step"] <= resume_step:
            before += entry["loss"] * (entry["step"] - last_step)
            last_step, last_loss = entry["step"], entry["loss"]
    if last_loss is None:
        raise CompassError(f"resumed at step {resume_step} but the checkpoint's log history has no training loss "
                           "before it; set logging_steps <= save_steps")
    before += last_loss * (resume_step - last_step)
    figures["train_loss_mean"] = (before + session_loss_mean * (global_step - resume_step)) / global_step
    return figures


# --- the record sink -----------------------------------------------------------------------------------------


class RecordSink:
    """The records and rejects of one stage run, written the same way by every stage (a context manager).

    Both files are written under temp names beside their targets (compass.io.atomic_open) and renamed together
    when the block ends without an error: a run that fails leaves neither, readers never see half a file. Rejects
    carry a reason and are counted by it. `check` is the one reject-rate gate (check_reject_rate) over what the
    sink counted; call it inside the block: when it fails, the rejects file is put in place (the message names
    it) and the records file is not."""

    def __init__(self, stage: str, out_dir: Path, records: str, rejects: str = "rejects.jsonl", *,
                 transient: frozenset[str] = frozenset()):
        self.stage = stage
        self.records_path = Path(out_dir) / records
        self.rejects_path = Path(out_dir) / rejects
        self.transient = transient  # reasons a rerun asks again (server failures): named in the gate's message
        self.kept = 0
        self.reasons: dict[str, int] = {}

    def __enter__(self) -> RecordSink:
        from compass.io import atomic_open

        self._records_cm = atomic_open(self.records_path)
        self._rejects_cm = atomic_open(self.rejects_path)
        self._out = self._records_cm.__enter__()
        self._rej = self._rejects_cm.__enter__()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._rej is not None:
            self._rejects_cm.__exit__(exc_type, exc, tb)
        self._records_cm.__exit__(exc_type, exc, tb)

    def record(self, item) -> None:
        """A record (pydantic model or dict), or one JSON line already serialised (ending in a newline)."""
        from compass.io import dumps_record

        self._out.write(item if isinstance(item, str) else dumps_record(item) + "\n")
        self.kept += 1

    def reject(self, reject, reason: str | None = None) -> None:
        """A compass.records.Reject (id, reason, detail, the rejected record), or a stage's own report row (a
        dict) counted under `reason`."""
        from compass.io import dumps_record

        reason = reject.reason if reason is None else reason
        self._rej.write(dumps_record(reject) + "\n")
        self.reasons[reason] = self.reasons.get(reason, 0) + 1

    @property
    def records_file(self):
        """The open records file, for a writer that appends lines of its own (not counted in `kept`)."""
        return self._out

    @property
    def rejected(self) -> int:
        return sum(self.reasons.values())

    def sorted_reasons(self) -> dict[str, int]:
        return dict(sorted(self.reasons.items()))

    def count(self, *reasons: str) -> int:
        return sum(self.reasons.get(reason, 0) for reason in reasons)

    def check(self, limit: float, *, what: str, rejected: int | None = None, total: int | None = None,
              reasons: object | None = None) -> None:
        """The reject-rate gate: `rejected` (default: every reject) of `total` (default: records + rejects) over
        `limit` fails the run, naming the rejects file, which is put in place first."""
        rejected = self.rejected if rejected is None else rejected
        total = self.kept + self.rejected if total is None else total
        try:
            check_reject_rate(self.stage, rejected, total, limit, what=what,
                              reasons=self.sorted_reasons() if reasons is None else reasons,
                              rejects_path=self.rejects_path, transient=self.count(*self.transient))
        except CompassError:
            self._rejects_cm.__exit__(None, None, None)  # kept for the user to read; the records are not
            self._rej = None
            raise


# --- the one reject-rate gate --------------------------------------------------------------------------------


def check_reject_rate(stage: str, rejected: int, total: int, limit: float, *, what: str, reasons: object,
                      rejects_path: Path | None = None, transient: int = 0) -> None:
    """Fail the stage when more than `limit` of its `total` items were rejected. One message for every stage:
    the counts, the rate against the limit, the reasons, where the rejects are, and how to go on (transient
    rejects, e.g. server errors, are asked again by rerunning the same command; others need a higher limit,
    or fixed inputs and --force). The run leaves no manifest, so its outputs are never taken as finished."""
    if total == 0 or rejected / total <= limit:
        return
    where = f"; see {rejects_path}" if rejects_path is not None else ""
    if transient:
        hint = (f"; the {transient} transient reject(s) (server errors) are asked again when you rerun the same "
                "command (the others are kept)")
    else:
        hint = "; to accept them rerun with a higher --max-reject-rate, or fix the input and rerun with --force"
    raise CompassError(f"{stage}: {rejected} of {total} {what} rejected ({rejected / total:.1%} > max_reject_rate "
                       f"{limit:.1%}); reasons {reasons}{where}{hint}")


def resume_hint(out_dir: Path) -> str | None:
    """What to do about the state a failed run left in `out_dir` (None when it left nothing)."""
    if not out_dir.is_dir() or not any(p.name not in BOOKKEEPING for p in out_dir.iterdir()):
        return None
    if (out_dir / MANIFEST_NAME).is_file():
        return None  # a finished run is still there (the failure came before anything was replaced)
    return (f"the partial run in {out_dir} is kept: rerun the same command to resume it, or add --force "
            "to start over")
