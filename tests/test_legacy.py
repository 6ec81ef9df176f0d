"""`pgolf run --legacy`: a plain script (no protocol) runs as one job and its log is judged as `pgolf check` would."""
from __future__ import annotations

import json
import re
import subprocess
import sys

from harness.paths import DEMO_DATASET, DEMO_TOKENIZER, REPO
from harness.rules import load_rules
from harness.run.seed import RunSpec, run_seed

PLAIN = REPO / "tests" / "legacy_cases" / "plain"
GAPS = {"guarantees.separate_phases", "guarantees.data_isolation", "guarantees.harness_bpb", "guarantees.score_ledger"}


def test_plain_script_runs_and_its_logged_score_is_reported_with_the_unenforced_guarantees(tmp_path):
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "harness", "run", "--legacy", "--submission", PLAIN, "--nproc", "1",
                           "--seeds", "7", "--out", out, "-q"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    verdict = json.loads((out / "seed_7" / "verdict.json").read_text())
    log = (out / "seed_7" / "legacy.log").read_text()
    exact = re.search(r"^final_int8_zlib_roundtrip_exact val_loss:(\S+) val_bpb:(\S+)$", log, re.M)
    total = re.search(r"^Total submission size int8\+zlib: (\d+) bytes$", log, re.M)
    assert "seed:7" in log  # the seed reached the script

    facts = verdict["seeds"]["7"]
    assert verdict["legacy"] is True and verdict["status"] == "warn"
    assert facts["logged_val_bpb"] == float(exact[2]) and facts["logged_val_loss"] == float(exact[1])
    assert "val_bpb" not in facts  # never presented as a harness-measured score
    assert facts["logged_artifact_bytes"] == int(total[1])
    found = {f["code"]: f for f in verdict["findings"]}
    assert {c for c, f in found.items() if f["check"] == "guarantees" and f["status"] == "warn"} == GAPS
    assert found["metric.from_log"]["status"] == "info" and found["phase.completed"]["status"] == "pass"
    assert found["isolation.network"]["status"] == "pass"
    assert "code/final_model.int8.ptz" in found["size.files_written"]["data"]["files"]

    refused = subprocess.run([sys.executable, "-m", "harness", "export", out, "--name", "Plain", "--dest",
                              tmp_path / "records"], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "--legacy" in refused.stderr and not (tmp_path / "records").exists()


def test_a_crashing_plain_script_is_a_crashed_phase(tmp_path, monkeypatch):
    monkeypatch.setenv("LEGACY_CRASH", "1")
    spec = RunSpec(PLAIN, DEMO_DATASET, DEMO_TOKENIZER, 1, 1, tmp_path / "seed_1", "track_10min_16mb", 120, 120,
                   grace_s=2, echo=False, legacy=True)
    verdict = run_seed(spec, load_rules())
    found = {f.code: f.status for f in verdict.findings}
    assert verdict.status == "fail" and found["phase.crashed"] == "fail" and found["metric.no_score"] == "fail"
    assert GAPS <= found.keys()
    assert json.loads((tmp_path / "seed_1" / "verdict.json").read_text())["status"] == "fail"
