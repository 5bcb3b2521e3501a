"""Entry point of one process of a stage started by `accelerate launch` (see runner._run_launched)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from compass.io import write_json_atomic
from compass.runner import WORKER_METRICS, process_rank, set_seed
from compass.stagekit import build_context
from compass.stages import get_stage


def main(job_path: str) -> None:
    job = json.loads(Path(job_path).read_text())
    module = get_stage(job["kind"])
    config = module.Config.model_validate(job["config"])
    set_seed(config.seed)
    ctx = build_context(job["kind"], config, {k: Path(v) for k, v in job["inputs"].items()}, Path(job["out_dir"]),
                        input_hashes=job["input_hashes"], stage_version=module.VERSION)
    metrics = module.run(config, ctx)
    if process_rank() == 0:
        write_json_atomic(Path(job["out_dir"]) / WORKER_METRICS, metrics)


if __name__ == "__main__":
    main(sys.argv[1])
