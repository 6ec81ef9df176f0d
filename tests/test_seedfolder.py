"""harness.run.seedfolder: the seed folder's facts are the schema's, and "finished" means one thing."""
import json

import pytest

from harness.findings import UsageError
from harness.report import verdict_json
from harness.run import seedfolder
from harness.validation import errors


def run_verdict(seed: int, **facts) -> dict:
    return {"schema_version": 1, "tool": {"name": "pgolf", "version": "x"}, "command": "run", "target": "t",
            "status": "pass", "findings": [], "seeds": {str(seed): facts}}


def test_the_schema_names_every_fact_a_run_writes():
    good = run_verdict(1, artifact_bytes=10, train_wall_s=2.0, train_marked_s=1.5, steps=3, eval_wall_s=1.0,
                       eval_marked_s=None, val_loss=2.0, val_bpb=1.1, tokens=5, bytes=9)
    assert list(errors("urn:pgolf:verdict", good)) == []
    renamed = run_verdict(1, train_marked_seconds=1.5)
    assert list(errors("urn:pgolf:verdict", renamed))  # a renamed key fails where the verdict is written
    with pytest.raises(Exception):
        verdict_json(renamed)
    check = dict(renamed, command="check")  # check's per-seed evidence is its own business
    assert list(errors("urn:pgolf:verdict", check)) == []


def test_finished_means_a_valid_verdict_for_that_seed(tmp_path):
    folder = seedfolder.seed_folder(tmp_path, 4)
    folder.mkdir()
    assert seedfolder.finished_verdict(folder, 4) is None
    (folder / seedfolder.VERDICT).write_text(json.dumps(run_verdict(4, val_bpb=1.0)))
    assert seedfolder.finished_verdict(folder, 4)["seeds"] == {"4": {"val_bpb": 1.0}}
    assert seedfolder.finished_verdict(folder, 5) is None
    (folder / seedfolder.VERDICT).write_text("{")
    assert seedfolder.finished_verdict(folder, 4) is None
    assert seedfolder.set_aside(folder).name == "seed_4.incomplete-1" and not folder.exists()


def test_run_verdicts_refuse_a_folder_that_is_not_a_run(tmp_path):
    (tmp_path / "seed_2").mkdir()
    (tmp_path / "seed_2" / seedfolder.VERDICT).write_text(json.dumps(run_verdict(2, val_bpb=1.0)))
    assert list(seedfolder.run_verdicts(tmp_path)) == [2]
    (tmp_path / "seed_x").mkdir()
    (tmp_path / "seed_x" / seedfolder.VERDICT).write_text(json.dumps(run_verdict(3)))
    with pytest.raises(UsageError, match="not a verdict of `pgolf run`"):
        seedfolder.run_verdicts(tmp_path)


def test_judged_times_are_the_marks_else_the_wall_clock():
    assert seedfolder.train_seconds({"train_marked_s": 1.5, "train_wall_s": 9.0}) == 1.5
    assert seedfolder.train_seconds({"train_marked_s": None, "train_wall_s": 9.0}) == 9.0
    assert seedfolder.eval_seconds({"eval_wall_s": 4.0}) == 4.0
