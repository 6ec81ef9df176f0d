"""report.html and report.md of a real rerun, the HTML opened in a real headless Chromium.

The rerun judges a real two-seed run of examples/tiny against its own `pgolf export`, with seed 2's
claim pushed off so one marker must be drawn red, and a frontier so its band must be drawn.
Chromium proves the page renders: a probe script (added to a copy; the report itself has none)
measures every plot's drawn elements in the laid-out page, and a screenshot is kept in
test-artifacts/ for a human to look at.
"""
from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess

import pytest
from test_rerun import TINY, perturb, pgolf

from conftest import run_failures
from harness.paths import REPO

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = REPO / "test-artifacts"
PROBE = """<script>
const measured = {};
for (const figure of document.querySelectorAll('figure')) {
  measured[figure.id] = [...figure.querySelectorAll('svg')].map(svg => {
    const box = svg.getBoundingClientRect();
    const drawn = sel => [...svg.querySelectorAll(sel)].filter(e => {
      const b = e.getBBox(); return b.width > 0 || b.height > 0; }).length;
    return {width: box.width, height: box.height, claimed: drawn('.claimed'), reproduced: drawn('.reproduced'),
            limit: drawn('.limit'), frontier: drawn('.frontier'), bars: drawn('rect.bar'),
            red: [...svg.querySelectorAll('circle.reproduced')]
                   .filter(c => c.getAttribute('fill') === '#cf222e').length};
  });
}
const pre = document.createElement('pre');
pre.id = 'measured';
pre.textContent = JSON.stringify(measured);
document.body.appendChild(pre);
</script>"""


def chromium(*args, profile) -> subprocess.CompletedProcess:
    """Headless Chromium with a fresh profile and nothing that reaches the network on its own."""
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                           "--disable-background-networking", "--disable-component-update", "--disable-sync",
                           f"--user-data-dir={profile}", *map(str, args)], capture_output=True, text=True, timeout=180)


@pytest.fixture(scope="module")
def rerun(tmp_path_factory):
    """A rerun folder: the report of a one-rank, two-seed tiny run merged against its perturbed export."""
    root = tmp_path_factory.mktemp("report")
    done = pgolf("run", "--out", root / "run", "--seeds", "1,2", "--nproc", "1", "-q", env=TINY)
    assert done.returncode == 0, run_failures(root / "run") + done.stderr[-2000:]
    dest = root / "records" / "track_10min_16mb"
    done = pgolf("export", root / "run", "--name", "TinyOff", "--date", "2026-05-02", "--dest", dest, "-q")
    assert done.returncode == 0, done.stderr
    perturb(dest / "2026-05-02_TinyOff", 2, 0.05)
    done = pgolf("rerun", dest / "2026-05-02_TinyOff", "--merge", root / "run", "--out", root / "rerun",
                 "--against", "3.9,3.95,3.92", "-q")
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    return root / "rerun"


def test_the_html_report_is_self_contained(rerun):
    page = (rerun / "report.html").read_text()
    for outside in ("<script", "http://", "https://", "src=", "href=", "url(", "@import", "<link"):
        assert outside not in page, outside
    assert page.count("<svg") == 2 + 1 + 3  # a loss panel per seed, the val_bpb plot, three budgets


def test_the_report_renders_in_headless_chromium_with_every_plot_drawn(rerun, tmp_path):
    probe = tmp_path / "probe.html"
    probe.write_text((rerun / "report.html").read_text().replace("</body>", PROBE + "</body>"))
    done = chromium("--dump-dom", probe.as_uri(), profile=tmp_path / "profile")
    found = re.search(r'<pre id="measured">(.*?)</pre>', done.stdout, re.S)
    assert found, done.stdout[-2000:] + done.stderr[-2000:]
    plots = json.loads(found[1])

    assert len(plots["plot-loss"]) == 2
    for panel in plots["plot-loss"]:  # three logged steps each: a line and three markers, claimed and reproduced
        assert panel["width"] >= 360 and panel["height"] >= 230  # as drawn, plus the border
        assert panel["claimed"] == 4 and panel["reproduced"] == 4
    [bpb] = plots["plot-bpb"]
    assert bpb["claimed"] == 2 and bpb["reproduced"] == 2 and bpb["red"] == 1 and bpb["frontier"] == 2
    assert len(plots["plot-budgets"]) == 3
    for budget in plots["plot-budgets"]:  # the record track: every budget has its limit line
        assert budget["limit"] == 1 and budget["bars"] == 4 and budget["width"] >= 350

    static = chromium("--dump-dom", (rerun / "report.html").as_uri(), profile=tmp_path / "profile2").stdout
    assert static.count("<svg") == 6 and "not reproduced" in static and 'id="measured"' not in static


def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", "not a PNG"
    return struct.unpack(">II", data[16:24])


def test_a_screenshot_of_the_report_is_kept_as_a_test_artifact(rerun, tmp_path):
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "rerun-report.png"
    shot.unlink(missing_ok=True)
    chromium(f"--screenshot={shot}", "--window-size=1200,2000", (rerun / "report.html").as_uri(),
             profile=tmp_path / "profile")
    blank = tmp_path / "blank.html"
    blank.write_text("<!doctype html><html><body></body></html>")
    empty = tmp_path / "blank.png"
    chromium(f"--screenshot={empty}", "--window-size=1200,2000", blank.as_uri(), profile=tmp_path / "profile2")
    assert _png_size(shot) == (1200, 2000) == _png_size(empty)
    assert shot.stat().st_size > 10 * empty.stat().st_size  # text, tables and plots, not a blank page
    shutil.copy2(rerun / "report.html", ARTIFACTS / "rerun-report.html")


def test_the_markdown_summary_has_a_row_per_seed_with_the_verdict_s_numbers(rerun):
    verdict = json.loads((rerun / "verdict.json").read_text())
    markdown = (rerun / "report.md").read_text()
    assert markdown.startswith("## pgolf rerun: ❌ FAIL — 1 of 2 seed(s) reproduced\n")
    for seed, row in verdict["seeds"].items():
        mark = "✅ reproduced" if row["outcome"] == "reproduced" else "❌ not reproduced"
        assert (f"| {seed} | {mark} | {row['claimed']['val_bpb']:.8f} | {row['reproduced']['val_bpb']:.8f} | "
                f"{row['delta_val_bpb']:+z.8f} |") in markdown
    for text in (markdown, (rerun / "report.html").read_text()):  # a difference that rounds to 0 has no sign
        assert not re.search(r"-0\.0+(?![0-9])", text)
    for f in verdict["findings"]:  # every finding appears once: the aggregate as a list, the rest in the table
        assert markdown.count(f["message"].replace("|", "\\|")) == 1, f["code"]
