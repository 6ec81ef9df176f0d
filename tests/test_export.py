"""`pgolf export` end to end: a real run of the tiny example becomes a records folder that `pgolf check` passes."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import harness.export
from conftest import run_failures
from harness.paths import REPO
from harness.client import CLIENT_FILE
from harness.export import export_run
from harness.rules import load_rules
from tiny_variants import stage_broken_tiny


def pgolf(*args, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", *map(str, args)], capture_output=True, text=True,
                          timeout=600, cwd=REPO, env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """One passing two-seed run of examples/tiny, shared by the tests."""
    out = tmp_path_factory.mktemp("export") / "run"
    done = pgolf("run", "--out", out, "--seeds", "1,2", "-q", env={"TINY_STEPS": "10"})
    assert done.returncode == 0, run_failures(out) + done.stderr[-2000:]
    return out


@pytest.fixture(scope="module")
def failed_run(tmp_path_factory) -> Path:
    """A run whose eval breaks C2 (unnormalised audit rows) but still yields a harness val_bpb."""
    out = tmp_path_factory.mktemp("export_fail") / "run"
    broken = stage_broken_tiny(tmp_path_factory.mktemp("tiny") / "broken")
    done = pgolf("run", "--submission", broken, "--out", out, "-q", "--nproc", "1",
                 env={"TINY_STEPS": "5", "TINY_BUG": "unnormalized"})
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    return out


def export(run: Path, dest: Path, *extra) -> subprocess.CompletedProcess:
    return pgolf("export", run, "--name", "TinyExport", "--date", "2026-05-01", "--dest", dest, *extra)


def test_export_passes_strict_check_with_the_run_s_numbers(run, tmp_path):
    dest = tmp_path / "records" / "track_non_record_16mb"
    done = export(run, dest, "--author", "Ada", "--github-id", "ada-l")
    assert done.returncode == 0, done.stderr
    folder = dest / "2026-05-01_TinyExport"
    checked = pgolf("check", folder, "--profile", "strict", "--json", tmp_path / "check.json")
    assert checked.returncode == 0, checked.stdout[-3000:]
    check = json.loads((tmp_path / "check.json").read_text())
    assert not [f for f in check["findings"] if f["status"] == "fail"]
    assert {f["code"] for f in check["findings"]} >= {"claims.seed_matches_log", "claims.headline_is_mean",
                                                       "size.within_limit", "files.layout"}

    data = json.loads((folder / "submission.json").read_text())
    assert data["track"] == "non_record_16mb" and data["seeds"] == [1, 2] and data["author"] == "Ada"
    client = CLIENT_FILE.stat().st_size  # shipped so the folder runs from inside itself, so counted
    for seed in (1, 2):
        measured = json.loads((run / f"seed_{seed}" / "verdict.json").read_text())["seeds"][str(seed)]
        got = data["seed_results"][str(seed)]
        assert got["val_bpb"] == round(measured["val_bpb"], 8) and got["val_loss"] == round(measured["val_loss"], 8)
        assert got["artifact_bytes"] == measured["artifact_bytes"] + client + len(CLIENT_FILE.name)  # names count
        assert got["train_time_s"] == round(measured["train_marked_s"], 3)
        assert got["eval_time_s"] == round(measured["eval_marked_s"], 3)
        assert check["seeds"][str(seed)]["val_bpb"] == got["val_bpb"]
        assert check["seeds"][str(seed)]["world_size"] == 2
    per_seed = [data["seed_results"][s]["val_bpb"] for s in ("1", "2")]
    assert data["val_bpb"] == round(sum(per_seed) / 2, 8)
    log = (folder / "train_seed1.log").read_text()
    assert "\n[eval] final_tiny_ttt val_loss:" in log  # the submission's own line is kept, but never as evidence
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "pgolf_events.py", "submission.json",
                                                        "train_gpt.py", "train_seed1.log", "train_seed2.log"]


def test_the_readme_flow_run_export_check_passes(run, tmp_path):
    """README, word for word: `pgolf run` (the demo: examples/tiny, 2 gloo ranks), `pgolf export RUN --name X`
    with no --dest, then `pgolf check` on the folder it names. The run is off the record track's 8 GPUs, so
    export files it under track_local, whose rules judge the same limits and no hardware; and the tiny
    example ships no planted bug for lint to read as its code."""
    done = subprocess.run([sys.executable, "-m", "harness", "export", str(run), "--name", "Demo"], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    named = done.stdout.split("records folder: ")[1].split()[0]
    folder = tmp_path / named
    assert folder.parent == tmp_path / "records" / "track_local" and folder.is_dir()
    checked = subprocess.run([sys.executable, "-m", "harness", "check", named, "--json", "check.json"],
                             capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout[-3000:]
    verdict = json.loads((tmp_path / "check.json").read_text())
    assert verdict["track"] == "track_local"
    assert not [f for f in verdict["findings"] if f["status"] == "fail" or f["check"] in ("lint", "hardware")
                and f["status"] == "warn"], verdict["findings"]
    assert json.loads((folder / "submission.json").read_text())["track"] == "local"


def test_a_record_track_dest_still_judges_the_world_size(run, tmp_path):
    """--dest records/track_10min_16mb keeps the record track's rules: the 2-rank demo fails them, and the
    finding says where such a run belongs."""
    dest = tmp_path / "records" / "track_10min_16mb"
    assert export(run, dest).returncode == 0
    checked = pgolf("check", dest / "2026-05-01_TinyExport")
    assert checked.returncode == 1 and "world_size 2; the track_10min_16mb track runs on 8 GPUs" in checked.stdout
    assert "belongs in track_local" in checked.stdout


def test_export_never_overwrites(run, tmp_path):
    dest = tmp_path / "records" / "track_non_record_16mb"
    assert export(run, dest).returncode == 0
    readme = dest / "2026-05-01_TinyExport" / "README.md"
    readme.write_text("mine")
    again = export(run, dest)
    assert again.returncode == 2 and "already exists" in again.stderr and len(again.stderr.splitlines()) == 1
    assert readme.read_text() == "mine"


def test_a_failing_run_is_refused_unless_forced(failed_run, tmp_path):
    dest = tmp_path / "records" / "track_non_record_16mb"
    refused = export(failed_run, dest)
    assert refused.returncode == 2 and "ledger.unnormalized" in refused.stderr and "--force" in refused.stderr
    assert "Traceback" not in refused.stderr and not (dest / "2026-05-01_TinyExport").exists()
    forced = export(failed_run, dest, "--force")
    assert forced.returncode == 0, forced.stderr
    assert (dest / "2026-05-01_TinyExport" / "train_seed1.log").is_file()


def test_the_folder_appears_whole_or_not_at_all(run, tmp_path, monkeypatch):
    """A failure while writing (the README here) leaves neither the folder nor a half-written temp behind."""
    written = []

    def write_then_fail_on_readme(path, text):
        if Path(path).name == "README.md":
            raise OSError(28, "No space left on device", str(path))
        written.append(Path(path).name)
        return real(path, text)

    real = harness.export.write_text_atomic
    monkeypatch.setattr(harness.export, "write_text_atomic", write_then_fail_on_readme)
    dest = tmp_path / "records" / "track_non_record_16mb"
    with pytest.raises(OSError):
        export_run(run, "Half", load_rules(), dest=dest, date="2026-05-01")
    assert written == ["train_seed1.log", "train_seed2.log", "submission.json"]  # partial content did exist
    assert list(dest.iterdir()) == []


def test_seeds_of_two_runs_are_never_exported_as_one(run, failed_run, tmp_path):
    mixed = tmp_path / "mixed"
    shutil.copytree(run, mixed)
    shutil.rmtree(mixed / "seed_1")
    shutil.copytree(failed_run / "seed_1", mixed / "seed_1")  # another runner's seed 1, copied in by hand
    done = export(mixed, tmp_path / "records", "--force")
    ids = [(folder / "seed_1" / "run_id").read_text().strip() for folder in (failed_run, run)]
    assert done.returncode == 2 and ids[0] != ids[1], done.stderr
    assert f"seeds 1 from run {ids[0]}; seeds 2 from run {ids[1]}" in done.stderr
    assert not (tmp_path / "records").exists() or list((tmp_path / "records").iterdir()) == []
