#!/usr/bin/env bash
# A one-node Slurm for the Slurm launch test (tests/e2e/test_slurm.py): Debian's slurm-wlm (slurmctld, slurmd,
# sbatch, squeue, sacct) and munge, installed when missing. The test writes its own slurm.conf for localhost
# and starts/stops the daemons itself. Needs root (as on the project's machines and CI) for apt-get.
set -euo pipefail
if command -v sbatch >/dev/null 2>&1 && command -v slurmctld >/dev/null 2>&1 && command -v slurmd >/dev/null 2>&1 \
   && command -v munged >/dev/null 2>&1; then
  command -v sbatch
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "ensure-slurm: slurm is not installed and this user cannot apt-get it (run as root, or: sudo apt-get install -y slurm-wlm munge)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
command -v sbatch
