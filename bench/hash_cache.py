"""Benchmark: a cached-stage check over a multi-GB model directory, with and without the stat cache of hashes.

A `sources` stage (a few reasoning-gym problems) takes a directory of safetensors-like shards as its `data`
input, so every check of that stage hashes the whole directory. After one real run, each round times two
cached checks through `compass.runner.execute_stage` in this process: cold (the stat cache deleted: every
byte read and sha256-hashed, as before the cache; the files are in the page cache, so this is the fast case
of the old cost) and warm (the stat cache from the cold check). Rounds alternate; medians are reported with
the ratio warm / cold (goal: warm < 1 s and < 0.02x cold).

Then the proof that the cache still catches a change: one byte in the middle of one shard is changed in place,
and the shard's atime/mtime are put back with os.utime (same size, same mtime, same inode). The check must
re-run the stage; what gave the change away is printed (ctime: set by the kernel on every write or utime,
and not settable from user space). Everything lives in a temp dir that is removed at the end.

    OMP_NUM_THREADS=1 .venv/bin/python bench/hash_cache.py [--gb 3] [--shards 6] [--rounds 3]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

BLOCK = 64 << 20


def write_model(root: Path, total_bytes: int, shards: int) -> list[Path]:
    """`shards` files of random bytes (one random 64 MB block, each shard with its own random header)."""
    root.mkdir(parents=True)
    block = os.urandom(BLOCK)
    per = total_bytes // shards
    files = []
    for i in range(shards):
        path = root / f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        with open(path, "wb") as fh:
            fh.write(os.urandom(4096))
            left = per - 4096
            while left > 0:
                fh.write(block[: min(left, BLOCK)])
                left -= BLOCK
        files.append(path)
    (root / "config.json").write_text('{"model_type": "llama"}\n')
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=3.0, help="size of the model directory")
    parser.add_argument("--shards", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workdir", type=Path, help="where the temp dir goes (default: the system temp dir)")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="compass-hash-bench-", dir=args.workdir))
    try:
        os.environ["COMPASS_HOME"] = str(tmp / "home")  # this bench's own ledger and hash cache
        from compass import io
        from compass.runner import execute_stage, hash_cache
        from compass.stages import get_stage

        model = tmp / "model"
        t0 = time.perf_counter()
        files = write_model(model, int(args.gb * (1 << 30)), args.shards)
        size = sum(f.stat().st_size for f in model.iterdir())
        print(f"model directory: {len(files)} shards, {size / (1 << 30):.2f} GiB written in {time.perf_counter() - t0:.1f}s")
        time.sleep(io.RACY_NS / 1e9 + 0.5)  # files just written are "racy" and never trusted: let them age

        sources = get_stage("sources")
        config = sources.Config(reasoning_gym=[{"generator": "basic_arithmetic", "size": 5}])
        out = tmp / "out"
        first = execute_stage("sources", config, {"data": model}, out)
        assert not first.cached
        time.sleep(io.RACY_NS / 1e9 + 0.5)
        cache_db = hash_cache().path

        def check() -> float:
            t = time.perf_counter()
            result = execute_stage("sources", config, {"data": model}, out)
            elapsed = time.perf_counter() - t
            assert result.cached, "the check should find the completed run"
            return elapsed

        check()  # the ledger links outputs after they were hashed (a ctime change): one more read settles them
        cold, warm = [], []
        for _ in range(args.rounds):
            for suffix in ("", "-wal", "-shm"):
                Path(str(cache_db) + suffix).unlink(missing_ok=True)
            cold.append(check())
            warm.append(check())
        c, w = statistics.median(cold), statistics.median(warm)
        print(f"cached-stage check, cold stat cache (reads {size / (1 << 30):.2f} GiB): "
              f"median {c:.3f}s  rounds {[round(x, 3) for x in cold]}")
        print(f"cached-stage check, warm stat cache:                     "
              f"median {w:.3f}s  rounds {[round(x, 3) for x in warm]}")
        print(f"ratio warm / cold: {w / c:.4f}  (goal < 0.02; warm < 1 s: {w < 1.0})")

        target = files[len(files) // 2]
        st = os.stat(target)
        time.sleep(0.05)
        with open(target, "r+b") as fh:
            fh.seek(st.st_size // 2)
            byte = fh.read(1)
            fh.seek(st.st_size // 2)
            fh.write(bytes([byte[0] ^ 0xFF]))
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
        after = os.stat(target)
        same = {f: getattr(st, f) == getattr(after, f) for f in ("st_size", "st_mtime_ns", "st_ino", "st_dev", "st_ctime_ns")}
        print(f"one byte changed at offset {st.st_size // 2} of {target.name}, mtime restored; stat fields unchanged: {same}")
        result = execute_stage("sources", config, {"data": model}, out)
        caught = not result.cached and result.manifest.inputs["data"].files[target.name] != first.manifest.inputs["data"].files[target.name]
        print(f"change caught (stage re-ran, new sha256 recorded): {caught}")
        if not caught:
            raise SystemExit("FAIL: the one-byte change was not seen")
    finally:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
