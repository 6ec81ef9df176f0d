"""`pgolf run` end to end: real torchrun jobs (2 gloo ranks) of the tiny example on the demo data.

Each broken variant of the example (TINY_BUG, staged by tests/tiny_variants.py) must produce its own specific FAIL.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness.paths import DEMO_DATASET, DEMO_TOKENIZER, REPO
from tiny_variants import stage_broken_tiny
from harness.findings import UsageError
from harness.run.seed import RunSpec, run_seed

TINY = REPO / "examples" / "tiny"


@pytest.fixture(scope="module")
def broken(tmp_path_factory) -> Path:
    """examples/tiny with its TINY_BUG switches."""
    return stage_broken_tiny(tmp_path_factory.mktemp("tiny") / "broken")


def spec(tmp_path: Path, **overrides) -> RunSpec:
    fields = dict(submission=TINY, dataset=DEMO_DATASET, tokenizer=DEMO_TOKENIZER, seed=1, nproc=2,
                  out=tmp_path / "seed_1", track="track_10min_16mb", train_limit_s=300, eval_limit_s=300,
                  grace_s=2, echo=False)
    return RunSpec(**{**fields, **overrides})


def statuses(verdict) -> dict[str, str]:
    return {f.code: f.status for f in verdict.findings}


def test_cli_run_on_the_demo_passes_and_the_harness_bpb_matches(tmp_path):
    run = subprocess.run([sys.executable, "-m", "harness", "run", "--out", tmp_path / "run", "--seeds", "3"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    verdict = json.loads((tmp_path / "run" / "seed_3" / "verdict.json").read_text())
    codes = {f["code"]: f["status"] for f in verdict["findings"]}
    assert verdict["status"] == "pass" and verdict["command"] == "run"
    assert verdict["seeds"]["3"]["steps"] == 120  # from the train_end mark
    for code in ("ledger.single_pass", "ledger.score_before_update", "ledger.normalized",
                 "metric.matches_submission", "size.within_limit", "train_time.within_limit"):
        assert codes[code] == "pass", code
    assert codes["isolation.network"] == "pass"
    assert codes["isolation.pid_namespace"] in ("pass", "warn")  # warn where unshare is not permitted
    # the data view is enforced (tmpfs over the hidden folders) exactly where the PID namespace is
    assert codes["isolation.data_view"] == ("pass" if codes["isolation.pid_namespace"] == "pass" else "info")
    assert "[train] step:1/120 train_loss:" in run.stdout and "[eval] final_tiny_ttt" in run.stdout
    log = (tmp_path / "run" / "seed_3" / "train.log").read_text()
    losses = [float(line.split("train_loss:")[1]) for line in log.splitlines() if "train_loss:" in line]
    assert losses[-1] < losses[0] - 1.0  # the loss falls visibly
    assert (tmp_path / "run" / "seed_3" / "artifact" / "model.pt").is_file()


@pytest.mark.parametrize("bug, code", [
    ("update_before_score", "ledger.update_before_score"),
    ("double", "ledger.double_scored"),
    ("skip", "ledger.missing"),
    ("unnormalized", "ledger.unnormalized"),
    ("crash", "phase.crashed"),
    ("network", "isolation.network_attempt"),
])
def test_broken_eval_variants_fail_specifically(broken, tmp_path, monkeypatch, bug, code):
    monkeypatch.setenv("TINY_BUG", bug)
    monkeypatch.setenv("TINY_STEPS", "5")
    verdict = run_seed(spec(tmp_path, submission=broken), _rules())
    assert verdict.status == "fail" and statuses(verdict)[code] == "fail", statuses(verdict)


def test_slot_is_not_reported_as_plain_update_before_score(broken, tmp_path, monkeypatch):
    monkeypatch.setenv("TINY_BUG", "slot")
    monkeypatch.setenv("TINY_STEPS", "5")
    found = statuses(run_seed(spec(tmp_path, submission=broken), _rules()))
    assert found["ledger.fit_on_scored_window"] == "fail" and "ledger.update_before_score" not in found


def test_reading_validation_shards_in_training_is_caught(broken, tmp_path, monkeypatch):
    """The train job reads the eval view beside its own and the full dataset: both are hidden under
    tmpfs with tripwires, so the read gets no validation token and the harness names the files."""
    monkeypatch.setenv("TINY_BUG", "read_val")
    monkeypatch.setenv("TINY_VAL_DIR", str(DEMO_DATASET))
    monkeypatch.setenv("TINY_STEPS", "5")
    verdict = run_seed(spec(tmp_path, submission=broken), _rules())
    read = next(f for f in verdict.findings if f.code == "isolation.data_read")
    assert read.status == "fail" and read.data["phase"] == "train"
    assert {Path(f).parent.name for f in read.data["files"]} == {"val", DEMO_DATASET.name}
    assert "fineweb_val_000000.bin" in read.message


def test_half_written_artifact_stops_the_run(broken, tmp_path, monkeypatch):
    monkeypatch.setenv("TINY_BUG", "half_artifact")
    verdict = run_seed(spec(tmp_path, submission=broken), _rules())
    found = statuses(verdict)
    assert found["phase.crashed"] == "fail" and found["phase.eval_skipped"] == "fail"
    assert not (tmp_path / "seed_1" / "events_eval.jsonl").exists()


def test_phase_past_its_hard_limit_is_stopped_and_named(broken, tmp_path, monkeypatch):
    monkeypatch.setenv("TINY_BUG", "slow")
    monkeypatch.setenv("TINY_STEPS", "5")
    verdict = run_seed(spec(tmp_path, submission=broken, eval_limit_s=25), _rules())
    timeout = next(f for f in verdict.findings if f.code == "phase.timeout")
    assert timeout.status == "fail" and timeout.data["phase"] == "eval" and "eval phase" in timeout.message
    assert "phase.survivors" not in statuses(verdict)
    assert verdict.extra["phases"]["eval"]["wall_s"] < 25 + 2 + 15


def test_existing_run_folder_is_never_overwritten(tmp_path):
    (tmp_path / "seed_1").mkdir()
    with pytest.raises(UsageError, match="already exists"):
        run_seed(spec(tmp_path), _rules())


def _rules():
    from harness.rules import load_rules

    return load_rules()
