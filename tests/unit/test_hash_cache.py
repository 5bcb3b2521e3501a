"""Stat cache of file hashes (compass.io.HashCache): unchanged files are not read again; any change that can
alter the bytes (size, mtime, ctime, inode) reads them again; racy entries are not remembered; --rehash."""
import os
import time

import pytest

from support import echo_stage
from compass import io, stages
from compass.cli import main
from compass.io import HashCache, hash_tree, sha256_file
from compass.runner import execute_stage


@pytest.fixture
def trusting(monkeypatch):
    """No racy window, so a file written by the test is remembered at once (the window has its own test)."""
    monkeypatch.setattr(io, "RACY_NS", 0)


def write(path, data: bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_unchanged_files_are_read_once(tmp_path, trusting):
    tree = tmp_path / "model"
    write(tree / "a.safetensors", b"a" * 1000)
    write(tree / "sub" / "b.bin", b"b" * 10)
    cache = HashCache(tmp_path / "c.db")
    first = hash_tree(tree, cache=cache)
    assert first == {"a.safetensors": sha256_file(tree / "a.safetensors"), "sub/b.bin": sha256_file(tree / "sub" / "b.bin")}
    assert (cache.reads, cache.hits) == (2, 0)
    again = HashCache(tmp_path / "c.db")  # another process: the cache is on disk
    assert hash_tree(tree, cache=again) == first
    assert (again.reads, again.hits) == (0, 2)


def test_same_size_edit_with_mtime_restored_is_caught_by_ctime(tmp_path, trusting):
    file = write(tmp_path / "w.bin", b"0123456789")
    cache = HashCache(tmp_path / "c.db")
    before = cache.sha256(file)
    st = os.stat(file)
    time.sleep(0.01)  # ctime ticks (ns timestamps; coarse filesystems tick at least every few ms)
    with open(file, "r+b") as fh:
        fh.seek(5)
        fh.write(b"X")
    os.utime(file, ns=(st.st_atime_ns, st.st_mtime_ns))  # size and mtime exactly as before
    after_st = os.stat(file)
    assert (after_st.st_size, after_st.st_mtime_ns, after_st.st_ino) == (st.st_size, st.st_mtime_ns, st.st_ino)
    assert after_st.st_ctime_ns != st.st_ctime_ns
    after = cache.sha256(file)
    assert after == sha256_file(file) != before
    assert cache.reads == 2


def test_replaced_file_is_read_again(tmp_path, trusting):
    file = write(tmp_path / "w.bin", b"old bytes!")
    cache = HashCache(tmp_path / "c.db")
    cache.sha256(file)
    st = os.stat(file)
    new = write(tmp_path / ".w.tmp", b"new bytes!")
    os.utime(new, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(new, file)  # an atomic replace: other inode, same size and mtime
    assert cache.sha256(file) == sha256_file(file)
    assert cache.reads == 2


def test_fresh_files_are_not_remembered(tmp_path):
    """With the default racy window a file written just now is hashed but not stored: it could still change
    within the same timestamp tick without its stat changing."""
    file = write(tmp_path / "fresh.bin", b"x")
    cache = HashCache(tmp_path / "c.db")
    cache.sha256(file)
    cache.sha256(file)
    assert (cache.reads, cache.hits) == (2, 0)


def test_rehash_reads_everything_and_refreshes(tmp_path, trusting):
    file = write(tmp_path / "f.bin", b"abc")
    HashCache(tmp_path / "c.db").sha256(file)
    forced = HashCache(tmp_path / "c.db", rehash=True)
    assert forced.sha256(file) == sha256_file(file)
    assert (forced.reads, forced.hits) == (1, 0)


@pytest.mark.slow  # a whole stage run (seconds): not in make test-fast
def test_cached_stage_check_reads_nothing_and_a_hidden_edit_reruns(tmp_path, trusting, monkeypatch):
    monkeypatch.setitem(stages.STAGES, "echo", "support.echo_stage")
    monkeypatch.setenv("COMPASS_HOME", str(tmp_path / "home"))
    reads = []
    real = io.sha256_file
    monkeypatch.setattr(io, "sha256_file", lambda path: reads.append(os.path.basename(path)) or real(path))
    src = write(tmp_path / "in.txt", b"hello")
    out = tmp_path / "out"
    assert not execute_stage("echo", echo_stage.Config(), {"text": src}, out).cached
    # the ledger hard-links outputs into its store after they were hashed, which sets their ctime: the first
    # check reads them once more, every later one reads nothing
    assert execute_stage("echo", echo_stage.Config(), {"text": src}, out).cached
    reads.clear()
    assert execute_stage("echo", echo_stage.Config(), {"text": src}, out).cached
    assert reads == []  # inputs and outputs came from the stat cache
    st = os.stat(src)
    time.sleep(0.01)
    src.write_bytes(b"jello")
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))
    result = execute_stage("echo", echo_stage.Config(), {"text": src}, out)
    assert not result.cached
    assert (out / "out.txt").read_text() == "jello!"
    reads.clear()
    assert main(["echo", "--text", str(src), "--out", str(out), "--rehash"]) == 0
    assert sorted(reads) == ["in.txt", "out.txt"]
