"""Benchmark: what running a phase as its own container costs over the native runner.

Part 1, the engine's operations on a trivial job with the configuration a train phase gets (binds,
no network, tini, the backstop timeout), median (min-max) of N: create, start (the call), start
call to exit seen for a job that exits at once, stop (SIGTERM at the limit to exit seen) and
remove; beside them the native runner's spawn-to-reap and stop for the same jobs.
Part 2, the example submission (examples/tiny, demo data) once natively and once as containers:
per phase the harness wall clock, the marked span, their difference (launch + harness overhead)
and that difference as a share of a 600 s budget.
Usage: python benchmarks/container_overhead.py [--image pgolf:cpu] [--repeat N] [--skip-runs]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from dataclasses import replace
from pathlib import Path

from harness.paths import DEMO_DATASET, DEMO_TOKENIZER, REPO
from harness.rules import load_rules
from harness.run.backend import Native
from harness.run.container import Container, ContainerJob, run_job
from harness.run.native import run_phase
from harness.run.seed import RunSpec, run_seed

BUDGET_S = 600.0


def _summary(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def engine_operations(image: str, repeat: int, tmp: Path) -> None:
    folders = {name: tmp / name for name in ("code", "train", "artifact")}
    for folder in folders.values():
        folder.mkdir(parents=True)
    quick = ContainerJob(image, "train", ["true"], {}, folders["code"], folders["train"], folders["artifact"], None,
                         tmp / "quick.log", 60, 10, {"run": str(tmp), "seed": "0"}, echo=False)
    stopped = replace(quick, command=["sleep", "600"], limit_s=1.0)
    rows: dict[str, list[float]] = {k: [] for k in ("create", "start", "exit", "stop", "remove", "native exit",
                                                    "native stop")}
    for _ in range(repeat):
        done = run_job(quick)
        rows["create"].append(done.engine["timings"]["create_s"])
        rows["start"].append(done.engine["timings"]["start_s"])
        rows["remove"].append(done.engine["timings"]["remove_s"])
        rows["exit"].append(done.wall_s)
        done = run_job(stopped)
        rows["stop"].append(done.ended - done.sigterm_at)
        native = run_phase(["true"], env=dict(os.environ), cwd=folders["code"], log_path=tmp / "native.log",
                           limit_s=60, echo=False)
        rows["native exit"].append(native.wall_s)
        native = run_phase(["sleep", "600"], env=dict(os.environ), cwd=folders["code"], log_path=tmp / "native.log",
                           limit_s=1.0, grace_s=10, echo=False)
        rows["native stop"].append(native.ended - native.sigterm_at)
    print(f"engine operations, {repeat} runs each: seconds, median (min-max), and the median's share of {BUDGET_S:g} s")
    for name, values in rows.items():
        print(f"  {name:12s} {_summary(values)}  {statistics.median(values) / BUDGET_S:.4%}")
    per_phase = sum(statistics.median(rows[k]) for k in ("create", "exit", "remove"))
    print(f"  container per phase (create + start-to-exit + remove): {per_phase:.3f} s = {per_phase / BUDGET_S:.4%}; "
          f"native spawn-to-reap {statistics.median(rows['native exit']):.3f} s")


def phase_runs(image: str, tmp: Path) -> None:
    rules = load_rules()
    print("examples/tiny on the demo data (2 ranks): wall / marked / overhead (wall - marked), seconds")
    for label, backend in (("native", Native()), ("container", Container(image))):
        out = tmp / label / "seed_1"
        run_seed(RunSpec(REPO / "examples" / "tiny", DEMO_DATASET, DEMO_TOKENIZER, 1, 2, out, "track_10min_16mb",
                         600, 600, 10, echo=False, backend=backend), rules)
        verdict = json.loads((out / "verdict.json").read_text())
        if verdict["status"] != "pass":
            print(f"  {label}: verdict {verdict['status']}: "
                  f"{[f['message'] for f in verdict['findings'] if f['status'] in ('fail', 'warn')]}")
        for phase, facts in verdict["phases"].items():
            overhead = facts["wall_s"] - facts["marked_s"]
            line = (f"  {label:9s} {phase:5s} {facts['wall_s']:7.2f} / {facts['marked_s']:6.2f} / {overhead:6.2f}"
                    f"  ({overhead / BUDGET_S:.2%} of {BUDGET_S:g} s)")
            if "container" in facts:
                c = facts["container"]
                line += (f"; engine start-to-exit {c['engine_s']:.2f}, create {c['timings']['create_s']:.3f}, "
                         f"start {c['timings']['start_s']:.3f}, remove {c['timings']['remove_s']:.3f}")
            print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default="pgolf:cpu")
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--skip-runs", action="store_true", help="only part 1")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pgolf-bench-") as tmp:
        engine_operations(args.image, args.repeat, Path(tmp) / "ops")
        if not args.skip_runs:
            phase_runs(args.image, Path(tmp) / "runs")


if __name__ == "__main__":
    main()
