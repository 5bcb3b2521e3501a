"""A process that records stage runs into the ledger ($COMPASS_HOME) as fast as it can, for the fault tests.

    python ledger_worker.py WORKER COUNT WORKDIR     (COUNT 0: until killed)

Each run has an output file of its own bytes plus one shared by every worker (same bytes stored once),
and, after its first, the previous run's output as its input (lineage under concurrency)."""
import hashlib
import sys
import uuid
from pathlib import Path

from compass.ledger import record_stage_run
from compass.manifest import InputRecord, Manifest, code_version, now_iso

SHARED = b"the same bytes in every run\n" * 64


def main(worker: int, count: int, workdir: Path) -> None:
    code = code_version()
    previous: Path | None = None
    i = 0
    while count == 0 or i < count:
        out = workdir / f"w{worker}" / f"run{i:04d}"
        out.mkdir(parents=True, exist_ok=True)
        own = f"worker {worker} run {i}\n".encode() * 200
        (out / "data.txt").write_bytes(own)
        (out / "shared.bin").write_bytes(SHARED)
        inputs = {}
        if previous is not None:
            inputs["prev"] = InputRecord(path=str(previous / "data.txt"),
                                         files={"data.txt": hashlib.sha256((previous / "data.txt").read_bytes()).hexdigest()})
        config = {"seed": worker, "worker": worker, "index": i, "lr": 0.001 * (i + 1)}
        manifest = Manifest(
            stage="sources", name=f"w{worker}-{i}", run_id=uuid.uuid4().hex, config=config,
            config_hash=hashlib.sha256(repr(config).encode()).hexdigest(), seed=worker, code=code, versions={"python": "3"},
            inputs=inputs, outputs={"data.txt": hashlib.sha256(own).hexdigest(), "shared.bin": hashlib.sha256(SHARED).hexdigest()},
            started_at=now_iso(), wall_time_s=0.0, metrics={"index": i, "worker": worker, "score": i / 100},
        )
        record_stage_run(manifest, out)
        previous = out
        i += 1


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]))
