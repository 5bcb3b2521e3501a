"""Running stages elsewhere than in `compass run`'s own process: shard runs joined by a gather (gather.py),
and stages submitted to a Slurm cluster as jobs or job arrays (slurm.py). The runner calls into these; they
never import the runner (the layers point down)."""
