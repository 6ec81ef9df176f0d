"""A rank that dies by a signal in teardown, after its job delivered everything, is a WARN, not a crash.

Real torchrun jobs (2 gloo ranks) of examples/tiny wrapped by tests/teardown_cases/train_gpt.py,
which calls os.abort() after the complete result or where the result would be sent. torchrun itself
then exits 1; the harness learns the signal from torchrun's report in the phase log.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from harness.paths import DEMO_DATASET, DEMO_TOKENIZER, REPO
from harness.rules import load_rules
from harness.run.events import Received
from harness.run.judge import teardown_signal
from harness.run.seed import RunSpec, run_seed

CASES = Path(__file__).parent / "teardown_cases"


def run(tmp_path: Path, monkeypatch, when: str):
    """The wrapper beside a copy of examples/tiny as tiny.py: a submission ships plain files, not links."""
    monkeypatch.setenv("TEARDOWN_ABORT", when)
    monkeypatch.setenv("TINY_STEPS", "5")
    submission = tmp_path / "submission"
    submission.mkdir()
    shutil.copy2(CASES / "train_gpt.py", submission / "train_gpt.py")
    shutil.copy2(REPO / "examples" / "tiny" / "train_gpt.py", submission / "tiny.py")
    spec = RunSpec(submission=submission, dataset=DEMO_DATASET, tokenizer=DEMO_TOKENIZER, seed=1, nproc=2,
                   out=tmp_path / "seed_1", track="track_10min_16mb", train_limit_s=300, eval_limit_s=300,
                   grace_s=2, echo=False)
    return run_seed(spec, load_rules())


def by_phase(verdict, code: str) -> dict[str, object]:
    return {f.data.get("phase"): f for f in verdict.findings if f.code == code}


def test_abort_after_the_complete_result_is_a_teardown_warning_and_the_score_stands(tmp_path, monkeypatch):
    verdict = run(tmp_path, monkeypatch, "after_result")
    seed = tmp_path / "seed_1"
    assert "failed (exitcode: -6) local_rank: 1" in (seed / "train.log").read_text()  # the abort happened
    warned = by_phase(verdict, "phase.teardown_signal")
    assert set(warned) == {"train", "eval"}, sorted(f.code for f in verdict.findings)
    assert "failed (exitcode: -6) local_rank: 1" in (seed / "eval.log").read_text()
    for phase, f in warned.items():
        assert f.status == "warn" and f.data["signal"] == "SIGABRT (rank 1)" and "SIGABRT" in f.message
        assert f.data["returncode"] == 1  # torchrun's own exit code: the signal came from its report
    statuses = {f.code: f.status for f in verdict.findings}
    assert "phase.crashed" not in statuses and "phase.eval_skipped" not in statuses
    assert verdict.status == "warn", [f.message for f in verdict.findings if f.status == "fail"]
    for code in ("ledger.single_pass", "metric.computed", "metric.matches_submission", "size.within_limit"):
        assert statuses[code] == "pass", code
    assert 0 < verdict.seeds[1]["val_bpb"] < 10


def test_abort_before_the_result_is_sent_is_still_a_crash(tmp_path, monkeypatch):
    verdict = run(tmp_path, monkeypatch, "before_result")
    assert "failed (exitcode: -6) local_rank: 0" in (tmp_path / "seed_1" / "eval.log").read_text()
    crashed = by_phase(verdict, "phase.crashed")
    assert set(crashed) == {"eval"} and crashed["eval"].status == "fail"
    assert by_phase(verdict, "phase.completed")["train"].status == "pass"
    assert not by_phase(verdict, "phase.teardown_signal")
    assert verdict.status == "fail"
    assert "val_bpb" not in verdict.seeds[1]  # no score from a job that never delivered its result


def received(world: int = 2, marks: tuple[str, ...] = ("eval_end",), result: bool = True) -> Received:
    got = Received()
    got.hellos = {r: {"rank": r, "world_size": world} for r in range(world)}
    got.marks = {name: {r: 1.0 for r in range(world)} for name in marks}
    if result:
        got.results[0] = {"val_loss": 1.0, "val_bpb": 1.0}
    return got


@pytest.mark.parametrize("phase, signal, got, scored_all, artifact_bytes, expected", [
    ("eval", "SIGABRT", received(), True, 0, "SIGABRT"),
    ("eval", None, received(), True, 0, None),  # no signal: whatever it was, not a teardown signal
    ("eval", "SIGABRT", received(), False, 0, None),  # a position never scored
    ("eval", "SIGABRT", received(result=False), True, 0, None),  # rank 0's result never came
    ("eval", "SIGABRT", received(marks=()), True, 0, None),  # no eval_end mark
    ("eval", "SIGSEGV", Received(), True, 0, None),  # nobody spoke the protocol
    ("train", "SIGABRT", received(marks=("train_end",)), False, 1234, "SIGABRT"),
    ("train", "SIGABRT", received(marks=("train_end",)), False, 0, None),  # empty artifact
    ("train", "SIGABRT", received(marks=("eval_end",)), False, 1234, None),  # no train_end mark
    ("legacy", "SIGABRT", received(), True, 1234, None),
])
def test_teardown_signal_decides_only_on_a_complete_result(phase, signal, got, scored_all, artifact_bytes, expected):
    assert teardown_signal(phase, signal, got, scored_all=scored_all, artifact_bytes=artifact_bytes) == expected


def test_teardown_signal_wants_the_end_mark_of_every_rank():
    got = received(world=2)
    del got.marks["eval_end"][1]
    assert teardown_signal("eval", "SIGABRT", got, scored_all=True) is None
    del got.hellos[1]  # rank 1 never even connected: the world size still names it
    assert teardown_signal("eval", "SIGABRT", got, scored_all=True) is None
