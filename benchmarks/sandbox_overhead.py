"""Benchmark: what the native sandbox (bubblewrap, harness.run.native) costs a phase, and that GPUs,
torchrun's rendezvous and NCCL work inside it.

Prints, for a trivial job, the phase wall clock sandboxed and not (median of --repeat runs), the
difference as a share of a 600 s phase, and the output of a CUDA + NCCL job run in the sandbox
(skipped without a GPU). Usage: python benchmarks/sandbox_overhead.py [--repeat 10]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

from harness.run.native import Sandbox, bwrap_works, run_phase

PHASE_S = 600.0
GPU_JOB = """
import os, torch, torch.distributed as dist
dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
x = torch.ones(4, device="cuda" if torch.cuda.is_available() else "cpu")
dist.all_reduce(x)
print("rank", dist.get_rank(), "device", torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
      "all_reduce", x.sum().item(), "uid", os.getuid(), flush=True)
dist.destroy_process_group()
"""


def wall(tmp: Path, sandbox: Sandbox | None, cmd: list[str]) -> float:
    done = run_phase(cmd, env=dict(os.environ), cwd=tmp, log_path=tmp / "job.log", limit_s=120, echo=False,
                     sandbox=sandbox)
    assert done.returncode == 0, (tmp / "job.log").read_text()
    return done.wall_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    print(f"bubblewrap usable here: {bwrap_works()}")
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        trivial = [sys.executable, "-c", "pass"]
        rows = {label: [wall(tmp, box, trivial) for _ in range(args.repeat)]
                for label, box in (("host", None), ("sandbox", Sandbox()))}
        for label, times in rows.items():
            print(f"{label:8s} python -c pass: median {statistics.median(times):.3f} s "
                  f"(min {min(times):.3f}, max {max(times):.3f}, {args.repeat} runs)")
        extra = statistics.median(rows["sandbox"]) - statistics.median(rows["host"])
        print(f"sandbox cost per phase: {extra * 1000:.0f} ms = {100 * extra / PHASE_S:.3f}% of a {PHASE_S:g} s phase")
        (tmp / "job.py").write_text(GPU_JOB)
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "job.py"]
        done = run_phase(torchrun, env=dict(os.environ), cwd=tmp, log_path=tmp / "gpu.log", limit_s=300,
                         echo=False, sandbox=Sandbox())
        print(f"torchrun job in the sandbox: exit {done.returncode}, {done.wall_s:.1f} s, isolation {done.isolation}")
        print((tmp / "gpu.log").read_text().strip()[-2000:])


if __name__ == "__main__":
    main()
