"""Benchmark: event-channel + ledger throughput for a full validation set of NLLs.

Sends N float32 NLLs (default 40,540,160, the sp8192 validation set) from R client threads in
frames of F positions through the real Unix-socket server into the ledger, with an update
declaration after each chunk, and prints positions per second and the cost as a share of a
600 s evaluation budget.
Usage: python benchmarks/events_speed.py [--positions N] [--ranks R] [--frame F]
"""
from __future__ import annotations

import argparse
import io
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from harness.client.pgolf_events import Events
from harness.run.events import EventServer
from harness.run.ledger import Ledger


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--positions", type=int, default=40_540_160)
    parser.add_argument("--ranks", type=int, default=8)
    parser.add_argument("--frame", type=int, default=32_768)
    args = parser.parse_args()
    n = args.positions + 1
    tokens = np.ones(n, dtype=np.uint16)
    nll = np.random.default_rng(0).random(n, dtype=np.float32)
    chunks = [(lo, min(lo + args.frame * args.ranks, n)) for lo in range(1, n, args.frame * args.ranks)]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "events.sock"
        ledger = Ledger(tokens, [])
        barrier = threading.Barrier(args.ranks)

        def rank(r: int) -> None:
            events = Events(str(path), r, args.ranks)
            for lo, hi in chunks:
                mine = np.array_split(np.arange(lo, hi), args.ranks)[r]
                if mine.size:
                    events.scores(int(mine[0]), nll[mine[0]:mine[-1] + 1])
                barrier.wait()
                if r == 0:
                    events.update(lo, hi)
            events.close()

        start = time.perf_counter()
        with EventServer(path, io.StringIO(), ledger) as server:
            threads = [threading.Thread(target=rank, args=(r,)) for r in range(args.ranks)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        elapsed = time.perf_counter() - start
    codes = sorted(f.code for f in ledger.findings())
    print(f"{args.positions:,} positions, {args.ranks} ranks, {len(chunks):,} chunks: {elapsed:.2f} s "
          f"= {args.positions / elapsed / 1e6:.1f} M positions/s = {elapsed / 600 * 100:.2f}% of a 600 s budget "
          f"({server.received.score_frames:,} frames; ledger: {', '.join(codes)})")


if __name__ == "__main__":
    main()
