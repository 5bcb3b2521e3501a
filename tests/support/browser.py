"""Headless Chromium for browser tests: Debian's package, installed by scripts/ensure-chromium.sh when missing
(the test's own setup, not `make test`), and the DOM of a page after its scripts ran."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# flags for a root user on a machine with no network: no sandbox, no GPU, no background connections
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-default-apps", "--mute-audio"]


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    done = subprocess.run(["bash", str(ROOT / "scripts" / "ensure-chromium.sh")], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"could not install chromium: {done.stderr[-2000:]}"
    return done.stdout.strip().splitlines()[-1]


def dump_dom(url: str, profile: Path) -> str:
    """The page's DOM once it loaded and its scripts ran (chromium --dump-dom)."""
    done = subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=5000",
                           "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout
