"""harness.run.judge.clock_findings: the marks judged, the wall clock beside them, the rest bounded."""
from harness.rules import load_rules
from harness.run.events import Received
from harness.run.jobs import PhaseProcess
from harness.run.judge import clock_findings

RULES = load_rules()


def phase(started: float, ended: float) -> PhaseProcess:
    return PhaseProcess(0, started, ended, ended - started, False, None, None, {}, [], [], 0)


def marks(start: float, end: float, name: str = "eval", work: list[float] | None = None) -> Received:
    got = Received(marks={f"{name}_start": {0: start, 1: start + 0.1}, f"{name}_end": {0: end - 0.1, 1: end}})
    got.work = work or []
    return got


def codes(findings):
    return {f.code: f.status for f in findings}


def test_marked_span_within_the_limit_shows_the_wall_clock_too():
    found, marked = clock_findings("eval", phase(0, 130), marks(20, 120, work=[21, 119]), 600, 300)
    assert marked == 100 and codes(found) == {"eval_time.within_limit": "pass"}
    assert found[0].data == {"seconds": 100, "wall_s": 130, "before_marks_s": 20, "after_marks_s": 10}
    assert "130.00 s from spawn to reap" in found[0].message


def test_training_after_its_end_mark_is_time_outside_the_marks():
    """train_end sent early, training went on: the marks look fine, the wall clock does not."""
    found, _ = clock_findings("train", phase(0, 1000), marks(60, 100, "train"), 600, 300)
    assert codes(found) == {"train_time.within_limit": "pass", "train_time.outside_marks": "fail"}
    assert found[1].data["after_marks_s"] == 900


def test_outside_marks_on_an_unlimited_track_is_only_reported():
    found, _ = clock_findings("train", phase(0, 1000), marks(60, 100, "train"), None, 300)
    assert codes(found)["train_time.outside_marks"] == "info"


def test_scores_sent_before_eval_start_are_work_outside_the_marks():
    """Everything scored first, the frames sent after eval_start: the early ones still give it away."""
    found, _ = clock_findings("eval", phase(0, 130), marks(20, 120, work=[5, 119]), 600, 300)
    assert codes(found)["eval_time.work_outside_marks"] == "fail"
    late, _ = clock_findings("eval", phase(0, 130), marks(20, 120, work=[30, 125]), 600, 300)
    assert codes(late)["eval_time.work_outside_marks"] == "fail"


def test_over_the_limit_and_no_marks():
    over, _ = clock_findings("eval", phase(0, 700), marks(10, 690), 600, 300)
    assert codes(over) == {"eval_time.over_limit": "fail"}
    none, marked = clock_findings("eval", phase(0, 70), Received(), 600, 300)
    assert marked is None and codes(none) == {"eval_time.no_marks": "warn"}


def test_hard_limits_are_the_judged_limit_plus_the_allowance():
    clock = RULES.phase_clock
    assert RULES.hard_limit("track_10min_16mb", "train") == 600 + clock["train_outside_marks_s"]
    assert RULES.hard_limit("track_10min_16mb", "eval") == 600 + clock["eval_outside_marks_s"]
    assert RULES.hard_limit("track_non_record_16mb", "train") == clock["unlimited_phase_s"]
