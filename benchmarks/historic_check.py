"""Benchmark and evidence: `pgolf check --profile historic` over every records folder of the challenge.

Every folder under records/ on the challenge's main branch was merged by its reviewers, so each FAIL
printed here is either a real violation the reviewers let through or a fault of pgolf; the summary
in docs/benchmarks.md ("historic check") explains each one. The folders are extracted from a git
mirror with `git archive` into a temporary folder and checked in this process (the rules read once),
so the per-folder time is the check itself, without interpreter start-up.

Prints, per check, how many folders it left at PASS / INFO / WARN / FAIL (a folder counts once per
check, at its worst status), every FAIL finding with its evidence, and each folder's check time.
Usage: python benchmarks/historic_check.py [--git-dir DIR] [--rev main] [--json FILE]
"""
from __future__ import annotations

import argparse
import io
import json
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.atomic import write_text_atomic  # noqa: E402
from harness.check.checker import check_folder  # noqa: E402
from harness.checks import CHECKS  # noqa: E402
from harness.rules import load_rules  # noqa: E402

MIRROR = Path("/work/.mirror/openai+parameter-golf/repo")
_ORDER = ("pass", "info", "warn", "fail")


def extract_records(git_dir: Path, rev: str, into: Path) -> list[Path]:
    """Every records/<track>/<folder>/ of `rev`, written under `into`."""
    archive = subprocess.run(["git", f"--git-dir={git_dir}", "archive", "--format=tar", rev, "records"],
                             check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return sorted(p for p in (into / "records").glob("*/*") if p.is_dir())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--git-dir", type=Path, default=MIRROR, help="a (bare) git mirror of openai/parameter-golf")
    parser.add_argument("--rev", default="HEAD")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write every folder's statuses and FAILs")
    args = parser.parse_args()
    rules = load_rules(None)
    per_check: dict[str, Counter[str]] = {name: Counter() for name in CHECKS}
    overall: Counter[str] = Counter()
    times: dict[str, float] = {}
    report: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="pgolf-historic-") as tmp:
        folders = extract_records(args.git_dir, args.rev, Path(tmp))
        for folder in folders:
            name = f"{folder.parent.name}/{folder.name}"
            start = time.perf_counter()
            verdict = check_folder(folder, rules, profile="historic").to_dict()
            times[name] = time.perf_counter() - start
            worst: dict[str, str] = {}
            for f in verdict["findings"]:
                worst[f["check"]] = max(worst.get(f["check"], f["status"]), f["status"], key=_ORDER.index)
            for check, status in worst.items():
                per_check[check][status] += 1
            overall[verdict["status"]] += 1
            fails = [f for f in verdict["findings"] if f["status"] == "fail"]
            report[name] = {"status": verdict["status"], "checks": worst, "seconds": round(times[name], 3),
                            "fails": [{"check": f["check"], "code": f["code"], "message": f["message"],
                                       "evidence": f["evidence"]} for f in fails]}

    print(f"{len(report)} folders: " + ", ".join(f"{overall[s]} {s.upper()}" for s in ("pass", "warn", "fail")))
    print(f"\n{'check':<14} {'PASS':>5} {'INFO':>5} {'WARN':>5} {'FAIL':>5}")
    for check, counts in per_check.items():
        if counts:
            print(f"{check:<14} " + " ".join(f"{counts[s]:>5}" for s in _ORDER))
    print("\nFAILs (every records folder on main was accepted by its reviewers):")
    for name, entry in report.items():
        for f in entry["fails"]:
            where = f["evidence"][0] if f["evidence"] else {}
            at = f" [{where.get('file')}{':' + str(where['line']) if 'line' in where else ''}]" if where else ""
            print(f"  {name}: {f['check']} {f['code']}: {f['message']}{at}")
    print("\nper folder (check time, overall status):")
    for name, entry in report.items():
        print(f"  {entry['seconds']:>6.3f} s  {entry['status'].upper():<4}  {name}")
    values = sorted(times.values())
    print(f"\nper-folder check time: median {statistics.median(values):.3f} s, max {values[-1]:.3f} s "
          f"({max(times, key=times.get)}), total {sum(values):.1f} s")
    slow = [n for n, t in times.items() if t >= 1.0]
    print(f"folders at or over 1 s: {len(slow)}" + (f" ({', '.join(slow)})" if slow else ""))
    if args.json:
        write_text_atomic(args.json, json.dumps(report, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
