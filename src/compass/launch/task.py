"""One task of a Slurm job array (see compass.launch.slurm): run the stage with `shard: I/N`, I from the
command line ($SLURM_ARRAY_TASK_ID), into its shard directory, as an ordinary cached stage run."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from compass.runner import execute_stage
from compass.stages import get_stage


def main(job_path: str, index: str) -> None:
    job = json.loads(Path(job_path).read_text())
    module = get_stage(job["kind"])
    shard = int(index)
    config = module.Config.model_validate({**job["config"], "shard": f"{shard}/{job['count']}"})
    result = execute_stage(job["kind"], config, {k: Path(v) for k, v in job["inputs"].items()},
                           Path(job["shard_dirs"][shard]), name=f"{job['name']}.shard{shard}")
    state = "cached" if result.cached else f"done in {result.manifest.wall_time_s:.1f}s"
    print(f"{job['kind']} shard {shard}/{job['count']}: {state} -> {result.out_dir}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
