"""`pgolf rerun` end to end on a real CPU demo submission: two seeds of examples/tiny, run, exported, rerun.

The claims are a real `pgolf export` of a real run; one copy has seed 2's claim pushed 0.05 BPB off
(in submission.json and in its log line), and the rerun must name exactly that seed, with the
numbers. The statistics are checked against scipy.stats, an implementation independent of pgolf's.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml
from scipy import stats

from conftest import run_failures
from harness.logs import loss_curve
from harness.paths import REPO
from harness.run.seedfolder import finished_verdict
from harness.rules import load_rules

TINY = {"TINY_STEPS": "40"}  # prints the loss at steps 1, 20 and 40: a three-point curve per seed
PERTURBATION = 0.05
PLAIN = REPO / "tests" / "legacy_cases" / "plain"
FIXTURES = Path(__file__).parent / "fixtures" / "records"


def pgolf(*args, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", *map(str, args)], capture_output=True, text=True,
                          timeout=900, cwd=REPO, env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def claimed(tmp_path_factory) -> tuple[Path, Path]:
    """(run folder, records folder): a passing two-seed run of examples/tiny and its `pgolf export`."""
    root = tmp_path_factory.mktemp("rerun")
    done = pgolf("run", "--out", root / "run", "--seeds", "1,2", "-q", env=TINY)
    assert done.returncode == 0, run_failures(root / "run") + done.stderr[-2000:]
    dest = root / "records" / "track_10min_16mb"
    done = pgolf("export", root / "run", "--name", "Tiny", "--date", "2026-05-01", "--dest", dest, "-q")
    assert done.returncode == 0, done.stderr
    return root / "run", dest / "2026-05-01_Tiny"


def perturb(folder: Path, seed: int, by: float) -> float:
    """Push one seed's claim off in submission.json (and the headline) and in its log's score line."""
    data = json.loads((folder / "submission.json").read_text())
    true = data["seed_results"][str(seed)]["val_bpb"]
    fake = round(true + by, 8)
    data["seed_results"][str(seed)]["val_bpb"] = fake
    data["val_bpb"] = round(statistics.fmean(r["val_bpb"] for r in data["seed_results"].values()), 8)
    (folder / "submission.json").write_text(json.dumps(data, indent=2))
    log = folder / f"train_seed{seed}.log"
    text = log.read_text()
    assert text.count(f"val_bpb:{true:.8f}") >= 1
    log.write_text(text.replace(f"val_bpb:{true:.8f}", f"val_bpb:{fake:.8f}"))
    return fake


@pytest.fixture(scope="module")
def perturbed_rerun(claimed, tmp_path_factory):
    run, folder = claimed
    root = tmp_path_factory.mktemp("perturbed")
    bad = root / "records" / "track_10min_16mb" / "2026-05-02_TinyOff"
    shutil.copytree(folder, bad)
    fake = perturb(bad, 2, PERTURBATION)
    out = root / "rerun"
    done = pgolf("rerun", bad, "--out", out, "--against", "3.9,3.95,3.92", "--markdown", root / "summary.md", "-q",
                 env=TINY)
    return done, out, bad, fake, root / "summary.md"


def original(run: Path, seed: int) -> dict:
    return json.loads((run / f"seed_{seed}" / "verdict.json").read_text())["seeds"][str(seed)]


def test_rerun_reproduces_seed_1_and_names_the_perturbed_seed_2(claimed, perturbed_rerun):
    run, _ = claimed
    done, out, bad, fake, summary = perturbed_rerun
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    verdict = json.loads((out / "verdict.json").read_text())
    assert verdict["command"] == "rerun" and verdict["status"] == "fail"
    by_code = {}
    for f in verdict["findings"]:
        by_code.setdefault(f["code"], []).append(f)

    # seed 1 really ran again, in the rerun folder, with the claimed world size, and landed on the same number
    one = verdict["seeds"]["1"]
    assert one["outcome"] == "reproduced" and Path(one["folder"]) == out / "seed_1"
    assert json.loads((out / "seed_1" / "verdict.json").read_text())["nproc"] == 2
    assert abs(one["reproduced"]["val_bpb"] - original(run, 1)["val_bpb"]) < 1e-9
    assert abs(one["delta_val_bpb"]) < 1e-8
    assert [f["seed"] for f in by_code["rerun.reproduced"]] == [1]

    # seed 2: not reproduced, with the claimed (fake) and reproduced (true) numbers in message and data
    two = verdict["seeds"]["2"]
    reproduced = two["reproduced"]["val_bpb"]
    assert two["outcome"] == "not_reproduced" and two["claimed"]["val_bpb"] == fake
    assert abs(reproduced - original(run, 2)["val_bpb"]) < 1e-9
    [miss] = by_code["rerun.not_reproduced"]
    assert miss["status"] == "fail" and miss["seed"] == 2
    assert f"claimed {fake:.8f}" in miss["message"] and f"reproduced {reproduced:.8f}" in miss["message"]
    assert abs(miss["data"]["delta"] - (reproduced - fake)) < 1e-12 and abs(miss["data"]["delta"] + PERTURBATION) < 1e-6
    claimed_values = [verdict["seeds"][s]["claimed"]["val_bpb"] for s in ("1", "2")]
    assert miss["data"]["delta_claimed_std"] == pytest.approx(miss["data"]["delta"] / statistics.stdev(claimed_values))
    assert f"{miss['data']['delta_claimed_std']:+.2f} claimed std" in miss["message"]

    # the aggregate, against scipy.stats
    rows = [verdict["seeds"][s] for s in ("1", "2")]
    diffs = [row["reproduced"]["val_bpb"] - row["claimed"]["val_bpb"] for row in rows]
    [headline] = by_code["statistics.headline_not_reproduced"]
    half = stats.t.ppf(0.975, df=1) * statistics.stdev(diffs) / 2 ** 0.5
    assert headline["status"] == "fail"
    assert headline["data"]["mean_difference"] == pytest.approx(statistics.fmean(diffs))
    assert headline["data"]["ci"] == pytest.approx([statistics.fmean(diffs) - half, statistics.fmean(diffs) + half])
    [welch] = by_code["statistics.welch"]
    reproduced_values = [verdict["seeds"][s]["reproduced"]["val_bpb"] for s in ("1", "2")]
    scipy_p = stats.ttest_ind(reproduced_values, claimed_values, equal_var=False).pvalue
    assert welch["data"]["p_two_sided"] == pytest.approx(scipy_p, rel=1e-6)

    # --against: the reproduced seeds are what the significance policies judge
    [policy] = by_code["significance.leaderboard"]
    assert policy["data"]["new"] == reproduced_values and policy["status"] == "pass"
    assert by_code["significance.claimed"][0]["data"]["new"] == claimed_values

    markdown = (out / "report.md").read_text()
    assert summary.read_text() == markdown
    assert f"| 2 | ❌ not reproduced | {fake:.8f} | {reproduced:.8f} |" in markdown
    assert "| 1 | ✅ reproduced |" in markdown and (out / "report.html").stat().st_size > 10_000
    assert json.loads((out / "rerun.json").read_text())["seeds"] == [1, 2]


def _tree_with(token: str) -> list[int]:
    """Pids of every process whose environment carries the token: the rerun and all it started."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and f"RERUN_KILL_TEST={token}".encode() in (proc / "environ").read_bytes():
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def _kill_all(token: str) -> None:
    """SIGKILL the rerun and every process it started (what losing the machine does), until none is left."""
    deadline = time.monotonic() + 60
    while (pids := _tree_with(token)) and time.monotonic() < deadline:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)
    assert not _tree_with(token), "processes of the killed rerun are still alive"


def test_a_killed_rerun_resumes_at_the_unfinished_seed_and_never_reuses_it(claimed, tmp_path):
    _, folder = claimed
    out = tmp_path / "rerun"
    token = uuid.uuid4().hex
    proc = subprocess.Popen([sys.executable, "-m", "harness", "rerun", str(folder), "--out", str(out), "-q"], cwd=REPO,
                            env={**os.environ, **TINY, "RERUN_KILL_TEST": token}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while not (out / "seed_2" / "train.log").exists():  # seed 1 finished, seed 2 is training
            assert proc.poll() is None and time.monotonic() < deadline, "the rerun ended before seed 2 started"
            time.sleep(0.1)
    finally:
        _kill_all(token)
    proc.wait(timeout=30)
    assert finished_verdict(out / "seed_1", 1) is not None
    assert (out / "seed_2").is_dir() and finished_verdict(out / "seed_2", 2) is None
    first = (out / "seed_1" / "verdict.json").stat()

    again = pgolf("rerun", folder, "--out", out, "-q", env=TINY)
    assert again.returncode == 2 and "--resume" in again.stderr and len(again.stderr.splitlines()) == 1
    other = pgolf("rerun", folder, "--out", out, "--resume", "--nproc", "1", "-q", env=TINY)
    assert other.returncode == 2 and "nproc 2 then, 1 now" in other.stderr
    straggler = subprocess.Popen(["sleep", "120"], cwd=out / "seed_2")  # as a job that outlived its harness
    try:
        busy = pgolf("rerun", folder, "--out", out, "--resume", "-q", env=TINY)
    finally:
        straggler.kill()
        straggler.wait()
    assert busy.returncode == 2 and f"[{straggler.pid}] still work inside it" in busy.stderr

    resumed = pgolf("rerun", folder, "--out", out, "--resume", "-q", env=TINY)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    after = (out / "seed_1" / "verdict.json").stat()
    assert (after.st_ino, after.st_mtime_ns) == (first.st_ino, first.st_mtime_ns)  # seed 1 was not run again
    assert not list(out.glob("seed_1.incomplete-*"))
    aside = out / "seed_2.incomplete-1"  # the killed attempt, set aside whole and never reused
    assert (aside / "train.log").is_file() and not (aside / "verdict.json").exists()
    assert finished_verdict(out / "seed_2", 2) is not None
    verdict = json.loads((out / "verdict.json").read_text())
    assert {s: row["outcome"] for s, row in verdict["seeds"].items()} == {"1": "reproduced", "2": "reproduced"}
    assert verdict["seeds"]["2"]["folder"] == str(out / "seed_2")


def test_merge_judges_seed_folders_that_separate_jobs_wrote(claimed, tmp_path):
    """One job per seed (a Kubernetes Job or Slurm array task each) leaves its seed folder; --merge judges them."""
    run, folder = claimed
    for seed in (1, 2):
        shutil.copytree(run / f"seed_{seed}", tmp_path / f"job_{seed}" / f"seed_{seed}", symlinks=True)
    (tmp_path / "job_3" / "seed_2").mkdir(parents=True)  # a job that died: no verdict, ignored

    merged = pgolf("rerun", folder, "--out", tmp_path / "merged", "--merge", tmp_path / "job_1", tmp_path / "job_2",
                   tmp_path / "job_3", "-q")
    assert merged.returncode == 0, merged.stdout[-3000:] + merged.stderr[-3000:]
    verdict = json.loads((tmp_path / "merged" / "verdict.json").read_text())
    assert {s: (row["outcome"], row["folder"]) for s, row in verdict["seeds"].items()} == {
        "1": ("reproduced", str(tmp_path / "job_1" / "seed_1")),
        "2": ("reproduced", str(tmp_path / "job_2" / "seed_2"))}
    for seed in ("1", "2"):
        assert verdict["seeds"][seed]["reproduced"]["val_bpb"] == original(run, int(seed))["val_bpb"]

    missing = pgolf("rerun", folder, "--out", tmp_path / "partial", "--merge", tmp_path / "job_1", "-q")
    assert missing.returncode == 1
    verdict = json.loads((tmp_path / "partial" / "verdict.json").read_text())
    assert [(f["seed"], f["status"]) for f in verdict["findings"] if f["code"] == "rerun.not_run"] == [(2, "fail")]

    twice = pgolf("rerun", folder, "--out", tmp_path / "twice", "--merge", tmp_path / "job_1", run, "-q")
    assert twice.returncode == 2 and "seed 1 is finished in both" in twice.stderr


def test_container_rerun_passes_the_engine_options_to_every_seed(claimed, tmp_path):
    """--container: the seed runs as containers of the CPU image (tools/build-image cpu) and lands on the same score."""
    run, folder = claimed
    out = tmp_path / "rerun"
    done = pgolf("rerun", folder, "--seeds", "1", "--container", "--image", "pgolf:cpu", "--out", out, "-q", env=TINY)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    verdict = json.loads((out / "verdict.json").read_text())
    assert verdict["seeds"]["1"]["outcome"] == "reproduced"
    assert abs(verdict["seeds"]["1"]["reproduced"]["val_bpb"] - original(run, 1)["val_bpb"]) < 1e-9
    phases = json.loads((out / "seed_1" / "verdict.json").read_text())["phases"]
    assert {phases[p]["container"]["config"]["network_mode"] for p in ("train", "eval")} == {"none"}
    assert json.loads((out / "rerun.json").read_text())["container"]["image"] == "pgolf:cpu"
    merged = pgolf("rerun", folder, "--merge", out, "--container", "--out", tmp_path / "m", "-q")
    assert merged.returncode == 2 and "--container do not apply" in merged.stderr


@pytest.fixture(scope="module")
def plain_record(tmp_path_factory) -> Path:
    """A records folder of a plain (non-protocol) script whose seed log is a real `pgolf run --legacy` log."""
    root = tmp_path_factory.mktemp("plain")
    done = pgolf("run", "--legacy", "--submission", PLAIN, "--nproc", "1", "--seeds", "7", "--out", root / "run", "-q")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    folder = root / "records" / "track_non_record_16mb" / "2026-05-01_Plain"
    folder.mkdir(parents=True)
    shutil.copy2(PLAIN / "train_gpt.py", folder)
    shutil.copy2(root / "run" / "seed_7" / "legacy.log", folder / "train_seed7.log")
    logged = json.loads((root / "run" / "seed_7" / "verdict.json").read_text())["seeds"]["7"]["logged_val_bpb"]
    (folder / "submission.json").write_text(json.dumps({"name": "Plain", "val_bpb": logged, "seeds": [7],
                                                        "seed_results": {"7": {"val_bpb": logged}}}))
    (folder / "README.md").write_text("# Plain\n")
    return folder


def test_a_plain_script_reruns_with_legacy_and_only_with_it(plain_record, tmp_path):
    refused = pgolf("rerun", plain_record, "--out", tmp_path / "phases", "-q")
    assert refused.returncode == 2 and "--legacy" in refused.stderr and "Traceback" not in refused.stderr
    assert not (tmp_path / "phases").exists()

    done = pgolf("rerun", plain_record, "--legacy", "--out", tmp_path / "legacy", "-q")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    verdict = json.loads((tmp_path / "legacy" / "verdict.json").read_text())
    row = verdict["seeds"]["7"]
    assert row["outcome"] == "reproduced" and row["legacy"] is True
    assert (tmp_path / "legacy" / "seed_7" / "legacy.log").is_file()
    assert row["reproduced"]["val_bpb"] == row["claimed"]["val_bpb"]
    assert row["reproduced"]["artifact_bytes"] == row["claimed"]["artifact_bytes"]
    codes = {f["code"]: f["status"] for f in verdict["findings"]}
    assert codes["statistics.too_few_seeds"] == "info" and codes["size.reproduced"] == "pass"
    assert codes["rerun.reproduced"] == "pass" and "claimed std unknown" in next(
        f["message"] for f in verdict["findings"] if f["code"] == "rerun.reproduced")


@pytest.mark.parametrize("args, says", [
    (["--seeds", "3"], "claims no val_bpb for seed(s) [3]"),
    (["--against", "not-a-frontier"], "--against not-a-frontier"),
    (["--track", "track_nope"], "unknown track"),
    (["--merge", "/nonexistent/jobs"], "no such folder"),
])
def test_usage_errors_are_one_line(plain_record, tmp_path, args, says):
    done = pgolf("rerun", plain_record, "--out", tmp_path / "out", *args)
    assert done.returncode == 2 and says in done.stderr, done.stderr
    assert len(done.stderr.splitlines()) == 1 and "Traceback" not in done.stderr


def test_a_folder_without_claims_is_a_usage_error(tmp_path):
    (tmp_path / "train_gpt.py").write_text("print('hi')\n")
    done = pgolf("rerun", tmp_path, "--out", tmp_path / "out")
    assert done.returncode == 2 and "submission.json" in done.stderr and len(done.stderr.splitlines()) == 1


def test_only_a_valid_verdict_of_that_seed_counts_as_finished(claimed, tmp_path):
    run, _ = claimed
    good = json.loads((run / "seed_1" / "verdict.json").read_text())
    cases = {
        "truncated": (run / "seed_1" / "verdict.json").read_text()[:200],
        "other_seed": json.dumps({**good, "seeds": {"9": good["seeds"]["1"]}}),
        "check_verdict": json.dumps({**good, "command": "check"}),
        "schema_breach": json.dumps({**good, "status": "fine"}),
    }
    for name, text in cases.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "verdict.json").write_text(text)
        assert finished_verdict(tmp_path / name, 1) is None, name
    assert finished_verdict(tmp_path / "absent", 1) is None
    assert finished_verdict(run / "seed_1", 1) == good


def test_loss_curves_of_real_record_logs(tmp_path):
    """Every train_loss line of the records' logs, in their formats (`step:N/M` and `N/M`), in step order."""
    logs = [p for p in FIXTURES.rglob("*.log")] + [p for p in FIXTURES.rglob("train*.txt")]
    assert len(logs) >= 8
    for path in logs:
        curve = loss_curve(path)
        lines = [line for line in path.read_text().splitlines() if "train_loss" in line and "{" not in line]
        assert len(curve) == len(lines), path
        assert all(a[0] < b[0] for a, b in zip(curve, curve[1:])), path
        assert curve[-1][1] < curve[0][1], path  # the models learned
    first, second = sorted(FIXTURES.rglob("train_seed*.log"))[:2]
    both = tmp_path / "two_runs_in_one.log"
    both.write_text(first.read_text() + second.read_text())
    assert loss_curve(both) == loss_curve(second)  # a log holding two runs: the last one counts


def test_the_reproduction_tolerances_are_rules_not_code(claimed, tmp_path):
    """Loosen val_bpb_abs in a rules file and the perturbed seed counts as reproduced: the tolerance is data."""
    run, folder = claimed
    bad = tmp_path / "records" / "track_10min_16mb" / "2026-05-02_TinyOff"
    shutil.copytree(folder, bad)
    perturb(bad, 2, PERTURBATION)
    rules = tmp_path / "rules.yaml"
    text = (REPO / "harness" / "rules" / "rules.yaml").read_text()
    assert "val_bpb_abs: 0.001" in text
    rules.write_text(text.replace("val_bpb_abs: 0.001", "val_bpb_abs: 0.1"))
    strict = pgolf("rerun", bad, "--out", tmp_path / "strict", "--merge", run, "-q")
    loose = pgolf("rerun", bad, "--out", tmp_path / "loose", "--merge", run, "--rules", rules, "-q")
    assert (strict.returncode, loose.returncode) == (1, 0), loose.stderr
    assert load_rules(rules).reproduction["val_bpb_abs"] == 0.1


def _commands(script: str) -> list[str]:
    """The command lines that set FOLDER or run pgolf, continuations joined and spacing normalised."""
    joined = re.sub(r"\\\n\s*", " ", script)
    return [" ".join(line.split()) for line in joined.splitlines() if line.strip().startswith(("pgolf ", "FOLDER=$("))]


def test_the_ci_example_runs_exactly_the_readme_s_commands():
    workflow = yaml.safe_load((REPO / ".github" / "workflows" / "rerun.yml").read_text())
    ci = [c for step in workflow["jobs"]["rerun"]["steps"] if "run" in step for c in _commands(step["run"])]
    readme = (REPO / "README.md").read_text().split("### Rerun a PR on a reviewer's runner")[1]
    documented = _commands(readme.split("```sh")[1].split("```")[0])
    assert ci == documented and [c.split()[:2] for c in ci[1:]] == [["pgolf", "data"], ["pgolf", "rerun"]]
    assert "--markdown \"$GITHUB_STEP_SUMMARY\"" in ci[2] and "--resume" in ci[2]
