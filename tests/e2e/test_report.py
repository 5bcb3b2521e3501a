"""`compass runs report` renders in a real browser (headless Debian Chromium, no server, from file://):
the leaderboard is there with its data-recipe columns, loss and reward curves are drawn as SVG, and
the lineage is printed."""
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser  # headless Chromium, installed by chromium() below when missing

from support import ledger_runs as ledger_support  # noqa: E402

from compass.commands.runs import main  # noqa: E402

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


class Counter(HTMLParser):
    def __init__(self):
        super().__init__()
        self.svgs = 0
        self.polylines: list[int] = []
        self.tables = 0
        self.pre_lineage = 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "svg" and attrs.get("class") == "curve":
            self.svgs += 1
        if tag == "polyline":
            self.polylines.append(len(attrs["points"].split()))
        if tag == "table":
            self.tables += 1
        if tag == "pre" and attrs.get("class") == "lineage":
            self.pre_lineage += 1


def test_report_renders_in_headless_chromium_with_curves(tmp_path, tmp_path_factory, monkeypatch):
    ws = ledger_support.workspace_for_test(tmp_path_factory, tmp_path / "home", monkeypatch)
    ledger_support.run_chain(tmp_path / "a")
    ledger_support.run_chain(tmp_path / "b", beta=0.2, weights={"omit_thinking": 0.5, "tamper_thinking_numbers": 0.5, "tamper_answer": 0.0})
    report = tmp_path / "report.html"
    assert main(["report", "--out", str(report), "--metric", "gsm8k.accuracy"]) == 0

    browser = chromium()
    profile = tmp_path / "profile"
    dom = subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom", report.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    parsed = Counter()
    parsed.feed(dom.stdout)
    # sft and dpo of two chains: a loss chart each, and a rewards chart per dpo run
    assert parsed.svgs >= 2 * 2 + 2 + 2  # loss x4, rewards x2, learning_rate x4
    assert parsed.polylines and min(parsed.polylines) >= 8  # every logged step is a point
    assert parsed.tables == 2 and parsed.pre_lineage >= 2
    text = re.sub(r"<[^>]+>", " ", dom.stdout)
    assert "tamper_answer dropped" in text and "dpo.beta=0.2" in text
    assert "model &lt;- dpo" in dom.stdout or "model <- dpo" in text

    shot = tmp_path / "report.png"
    done = subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--screenshot={shot}",
                           "--window-size=1280,2200", report.as_uri()], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and shot.stat().st_size > 20_000, done.stderr[-2000:]
