"""Atomic file writes, sha256 hashing, and JSONL reading/writing with line-numbered errors."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TypeVar

from pydantic import BaseModel, ValidationError

from compass.errors import CompassError

M = TypeVar("M", bound=BaseModel)

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


def is_hidden_work_file(rel: Path) -> bool:
    """Temp files of atomic writes and stage bookkeeping are not artifacts."""
    return any(part.startswith(".") for part in rel.parts)


def hash_tree(path: str | os.PathLike, exclude: Iterable[str] = ()) -> dict[str, str]:
    """sha256 of a file, or of every file under a directory (relative posix path -> hex), sorted."""
    path = Path(path)
    if path.is_file():
        return {path.name: sha256_file(path)}
    if not path.is_dir():
        raise CompassError(f"input path does not exist: {path}")
    excluded = set(exclude)
    out: dict[str, str] = {}
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = file.relative_to(path)
        if rel.as_posix() in excluded or is_hidden_work_file(rel):
            continue
        out[rel.as_posix()] = sha256_file(file)
    return out


def dumps_record(record: BaseModel | dict) -> str:
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
    for file in jsonl_files(path):
        with open(file, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    data = json.loads(line)
                except json.JSONDecodeError as err:
                    raise CompassError(f"{file}:{lineno}: not valid JSON ({err.msg} at column {err.colno})") from None
                if model is None:
                    yield data
                    continue
                try:
                    yield model.model_validate(data)
                except ValidationError as err:
                    first = err.errors()[0]
                    where = ".".join(str(p) for p in first["loc"]) or "<record>"
                    raise CompassError(
                        f"{file}:{lineno}: field '{where}': {first['msg']} (expected a {model.__name__} record)"
                    ) from None


def iter_json_objects(path: str | os.PathLike) -> Iterator[dict]:
    """Rows of one JSONL file in a dataset's own schema: each line a JSON object, errors with file:line."""
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise CompassError(f"{path}:{lineno}: not valid JSON ({err.msg} at column {err.colno})") from None
            if not isinstance(row, dict):
                raise CompassError(f"{path}:{lineno}: expected a JSON object per line, got {type(row).__name__}")
            yield row


def read_jsonl(path: str | os.PathLike, model: type[M] | None = None) -> list:
    return list(iter_jsonl(path, model))
