"""Benchmark: static legality lint over a large Python file.

The input is pgolf's own source concatenated to about 150 KB (the size of a readable record
script). Prints the median and spread of N runs.
Usage: python benchmarks/lint_speed.py [--runs 9] [--kb 150]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from harness.check.lint import lint_files

PACKAGE = Path(__file__).resolve().parents[1] / "harness"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--kb", type=int, default=150)
    args = parser.parse_args()
    source = "\n".join(p.read_text() for p in sorted(PACKAGE.rglob("*.py")))
    body = (source * (args.kb * 1024 // len(source) + 1))[: args.kb * 1024]
    body = body[: body.rfind("\ndef ")]  # end on a whole top-level block
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train_gpt.py"
        path.write_text(body)
        times = []
        for _ in range(args.runs):
            start = time.perf_counter()
            lint_files(Path(tmp), [path])
            times.append(time.perf_counter() - start)
    print(f"lint of {len(body) / 1024:.0f} KB: median {statistics.median(times) * 1000:.1f} ms, "
          f"min {min(times) * 1000:.1f} ms, max {max(times) * 1000:.1f} ms over {args.runs} runs")


if __name__ == "__main__":
    main()
