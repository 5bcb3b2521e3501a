"""Atomic file writes, sha256 hashing (with a stat cache), and JSONL reading/writing with line-numbered errors."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, TypeVar

from compass.errors import CompassError

if TYPE_CHECKING:  # pydantic is imported where records are: `compass runs show` uses the hash cache without it (~0.1 s)
    from pydantic import BaseModel

M = TypeVar("M", bound="BaseModel")

HASH_CHUNK = 1 << 20


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Write to a temp file beside `path`, fsync, then rename over it: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def staged_dir(final: Path) -> Iterator[Path]:
    """Yield a hidden temp dir beside `final`; on success it replaces `final` in one rename, on failure it is
    removed. A model directory is never seen half-written."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w") as fh:
        fh.write(text)


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    with atomic_open(path, "w") as fh:
        json.dump(obj, fh, ensure_ascii=False, indent=2, sort_keys=False)
        fh.write("\n")


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def derived_bits(seed: int, *parts: object, nbytes: int) -> int:
    """The one per-record seeding rule: an integer of `nbytes` bytes fixed by (run seed, parts) alone, e.g.
    (problem id, sample index). A record's draws depend on nothing else (not order, shard, resume or worker)."""
    key = "\x00".join(str(part) for part in (seed, *parts))
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:nbytes], "big")


def record_rng(seed: int, *parts: object):
    """The random.Random of one record (or document): seeded by derived_bits(seed, *parts) alone, so its draws
    are the same whatever the order, shard, worker or resume that reaches it."""
    import random

    return random.Random(derived_bits(seed, *parts, nbytes=16))


def record_seed(seed: int, *parts: object) -> int:
    """A 31-bit integer seed of one record (e.g. a request's sampling seed), fixed by (seed, parts) alone."""
    return derived_bits(seed, *parts, nbytes=4) & 0x7FFFFFFF


def is_hidden_work_file(rel: Path) -> bool:
    """Temp files of atomic writes and stage bookkeeping are not artifacts."""
    return any(part.startswith(".") for part in rel.parts)


# --- the resume journal -----------------------------------------------------------------------------------
#
# The one resume journal of the stage kit (compass.stagekit re-exports it). A stage whose items each cost a
# request (evidence, doc-questions, doc-traces answers, distill) numbers its tasks in input order and appends
# every finished one, flushed at once, to a hidden journal in its output directory as one line: {"i": task
# index, "a": attempt, "k": ok | reject | retry | transient, "v": payload}. transient is a server failure: a
# reject for this run, not final, so the next run (the server back) asks again; retry marks a malformed reply
# asked again in the next round. The first line holds the run's resume key (compass.stagekit.resume_key): a
# journal written under another key is not this run's and starts over. A torn last line (a kill) is cut off.
# At the end the outcomes are read back by task index (one seek each), so the output is in input order
# whatever order the server answered in, and a resumed run writes the bytes of an uninterrupted one.
# Memory: two small integers per task (its state and the offset of its final line).

TRANSIENT = "transient"  # journal kind of a server failure: rejected in this run, asked again by the next
NONE, OK, REJECT = -1, 100, 101  # task states; 0..99: the attempt whose reply was malformed (a re-ask is due)


def journal_path(work_dir: Path, tag: str) -> Path:
    return work_dir / f".{tag}-journal.jsonl"


class Journal:
    """The append-only record of finished tasks, and the per-task state derived from it."""

    def __init__(self, path: Path, resume_key: str):
        from array import array
        from collections import Counter

        self.path = path
        self.state = array("b")
        self.offset = array("q")
        self.due = Counter()  # attempt -> tasks waiting for a re-ask after it
        self.resumed = 0  # tasks a previous run finished
        self.retried = 0  # tasks a previous run lost to a server failure: asked again now
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
        lost: set[int] = set()
        for line in lines[1:]:
            entry = json.loads(line)
            if entry["k"] == TRANSIENT:  # a server failure of an earlier run is not final: its task is sent again
                lost.add(entry["i"])
            else:
                self._set(entry["i"], entry["a"], entry["k"], offset)
            offset += len(line) + 1
        self.resumed = sum(1 for s in self.state if s in (OK, REJECT))
        self.retried = sum(1 for i in lost if i >= len(self.state) or self.state[i] == NONE)

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

    def needs(self, index: int, attempt: int = 0) -> bool:
        self._grow(index)
        state = self.state[index]
        return state == NONE if attempt == 0 else state == attempt - 1

    def add(self, index: int, attempt: int, kind: str, value) -> None:
        """kind: ok | reject | retry | transient (a reject for this run that the next run asks again)."""
        offset = self.fh.tell()
        self.fh.write((json.dumps({"i": index, "a": attempt, "k": kind, "v": value}, ensure_ascii=False) + "\n").encode())
        self.fh.flush()  # a kill loses only the requests in flight
        self._set(index, attempt, "reject" if kind == TRANSIENT else kind, offset)

    def read(self, index: int, fh) -> tuple[str, object]:
        """("ok" | "reject" | "transient", payload) of a finished task."""
        fh.seek(self.offset[index])
        entry = json.loads(fh.readline())
        return ("reject" if entry["k"] == TRANSIENT else entry["k"]), entry["v"]

    def outcomes(self, what: str, count: int | None = None) -> Iterator[tuple[str, object]]:
        """(kind, payload) of tasks 0..count-1 (default: every task seen) in task order; kind is "ok" or
        "reject" (a server failure of this run is a reject). Every one must be final."""
        self.fh.flush()
        count = len(self.state) if count is None else count
        self._grow(count - 1)
        with open(self.path, "rb") as fh:
            for index in range(count):
                if self.state[index] not in (OK, REJECT):
                    raise CompassError(f"{what}: task {index} has no final outcome (state {self.state[index]})")
                yield self.read(index, fh)

    def close(self) -> None:
        self.fh.close()


# --- stat cache -------------------------------------------------------------------------------------
#
# Like git's index (and DVC's state db), a file's sha256 is remembered with the stat fields that change when
# its bytes can have changed; a file whose stat still matches is not read again. The key is (device, inode,
# size, mtime_ns, ctime_ns). mtime alone is not enough: `os.utime` can put mtime back after a write, and a
# copy tool can preserve it. ctime cannot be set from user space: every write, chmod, rename or utime sets
# it to "now", so a same-size edit with its mtime restored still changes ctime. The inode catches a file
# replaced by another (an atomic rename of a new version). What stays out of reach, as for git: a change
# that leaves every one of these fields as it was (a raw write to the block device, or resetting the system
# clock to the old ctime before editing). Racy entries: a file changed within RACY_NS of its hashing could
# change again within the same timestamp tick, keeping its stat; such a hash is used but not remembered, so
# the file is read again next time (git's "racily clean" rule). `--rehash` reads every file and refreshes
# the cache. On NFS, RACY_NS also covers clock skew between the client and the server up to that window.

RACY_NS = 2_000_000_000
HASH_CACHE_NAME = "hash-cache.db"


class HashCache:
    """Stat-keyed sha256 cache in one sqlite file, shared by processes (60 s busy timeout). The default rollback
    journal, not WAL: WAL needs shared memory, which network file systems (a cluster's shared COMPASS_HOME)
    do not give; the writes are one short transaction per hashed tree."""

    def __init__(self, path: str | os.PathLike, *, rehash: bool = False):
        self.path = Path(path)
        self.rehash = rehash
        self.reads = 0  # files actually read (misses and --rehash), for benches and tests
        self.hits = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, dev INTEGER, ino INTEGER, size INTEGER, "
            "mtime_ns INTEGER, ctime_ns INTEGER, sha256 TEXT)"
        )

    def sha256(self, file: Path) -> str:
        return self.sha256_many([file])[0]

    def sha256_many(self, files: list[Path]) -> list[str]:
        """sha256 of each file, from the cache where the stat matches; new hashes are stored in one transaction."""
        out: list[str] = []
        updates = []
        for file in files:
            key = os.path.abspath(file)
            st = os.stat(key)
            stat = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            if not self.rehash:
                row = self._db.execute(
                    "SELECT dev, ino, size, mtime_ns, ctime_ns, sha256 FROM files WHERE path = ?", (key,)
                ).fetchone()
                if row is not None and tuple(row[:5]) == stat:
                    self.hits += 1
                    out.append(row[5])
                    continue
            started_ns = time.time_ns()
            digest = sha256_file(key)
            self.reads += 1
            after = os.stat(key)
            same = (after.st_dev, after.st_ino, after.st_size, after.st_mtime_ns, after.st_ctime_ns) == stat
            if same and max(st.st_mtime_ns, st.st_ctime_ns) < started_ns - RACY_NS:
                updates.append((key, *stat, digest))
            out.append(digest)
        if updates:
            with self._db:
                self._db.executemany("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?, ?)", updates)
        return out

    def remember(self, files: list[tuple[Path, str]]) -> None:
        """Record (file, sha256) pairs whose bytes the caller has just verified (the content store, as it writes a
        blob), with their stat now, so the next look (`runs show`) reads nothing. Unlike sha256_many this skips the
        racy-stat rule: an edit within the file system's timestamp tick after this call would go unseen here,
        not by `compass runs check`, which reads every byte."""
        rows = []
        for file, digest in files:
            key = os.path.abspath(file)
            st = os.stat(key)
            rows.append((key, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, digest))
        if rows:
            with self._db:
                self._db.executemany("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?, ?)", rows)

    def close(self) -> None:
        self._db.close()


def hash_tree(path: str | os.PathLike, exclude: Iterable[str] = (), cache: HashCache | None = None) -> dict[str, str]:
    """sha256 of a file, or of every file under a directory (relative posix path -> hex), sorted. With a
    `cache`, files whose stat matches a remembered hash are not read."""
    path = Path(path)
    if path.is_file():
        return {path.name: cache.sha256(path) if cache else sha256_file(path)}
    if not path.is_dir():
        raise CompassError(f"input path does not exist: {path}")
    excluded = set(exclude)
    files: dict[str, Path] = {}
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = file.relative_to(path)
        if rel.as_posix() in excluded or is_hidden_work_file(rel):
            continue
        files[rel.as_posix()] = file
    if cache is None:
        return {rel: sha256_file(file) for rel, file in files.items()}
    return dict(zip(files, cache.sha256_many(list(files.values()))))


def numbered_utf8_lines(fh: IO[bytes], path: str | os.PathLike) -> Iterator[tuple[int, str]]:
    """(line number, text) of a file opened in binary; a line that is not UTF-8 fails naming file, line and column."""
    for lineno, raw in enumerate(fh, 1):
        try:
            yield lineno, raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise CompassError(f"{path}:{lineno}: not UTF-8 text (byte 0x{raw[err.start]:02x} at column {err.start + 1}); "
                               "save the file as UTF-8") from None


def dumps_record(record: BaseModel | dict) -> str:
    from pydantic import BaseModel

    data = record.model_dump(mode="json") if isinstance(record, BaseModel) else record
    return json.dumps(data, ensure_ascii=False, sort_keys=False)


def write_jsonl(path: str | os.PathLike, records: Iterable[BaseModel | dict]) -> int:
    """Atomically write records as JSON lines; returns the count."""
    count = 0
    with atomic_open(path, "w") as fh:
        for record in records:
            fh.write(dumps_record(record) + "\n")
            count += 1
    return count


def jsonl_files(path: str | os.PathLike) -> list[Path]:
    """A JSONL file, or the sorted *.jsonl shards of a directory."""
    path = Path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.glob("*.jsonl") if not p.name.startswith("."))
        if not files:
            raise CompassError(f"no .jsonl files in directory {path}")
        return files
    raise CompassError(f"no such file or directory: {path}")


def iter_jsonl(path: str | os.PathLike, model: type[M] | None = None) -> Iterator:
    """Stream records from a JSONL file or shard directory; a bad line fails with file:line and the reason."""
    for file, lineno, line in iter_jsonl_lines(path):
        yield parse_jsonl_line(line, model, file, lineno)


def iter_jsonl_lines(path: str | os.PathLike) -> Iterator[tuple[Path, int, str]]:
    """(file, line number, text) of every non-blank line of a JSONL file or shard directory, unparsed: what a
    worker pool is handed, so the parsing happens in the workers and errors still name file:line."""
    for file in jsonl_files(path):
        with open(file, "rb") as fh:
            for lineno, line in numbered_utf8_lines(fh, file):
                if line.strip():
                    yield file, lineno, line


def count_jsonl_records(path: str | os.PathLike) -> int:
    """Non-blank lines of a JSONL file or shard directory (one record each), without parsing them."""
    return sum(1 for _ in iter_jsonl_lines(path))


def parse_jsonl_line(line: str, model: type[M] | None, file: str | os.PathLike, lineno: int):
    """One JSONL line as a dict, or as `model`; a bad line fails with file:line and the reason."""
    try:
        data = json.loads(line)
    except json.JSONDecodeError as err:
        raise CompassError(f"{file}:{lineno}: not valid JSON ({err.msg} at column {err.colno})") from None
    if model is None:
        return data
    from pydantic import ValidationError

    try:
        return model.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "<record>"
        raise CompassError(
            f"{file}:{lineno}: field '{where}': {first['msg']} (expected a {model.__name__} record)"
        ) from None


def iter_json_objects(path: str | os.PathLike) -> Iterator[dict]:
    """Rows of one JSONL file in a dataset's own schema: each line a JSON object, errors with file:line."""
    for _lineno, row in iter_numbered_json_objects(path):
        yield row


def iter_numbered_json_objects(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a JSONL file; bad JSON, a non-object or a non-UTF-8
    byte is one error naming file:line."""
    with open(path, "rb") as fh:
        for lineno, line in numbered_utf8_lines(fh, path):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise CompassError(f"{path}:{lineno}: not valid JSON ({err.msg} at column {err.colno})") from None
            if not isinstance(row, dict):
                raise CompassError(f"{path}:{lineno}: expected a JSON object per line, got {type(row).__name__}")
            yield lineno, row


def read_jsonl(path: str | os.PathLike, model: type[M] | None = None) -> list:
    return list(iter_jsonl(path, model))
