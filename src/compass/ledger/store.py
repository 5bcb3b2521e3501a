"""Content-addressed store: every recorded file kept once under its sha256, verified whenever it is read.

Layout: store/sha256/ab/cdef... (the first two hex digits name a subfolder). A blob lands by rename from
store/tmp/, so a process killed mid-write leaves only a temp file, never a blob with the wrong bytes.

Outputs enter the store without a second copy of their bytes when the filesystem allows: a copy-on-write
clone (reflink: btrfs, XFS) where supported, else a hard link, else a plain copy. Inputs are always copied
(they are often a user's own files, edited in place later). A hard link shares bytes with the run's output
file, so the linked file is made read-only (an editor refuses to write it in place), the runner calls
detach_links() before a stage writes into that directory again, and every read re-hashes: a damaged blob
is reported, never handed out.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from compass.errors import CompassError

HEX = frozenset("0123456789abcdef")


def is_sha256(text: str) -> bool:
    return len(text) == 64 and set(text) <= HEX


class ContentStore:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.blobs = self.root / "sha256"
        self.tmp = self.root / "tmp"

    def path(self, sha: str) -> Path:
        if not is_sha256(sha):
            raise CompassError(f"not a sha256 hex digest: {sha!r}")
        return self.blobs / sha[:2] / sha[2:]

    def has(self, sha: str) -> bool:
        return self.path(sha).is_file()

    def put(self, source: Path, sha: str, *, link: bool) -> bool:
        """Keep `source` (whose sha256 the caller measured) under `sha`; True when new bytes were stored."""
        target = self.path(sha)
        if target.is_file():
            return False
        self.tmp.mkdir(parents=True, exist_ok=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.tmp / f"{sha}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        linked = False
        if link:
            linked = _reflink(source, tmp)  # copy-on-write: the output file can be edited without touching the blob
            # a hard link is protected only by mode 0444, which root ignores: root's runs store a copy
            if not linked and os.geteuid() != 0:
                try:
                    os.link(source, tmp)
                    os.chmod(tmp, 0o444)  # shared with the output file: no in-place edits
                    linked = True
                except OSError as err:
                    # another filesystem, or links not allowed there: fall back to a copy
                    if err.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES):
                        raise
        try:
            if not linked:
                got = _copy_hashing(source, tmp)
                if got != sha:
                    raise CompassError(f"{source} changed while it was recorded: expected sha256 {sha}, read {got}")
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        return True

    def verify(self, sha: str) -> bool:
        path = self.path(sha)
        return path.is_file() and _hash_file(path) == sha

    def materialize(self, sha: str, dest: Path) -> None:
        """Copy a blob to `dest`, checking its bytes on the way; a damaged or missing blob is an error."""
        source = self.path(sha)
        if not source.is_file():
            raise CompassError(f"the store has no blob {sha} ({source}); run `compass runs check`")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            got = _copy_hashing(source, tmp)
            if got != sha:
                raise CompassError(f"store blob {source} is damaged: its bytes hash to {got}; run `compass runs check`")
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)

    def read_bytes(self, sha: str) -> bytes:
        data = self.path(sha).read_bytes()
        if hashlib.sha256(data).hexdigest() != sha:
            raise CompassError(f"store blob {self.path(sha)} is damaged; run `compass runs check`")
        return data

    def iter_blobs(self) -> Iterator[tuple[str, Path]]:
        if not self.blobs.is_dir():
            return
        for sub in sorted(self.blobs.iterdir()):
            for blob in sorted(sub.iterdir()):
                yield sub.name + blob.name, blob

    def leftovers(self) -> list[Path]:
        """Temp files of writes that never finished (a killed process)."""
        return sorted(self.tmp.iterdir()) if self.tmp.is_dir() else []


FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int)


def _reflink(source: Path, dest: Path) -> bool:
    """A copy-on-write clone of `source` at `dest` where the filesystem supports it (no bytes copied)."""
    try:
        with open(source, "rb") as src, open(dest, "wb") as dst:
            fcntl.ioctl(dst.fileno(), FICLONE, src.fileno())
        return True
    except OSError:
        dest.unlink(missing_ok=True)
        return False


def _hash_file(path: Path) -> str:
    from compass.io import HASH_CHUNK  # here: compass.io loads pydantic, which `runs show` does not need

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _copy_hashing(source: Path, dest: Path) -> str:
    from compass.io import HASH_CHUNK

    digest = hashlib.sha256()
    with open(source, "rb") as src, open(dest, "wb") as dst:
        while chunk := src.read(HASH_CHUNK):
            digest.update(chunk)
            dst.write(chunk)
        dst.flush()
        os.fsync(dst.fileno())
    return digest.hexdigest()


def detach_links(out_dir: Path) -> int:
    """Give every hard-linked file under `out_dir` its own copy, so a stage writing there again in place
    cannot change bytes the store keeps for an earlier run. Returns how many files were detached."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return 0
    count = 0
    for file in out_dir.rglob("*"):
        if not file.is_file() or file.is_symlink() or file.stat().st_nlink < 2:
            continue
        tmp = file.with_name(f".{file.name}.{uuid.uuid4().hex[:8]}.detach")
        try:
            shutil.copy2(file, tmp)
            os.chmod(tmp, (file.stat().st_mode & 0o777) | 0o200)  # writable again
            os.replace(tmp, file)
        finally:
            tmp.unlink(missing_ok=True)
        count += 1
    return count
