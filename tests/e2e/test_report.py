"""`compass runs report` renders in a real browser (headless Debian Chromium, no server, no network, from
file://): Plotly (vendored, inlined) draws the training curves with the runs of the same stage overlaid, the
headline metrics come first with their direction and link to run sections, constant or one-point series are
numbers, the file is world-readable, and a 1400 px wide screenshot is taken (tests leave it in tmp_path)."""
import re
import shutil
import stat
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from support import ledger_runs as ledger_support

from compass.commands.runs import main

ROOT = Path(__file__).resolve().parents[2]
# flags for a root user on a machine with no network: no sandbox, no GPU, no background connections
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-default-apps", "--mute-audio", "--virtual-time-budget=15000"]


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    done = subprocess.run(["bash", str(ROOT / "scripts" / "ensure-chromium.sh")], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"could not install chromium: {done.stderr[-2000:]}"
    return done.stdout.strip().splitlines()[-1]


class Dom(HTMLParser):
    """What the browser built: chart containers Plotly drew into, their traces, tables, links and anchors."""

    def __init__(self):
        super().__init__()
        self.charts: list[dict] = []      # attrs of div.chart, with how many trace groups Plotly drew inside
        self.ids: set[str] = set()
        self.links: list[str] = []
        self.tables = 0
        self.lineage = 0
        self._chart_depth: list[int] = []
        self.depth = 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.depth += 1
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "a" and attrs.get("href", "").startswith("#"):
            self.links.append(attrs["href"][1:])
        if tag == "table":
            self.tables += 1
        if tag == "pre" and attrs.get("class") == "lineage":
            self.lineage += 1
        classes = (attrs.get("class") or "").split()
        if tag == "div" and "chart" in classes:
            self.charts.append({**attrs, "plotly": "js-plotly-plot" in classes, "traces": 0, "svg": 0})
            self._chart_depth.append(self.depth)
        if self._chart_depth and tag == "g" and "trace" in classes and "scatter" in classes:
            self.charts[-1]["traces"] += 1
        if self._chart_depth and tag == "svg" and "main-svg" in classes:
            self.charts[-1]["svg"] += 1

    def handle_endtag(self, tag):
        if self._chart_depth and self.depth == self._chart_depth[-1]:
            self._chart_depth.pop()
        self.depth -= 1


@pytest.fixture
def report(tmp_path, tmp_path_factory, monkeypatch):
    ledger_support.workspace_for_test(tmp_path_factory, tmp_path / "home", monkeypatch)
    ledger_support.run_chain(tmp_path / "a")
    ledger_support.run_chain(tmp_path / "b", beta=0.2, weights={"omit_thinking": 0.5, "tamper_thinking_numbers": 0.5, "tamper_answer": 0.0})
    out = tmp_path / "report.html"
    assert main(["report", "--out", str(out)]) == 0
    return out


def test_report_file_headline_metrics_first_with_direction(report):
    assert stat.S_IMODE(report.stat().st_mode) == 0o644
    page = report.read_text()
    assert "https://" not in page.split("<script>", 1)[0] and "<script src" not in page  # nothing fetched
    headline = page[page.index('id="headline"'):page.index('id="curves"')]
    titles = re.findall(r"<h3>([^<]+) <span class=\"dir\">([^<]+)</span>", headline)
    # eval scores first (accuracy before the others), then DPO's held-out reward accuracy, then final losses
    assert [t for t, _ in titles][:2] == ["gsm8k.accuracy", "mgsm_ja.accuracy"], titles
    assert dict(titles)["gsm8k.accuracy"] == "higher is better ↑"
    assert dict(titles)["train_loss"] == "lower is better ↓" and [t for t, _ in titles][-1] == "train_loss"
    # the loss board is best (lowest) first
    board = headline[headline.index(">train_loss <"):]
    values = [float(v) for v in re.findall(r'<td class="num">([0-9.e-]+)</td><td class="data">', board.split("</table>")[0])]
    assert len(values) >= 2 and values == sorted(values)


def test_report_renders_in_headless_chromium_with_overlaid_curves(report, tmp_path):
    browser = chromium()
    profile = tmp_path / "profile"
    dom = subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom", report.as_uri()],
                         capture_output=True, text=True, timeout=180)
    assert dom.returncode == 0, dom.stderr[-2000:]
    parsed = Dom()
    parsed.feed(dom.stdout)
    charts = {c["data-metric"] + "@" + c["id"]: c for c in parsed.charts}
    assert parsed.charts and all(c["plotly"] and c["svg"] >= 1 for c in parsed.charts), parsed.charts  # Plotly drew each
    # sft and dpo of two chains: loss of both runs in one chart per stage, DPO's rewards overlaid too
    loss = [c for c in parsed.charts if c["data-metric"] == "loss"]
    assert len(loss) == 2 and all(c["data-runs"] == "2" and c["traces"] == 2 for c in loss), loss
    margins = [c for c in parsed.charts if c["data-metric"] == "rewards/margins"]
    assert len(margins) == 1 and margins[0]["traces"] == 2
    # the learning rate is constant in every run: a number, not a chart on a made-up axis
    assert not [c for c in parsed.charts if c["data-metric"] == "learning_rate"], sorted(charts)
    text = re.sub(r"<[^>]+>", " ", dom.stdout)
    assert "learning_rate" in text and "(constant)" in text
    # every leaderboard row and overlay legend links to a run section that exists
    run_links = [link for link in parsed.links if link.startswith("run-")]
    assert run_links and set(run_links) <= parsed.ids
    assert parsed.lineage >= 10  # a section per run, each with its lineage
    assert "tamper_answer dropped" in text and "dpo.beta=0.2" in text
    assert "model &lt;- dpo" in dom.stdout or "model <- dpo" in text

    shot = tmp_path / "report.png"
    done = subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--screenshot={shot}",
                           "--window-size=1400,2400", report.as_uri()], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0 and shot.stat().st_size > 40_000, done.stderr[-2000:]
