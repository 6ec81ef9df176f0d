"""The golden corpus: every folder under tests/golden/ is one case, and one test (add a folder, get a test).

A case is `tests/golden/<case>/submission/` (the records folder as submitted) and
`tests/golden/<case>/expect.json`:

    {"why": "what the case shows",
     "profile": "historic",                        # the --profile to check with
     "track": "track_10min_16mb",                  # optional: the records/<track>/ it is checked under
     "folder": "2026-04-29_SmearGateBOSFix_...",   # optional: the folder's name as submitted
     "submission": "../../fixtures/records/...",   # optional: a folder elsewhere in tests/ instead of submission/
     "checks": {"claims": "pass", "size": "fail"}} # per check: pass, info, warn, fail, or none (no finding)

The check reads a folder's name (YYYY-MM-DD_Description) and its track (the parent folder), so the case's
folder is copied to <tmp>/records/<track>/<folder>/ (defaults: track_10min_16mb, 2026-01-01_<case>) and
checked there by `pgolf check --json` in this process. A check's status is the worst of its findings as
the report ranks them (pass < info < warn < fail); checks the case does not list are not asserted.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from harness.checks import CHECKS
from harness.cli import main
from harness.report import _RANK

GOLDEN = Path(__file__).parent / "golden"
CASES = sorted(p.name for p in GOLDEN.iterdir() if (p / "expect.json").is_file()) if GOLDEN.is_dir() else []
STATUSES = ("none", *_RANK)


def _expectation(case: str) -> dict:
    expect = json.loads((GOLDEN / case / "expect.json").read_text("utf-8"))
    assert isinstance(expect.get("why"), str) and expect["why"], f"{case}/expect.json: 'why' must say what the case shows"
    assert expect.get("profile") in ("strict", "historic"), f"{case}/expect.json: 'profile' must be strict or historic"
    checks = expect.get("checks")
    assert isinstance(checks, dict) and checks, f"{case}/expect.json: 'checks' must map check names to statuses"
    unknown = {name: status for name, status in checks.items() if name not in CHECKS or status not in STATUSES}
    assert not unknown, f"{case}/expect.json: unknown check or status {unknown} (statuses: {', '.join(STATUSES)})"
    return expect


def _placed(case: str, expect: dict, tmp_path: Path) -> Path:
    """The case's folder copied to where a PR would put it: records/<track>/<folder>/."""
    source = (GOLDEN / case / expect.get("submission", "submission")).resolve()
    assert source.is_dir(), f"{case}: no submission folder at {source}"
    name = expect.get("folder", f"2026-01-01_{re.sub(r'[^A-Za-z0-9._+-]', '-', case)}")
    dest = tmp_path / "records" / expect.get("track", "track_10min_16mb") / name
    shutil.copytree(source, dest, symlinks=True)
    return dest


def test_the_corpus_holds_cases():
    assert len(CASES) >= 10, f"tests/golden/ holds {len(CASES)} cases"


@pytest.mark.parametrize("case", CASES)
def test_golden(case, tmp_path):
    expect = _expectation(case)
    folder = _placed(case, expect, tmp_path)
    out = tmp_path / "verdict.json"
    code = main(["check", str(folder), "--profile", expect["profile"], "--json", str(out), "-q"])
    assert code in (0, 1), f"{case}: pgolf check exited {code}"
    verdict = json.loads(out.read_text("utf-8"))
    actual: dict[str, str] = {}
    for f in verdict["findings"]:
        actual[f["check"]] = max(actual.get(f["check"], f["status"]), f["status"], key=_RANK.index)
    wrong = {name: (want, actual.get(name, "none")) for name, want in expect["checks"].items()
             if actual.get(name, "none") != want}
    if wrong:
        lines = [f"{case}: {expect['why']}"]
        for name, (want, got) in wrong.items():
            lines.append(f"  {name}: expected {want}, got {got}")
            lines += [f"      {f['status'].upper()} {f['code']}: {f['message']}"
                      for f in verdict["findings"] if f["check"] == name and f["status"] != "pass"][:6]
        pytest.fail("\n".join(lines), pytrace=False)
