"""Benchmark: how small a cheat `pgolf probe` still catches, on examples/tiny (CPU, the demo data).

For each strength of two attack cases — tests/attack_cases/probe_target_bonus (a logit bonus on the
true target, renormalised: `probe.reads_targets`) and tests/attack_cases/ledger_undeclared_update (one
undeclared SGD step on chunk 0 before scoring it, at the given learning rate: `probe.noncausal`) — it
runs `pgolf run --probe` (and once for examples/tiny itself) and prints the probe's findings, the largest change it saw and the harness's
val_bpb, so the table shows where detection stops and what the cheat gained there.
Usage: python benchmarks/probe_power.py [--bonus 0.1,0.01,0.001] [--lr 1e-3,1e-5,1e-7]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CASES = REPO / "tests" / "attack_cases"
sys.path.insert(0, str(REPO / "tests"))
from tiny_variants import broken_source  # noqa: E402


def one(case: str, size: str, work: Path) -> dict:
    folder = work / f"{case}_{size}"
    shutil.copytree(CASES / case, folder / "sub", ignore=shutil.ignore_patterns("expect.json", "__pycache__"))
    (folder / "sub" / "tiny.py").write_text(broken_source())  # the cheats use its TINY_BUG hooks
    shutil.copy(CASES / "cheat.py", folder / "sub" / "cheat.py")
    if not (folder / "sub" / "train_gpt.py").exists():  # the honest case runs tiny itself
        shutil.copy(REPO / "examples" / "tiny" / "train_gpt.py", folder / "sub" / "train_gpt.py")
    env = {**os.environ, "TINY_STEPS": "5", "TINY_CHEAT_SIZE": size,
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    subprocess.run([sys.executable, "-m", "harness", "run", "-q", "--probe", "--nproc", "1", "--submission",
                    str(folder / "sub"), "--out", str(folder / "run")], env=env, capture_output=True, timeout=900)
    seed = folder / "run" / "seed_1"
    verdict = json.loads((seed / "verdict.json").read_text())
    probe = [f for f in verdict["findings"] if f["check"] == "probe"]
    facts = next(iter(verdict["seeds"].values()))
    return {"case": case, "size": size, "val_bpb": facts.get("val_bpb"),
            "probe": {f["code"]: f["status"] for f in probe},
            "detail": [f["message"] for f in probe if f["status"] == "fail"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bonus", default="0.1,0.01,0.001")
    parser.add_argument("--lr", default="1e-3,1e-5,1e-7")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pgolf-probe-power-") as tmp:
        rows = [one("probe_honest", "0", Path(tmp))]
        rows += [one("probe_target_bonus", s, Path(tmp)) for s in args.bonus.split(",")]
        rows += [one("ledger_undeclared_update", s, Path(tmp)) for s in args.lr.split(",")]
    for row in rows:
        caught = [c for c, s in row["probe"].items() if s == "fail"]
        print(f"{row['case']:26} size {row['size']:>7}  val_bpb {row['val_bpb']:.6f}  "
              f"{'CAUGHT ' + ','.join(caught) if caught else 'not caught'}")
        for text in row["detail"]:
            print(f"    {text[:300]}")


if __name__ == "__main__":
    main()
