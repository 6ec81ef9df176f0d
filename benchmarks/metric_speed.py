"""Benchmark: harness.metric.score over the sp8192 val-set size (40,540,160 positions), synthetic data.

Prints seconds per 10M scored tokens (median of N runs), for the table and the sidecar path.
Usage: python benchmarks/metric_speed.py [--runs 5]
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from harness.metric import ByteTable, score

POSITIONS = 40_540_160
VOCAB = 8192


def synthetic(seed: int = 0):
    """A random 8192-entry table (ids 0-3 boundary) and a stream with a BOS every ~1,000 tokens."""
    rng = np.random.default_rng(seed)
    base = rng.integers(1, 8, VOCAB).astype(np.int16)
    base[:4] = 0
    boundary = np.zeros(VOCAB, dtype=bool)
    boundary[:4] = True
    table = ByteTable(base, rng.random(VOCAB) < 0.6, boundary)
    tokens = rng.integers(4, VOCAB, POSITIONS, dtype=np.uint16)
    tokens[rng.random(POSITIONS) < 1e-3] = 1
    nll = rng.gamma(2.0, 1.2, POSITIONS - 1).astype(np.float32)
    sidecar = rng.integers(0, 8, POSITIONS).astype(np.uint16)
    return table, tokens, nll, sidecar


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    table, tokens, nll, sidecar = synthetic()
    for name, source in [("table", {"table": table}), ("sidecar", {"sidecar": sidecar})]:
        times = []
        for _ in range(args.runs):
            start = time.perf_counter()
            result = score(nll, tokens, **source)
            times.append(time.perf_counter() - start)
        per10m = statistics.median(times) * 1e7 / result.tokens
        print(f"{name:<8} {result.tokens:,} targets  median {statistics.median(times):.3f} s  "
              f"= {per10m:.3f} s per 10M tokens  (bpb {result.bpb:.4f})")


if __name__ == "__main__":
    main()
