#!/usr/bin/env bash
# Headless Chromium for the report test (tests/e2e/test_report.py): Debian's package, installed when
# missing. Prints the binary's path. Needs root (as on the project's machines and CI) for apt-get.
set -euo pipefail
for bin in chromium chromium-browser; do
  if command -v "$bin" >/dev/null 2>&1; then
    command -v "$bin"
    exit 0
  fi
done
if [ "$(id -u)" -ne 0 ]; then
  echo "ensure-chromium: chromium is not installed and this user cannot apt-get it (run as root, or: sudo apt-get install -y chromium)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends chromium >/dev/null
command -v chromium
