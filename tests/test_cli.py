"""The `pgolf` command as a user runs it: a real process, its exit code, its files."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import BASELINE, DGATTN, PHASED, SP8192, edit
from harness.validation import errors


def pgolf(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


def test_passing_folder_exits_0_and_writes_a_valid_verdict(record, tmp_path):
    out = tmp_path / "out" / "verdict.json"
    md = tmp_path / "out" / "summary.md"
    run = pgolf("check", record(SP8192), "--json", out, "--markdown", md)
    assert run.returncode == 0, run.stdout + run.stderr
    verdict = json.loads(out.read_text())
    assert list(errors("urn:pgolf:verdict", verdict)) == []
    assert verdict["status"] == "warn" and verdict["command"] == "check"
    assert {f["check"] for f in verdict["findings"]} >= {"files", "claims", "size", "train_time", "eval_time"}
    assert "## pgolf check" in md.read_text() and "| 42 | 1.08079352 |" in md.read_text()
    assert "WARN train_time" in run.stdout and "Traceback" not in run.stderr


def test_failing_folder_exits_1_with_the_evidence_line(record):
    folder = record(BASELINE)
    edit(folder / "train.log", "train_time:600038ms step:13780", "train_time:700038ms step:13780")
    run = pgolf("check", folder, "--profile", "historic")
    assert run.returncode == 1
    assert "FAIL seed 1337: training ran 700,038 ms" in run.stdout
    assert "at train.log:440  stopping_early" in run.stdout


def test_non_record_folder_fails(record):
    assert pgolf("check", record(DGATTN)).returncode == 1


def test_unusable_input_exits_2_without_a_traceback(tmp_path):
    for args in (["check", tmp_path / "missing"], ["check"], ["frobnicate"]):
        run = pgolf(*args)
        assert run.returncode == 2, args
        assert "Traceback" not in run.stderr and run.stderr.strip()
    assert "no such folder" in pgolf("check", tmp_path / "missing").stderr


def test_bad_rules_file_exits_2_naming_the_key(record, tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text((Path(__file__).parents[1] / "harness/rules/rules.yaml").read_text()
                     .replace("artifact_limit_bytes: 16000000        # decimal", "artifact_limit_bytes: lots"))
    run = pgolf("check", record(SP8192), "--rules", rules)
    assert run.returncode == 2 and "artifact_limit_bytes" in run.stderr and "Traceback" not in run.stderr


def test_rule_change_is_a_data_change(record, tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text((Path(__file__).parents[1] / "harness/rules/rules.yaml").read_text()
                     .replace("artifact_limit_bytes: 16000000        #", "artifact_limit_bytes: 15900000        #"))
    run = pgolf("check", record(PHASED), "--rules", rules, "--profile", "historic")
    assert run.returncode == 1 and "over the 15,900,000-byte limit" in run.stdout


def test_json_output_is_atomic_and_unwritable_target_exits_2(record, tmp_path):
    target = tmp_path / "verdict.json"
    target.write_text("previous verdict")
    blocker = tmp_path / "dir_not_file"
    blocker.mkdir()
    run = pgolf("check", record(SP8192), "--json", blocker)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert pgolf("check", record(SP8192, "2026-04-09_Again"), "--json", target).returncode == 0
    assert json.loads(target.read_text())["status"] == "warn"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".verdict")] == []


def test_python_dash_m_and_console_script_agree(record):
    folder = record(SP8192)
    script = Path(sys.executable).with_name("pgolf")
    if script.exists():  # installed with pip install -e .
        direct = subprocess.run([script, "check", folder], capture_output=True, text=True)
        assert direct.stdout == pgolf("check", folder).stdout


def test_every_usage_error_stops_before_anything_starts_in_one_line(tmp_path):
    no_shards, out = tmp_path / "no_shards", tmp_path / "out"
    no_shards.mkdir()
    claimed = Path(__file__).parent / "fixtures" / "records" / SP8192
    cases = [
        (["run", "--data", no_shards], "found 0 training and 0 validation"),
        (["run", "--seeds", "1,,2"], "--seeds 1,,2: expected comma-separated non-negative integers"),
        (["run", "--seeds", "1,1"], "--seeds 1,1: a seed is repeated"),
        (["run", "--train-limit", "nan"], "--train-limit nan: expected a positive number of seconds"),
        (["run", "--train-limit", "inf"], "--train-limit inf: expected a positive"),
        (["run", "--eval-limit", "-5"], "--eval-limit -5.0: expected a positive"),
        (["run", "--nproc", "0"], "--nproc 0: expected at least 1"),
        (["rerun", claimed, "--nproc", "0"], "--nproc 0: expected at least 1"),
        (["rerun", claimed, "--data", no_shards], "found 0 training and 0 validation"),
        (["rerun", claimed, "--train-limit", "0"], "--train-limit 0.0: expected a positive"),
        (["phase", "eval", "--data", no_shards, "--limit", "-1"], "--limit -1.0: expected a positive"),
        (["export", no_shards, "--name", "Demo", "--date", "20260101"], "--date 20260101: expected YYYY-MM-DD"),
    ]
    for args, message in cases:
        done = pgolf(*args, *([] if args[0] == "export" else ["--out", out]), cwd=tmp_path)
        assert done.returncode == 2 and done.stdout == "", (args, done.stdout, done.stderr)
        assert done.stderr.count("\n") == 1 and message in done.stderr, (args, done.stderr)
        assert not out.exists(), args  # nothing started


def test_run_never_extends_an_existing_run_folder(tmp_path):
    out = tmp_path / "runs" / "demo"
    (out / "seed_1").mkdir(parents=True)
    done = pgolf("run", "--seeds", "2", "--out", out)
    assert done.returncode == 2 and "never extended" in done.stderr and done.stderr.count("\n") == 1
    assert [p.name for p in out.iterdir()] == ["seed_1"]


def test_headers_name_a_profile_only_where_the_command_has_one(record, tmp_path):
    from harness.report import render_markdown, render_terminal

    verdict = {"command": "verify", "target": "runs/x/seed_1", "track": "track_10min_16mb", "profile": None,
               "status": "pass", "findings": [], "seeds": {}, "counts": dict.fromkeys(("fail", "warn", "pass", "info"), 0)}
    with open(tmp_path / "terminal.txt", "w") as out:
        render_terminal(verdict, out)
    for text in ((tmp_path / "terminal.txt").read_text(), render_markdown(verdict)):
        assert "track" in text and "profile" not in text and "None" not in text
    assert "track track_10min_16mb, profile strict\n" in pgolf("check", record(SP8192)).stdout
