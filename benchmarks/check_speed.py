"""Benchmark: wall-clock of `pgolf check` on each bundled record folder, as a user runs it.

Prints the median and spread of N full process runs (start-up included) per folder.
Usage: python benchmarks/check_speed.py [--runs 7] [FOLDER ...]
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "records"


def time_check(folder: Path, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "harness", "check", str(folder), "--profile", "historic", "-q"],
                       check=False, capture_output=True)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("folders", nargs="*", type=Path)
    args = parser.parse_args()
    folders = args.folders or sorted(p for p in FIXTURES.glob("*/*") if p.is_dir())
    print(f"{'folder':<62} {'median s':>9} {'min s':>7} {'max s':>7}")
    for folder in folders:
        t = time_check(folder, args.runs)
        print(f"{folder.name:<62} {statistics.median(t):>9.3f} {min(t):>7.3f} {max(t):>7.3f}")


if __name__ == "__main__":
    main()
