"""Behavioural probes (harness.run.probe): the streams it builds, how it judges what comes back, and
`pgolf probe` end to end on a real run of examples/tiny. The cheats it must catch are attack cases
(tests/attack_cases/probe_*, ledger_*: run with --probe)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from harness.client.pgolf_events import audit_positions
from harness.findings import UsageError
from harness.run import payload
from harness.run.probe import MIN_TOLERANCE, Ran, Stream, differs, judge, plan

BOS = 1


def stream_of(n: int = 5000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    tokens = rng.integers(4, 500, n).astype(np.uint16)
    tokens[::300] = BOS  # documents
    return tokens


def test_streams_keep_the_prefix_and_change_at_the_cut():
    tokens = stream_of()
    changes, b = plan(tokens, secret=7, canary_at=[700, 1500], cuts=2)
    assert [s.name for s in changes] == ["canary_1", "canary_2", "cut_1", "cut_2"]
    assert [s.cut for s in changes[:2]] == [700, 1500] and all(2 <= s.cut <= 1500 for s in changes[2:])
    assert b.name == "control_b" and (b.index == np.arange(tokens.size)).all() and b.needed == 1500 and b.cut is None
    for s in changes:
        assert s.index.size == tokens.size  # as long as the real stream, made of its tokens
        assert (s.index[:s.cut] == np.arange(s.cut)).all() and s.needed == s.cut
        audits = audit_positions(s.audit_seed, tokens.size)
        assert s.cut not in audits and audits[0] < s.cut  # no row asked at the cut; one before it (protocol 1)
        if s.canary is not None:
            assert tokens[s.index[s.cut]] == s.canary != tokens[s.cut]
            assert tokens[s.index[s.cut + 1]] == BOS  # other text starts at a document start
        else:
            assert tokens[s.index[s.cut]] == BOS
    again, b_again = plan(tokens, secret=7, canary_at=[700, 1500], cuts=2)
    assert [(s.audit_seed, s.cut, s.canary) for s in again + [b_again]] == \
        [(s.audit_seed, s.cut, s.canary) for s in changes + [b]]
    assert [s.cut for s in plan(tokens, secret=8, canary_at=[700, 1500], cuts=2)[0]] != [s.cut for s in changes]
    with pytest.raises(UsageError):
        plan(tokens[:5], secret=1, canary_at=[3], cuts=0)
    with pytest.raises(UsageError, match="distinct tokens"):
        plan(np.full(100, BOS, np.uint16), secret=1, canary_at=[50], cuts=0)


def uniform(seen, p):
    return np.full(500, -np.log(500.0))


EVALUATION_AUDITS = [700, 1500, 2300, 4100]  # where the evaluation was asked for its distribution


def runs(tokens: np.ndarray, nll_of, row_of=uniform, secret: int = 3, canaries: int = 2, cuts: int = 1,
         second_control: bool = False) -> tuple[Ran, list[Ran]]:
    """The evaluation's kept scores and the probe runs, as a job would send them that scores position p of the
    stream it sees with `nll_of(seen, p, audited)` and sends `row_of(seen, p)` where it is audited."""
    changes, b = plan(tokens, secret, EVALUATION_AUDITS[:canaries], cuts)

    def ran(s, audited, complete=True):
        seen = tokens[s.index]
        nll = np.full(s.needed + 1, np.nan, np.float32)
        for p in range(1, s.needed + 1):
            nll[p] = nll_of(seen, p, p in audited)
        return Ran(s, nll, audited, {p: row_of(seen, p).astype(np.float32) for p in audited if p <= s.needed},
                   complete, 1.0, 0)

    evaluation = ran(Stream("evaluation", np.arange(tokens.size), 0, EVALUATION_AUDITS[-1]), set(EVALUATION_AUDITS))
    probes = [ran(s, set(audit_positions(s.audit_seed, tokens.size))) for s in changes]
    if second_control:
        probes.append(ran(b, set(audit_positions(b.audit_seed, tokens.size))))
    return evaluation, probes


def honest(seen, p, audited):
    """-log p(target) of a fixed uniform distribution over 500 tokens: causal, reads no target."""
    return np.log(500.0)


def codes(findings):
    return {f.code: f.status for f in findings}


def test_a_causal_job_that_reads_no_target_passes_on_one_run_per_change_point():
    evaluation, probes = runs(stream_of(), honest)
    assert differs(evaluation, probes) == 0.0  # so the probe runs no second control
    found, facts = judge(evaluation, probes, eval_wall_s=10.0)
    assert codes(found) == {"probe.noise_floor": "info", "probe.causal": "pass", "probe.targets_unread": "pass"}
    assert facts["noise_floor"] is None and facts["tolerance"] == MIN_TOLERANCE and facts["runs"] == 3


def test_looking_ahead_is_noncausal():
    def peeks(seen, p, audited):  # the NLL at p depends on the token after p
        return np.log(500.0) + (0.01 * (int(seen[p + 1]) % 7) if p + 1 < seen.size else 0.0)
    evaluation, probes = runs(stream_of(), peeks)
    assert differs(evaluation, probes) > MIN_TOLERANCE  # the probe then runs the second control
    found, facts = judge(*runs(stream_of(), peeks, second_control=True), 10.0)
    assert codes(found)["probe.noncausal"] == "fail" and "probe.causal" not in codes(found)
    assert facts["noise_floor"] == 0.0 and facts["runs"] == 4


def test_reading_the_target_fails_the_canary():
    """A bonus on the true target, renormalised: its rows agree with its NLLs, only a canary tells."""
    def with_bonus(seen, p):
        logits = np.zeros(500)
        logits[seen[p]] += 2.0
        return logits - np.log(np.exp(logits).sum())

    found = codes(judge(*runs(stream_of(), lambda seen, p, audited: -with_bonus(seen, p)[seen[p]], with_bonus),
                        10.0)[0])
    assert found["probe.reads_targets"] == "fail" and found["probe.causal"] == "pass"


def test_honesty_only_where_audited_fails():
    def flattering(seen, p, audited):
        return np.log(500.0) * (1.0 if audited else 0.9)
    evaluation, probes = runs(stream_of(), flattering)
    assert differs(evaluation, probes) > MIN_TOLERANCE
    found = codes(judge(*runs(stream_of(), flattering, second_control=True), 10.0)[0])
    assert found["probe.audit_dependent"] == "fail"


def test_noise_sets_the_tolerance_and_too_much_noise_judges_nothing():
    evaluation, probes = runs(stream_of(), honest, second_control=True)
    for r in probes:
        r.nll[1:] += 0.001  # kernels that are not bitwise deterministic: every rerun is a little off
    assert differs(evaluation, probes) == pytest.approx(0.001, rel=1e-3)
    found, facts = judge(evaluation, probes, 10.0)
    assert facts["noise_floor"] == pytest.approx(0.001, rel=1e-3) and facts["tolerance"] == pytest.approx(0.003, rel=1e-3)
    assert codes(found)["probe.causal"] == "pass"
    probes[-1].nll[1:] += 1.0
    assert codes(judge(evaluation, probes, 10.0)[0]) == {"probe.unjudged": "warn"}


def test_a_run_that_stopped_early_is_not_compared():
    evaluation, probes = runs(stream_of(), honest)
    cut = next(r for r in probes if r.stream.name == "cut_1")
    cut.complete = False
    found = codes(judge(evaluation, probes, 10.0)[0])
    assert found["probe.incomplete"] == "warn" and found["probe.causal"] == "pass"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("probe") / "run"
    env = {**os.environ, "TINY_STEPS": "5", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    run = subprocess.run([sys.executable, "-m", "harness", "run", "-q", "--nproc", "1", "--out", str(out)],
                         capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    return out, env


def test_pgolf_probe_judges_a_finished_run_and_leaves_its_view_as_it_was(tiny_run):
    out, env = tiny_run
    seed = out / "seed_1"
    view_before = payload.scan(seed / "data" / "val").fingerprint()
    argv = [sys.executable, "-m", "harness", "probe", str(out), "-q"]
    probed = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=env)
    assert probed.returncode == 0, probed.stderr[-2000:]
    assert payload.scan(seed / "data" / "val").fingerprint() == view_before
    verdict = json.loads((seed / "verdict.json").read_text())
    found = {f["code"]: f["status"] for f in verdict["findings"]}
    assert found["probe.causal"] == "pass" and found["probe.targets_unread"] == "pass"
    record = json.loads((seed / "probe" / "probe.json").read_text())
    assert [s["name"] for s in record["plan"]["streams"]] == ["canary_1"]  # deterministic on the CPU: one run
    assert record["facts"]["probe_wall_s"] > 0 and (seed / "probe" / "canary_1" / "eval.log").is_file()
    again = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)
    assert again.returncode == 2 and "never overwrites a probe" in again.stderr and len(again.stderr.splitlines()) == 1


def test_rerun_probe_probes_each_seed_it_runs(tiny_run, tmp_path):
    out, env = tiny_run
    records = tmp_path / "records" / "track_10min_16mb"
    exported = subprocess.run([sys.executable, "-m", "harness", "export", str(out), "--name", "Tiny", "--dest",
                               str(records), "-q"], capture_output=True, text=True, timeout=120, env=env)
    assert exported.returncode == 0, exported.stderr[-2000:]
    (folder,) = records.iterdir()
    rerun = subprocess.run([sys.executable, "-m", "harness", "rerun", str(folder), "--probe", "--nproc", "1",
                            "--out", str(tmp_path / "rerun"), "-q"], capture_output=True, text=True, timeout=600, env=env)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    seed = json.loads((tmp_path / "rerun" / "seed_1" / "verdict.json").read_text())
    assert {f["code"] for f in seed["findings"] if f["check"] == "probe"} >= {"probe.causal", "probe.targets_unread"}
    legacy = subprocess.run([sys.executable, "-m", "harness", "rerun", str(folder), "--probe", "--legacy",
                             "--out", str(tmp_path / "legacy"), "-q"], capture_output=True, text=True, timeout=60, env=env)
    assert legacy.returncode == 2 and "--legacy rerun has none" in legacy.stderr


def test_a_probe_record_that_is_not_one_is_a_usage_error(tmp_path):
    from harness.run import seedfolder

    (tmp_path / "probe").mkdir()
    (tmp_path / "probe" / "probe.json").write_text('{"facts": {}}')
    with pytest.raises(UsageError, match="'findings' list"):
        seedfolder.read_probe(tmp_path)
    seedfolder.write_probe(tmp_path, {"findings": [], "facts": {}, "plan": None})
    assert seedfolder.read_probe(tmp_path)["findings"] == []


def test_the_evaluation_keeps_what_a_probe_compares_against_and_nothing_else_passes_for_it(tiny_run, tmp_path):
    from harness.run import seedfolder

    out, _ = tiny_run
    kept = seedfolder.read_eval_scores(out / "seed_1")
    positions = kept["positions"].tolist()
    assert 1 <= len(positions) <= 4 and min(positions) >= 2 and kept["nll"].size == positions[-1] + 1
    assert set(positions) <= set(kept["audited"].tolist()) and not np.isnan(kept["nll"][1:]).any()
    assert all(kept[f"row_{p}"].ndim == 1 for p in positions)
    seed = tmp_path / "seed_1"
    seed.mkdir()
    assert seedfolder.read_eval_scores(seed) is None
    (seed / seedfolder.EVAL_SCORES).write_bytes(b"not a zip")
    with pytest.raises(UsageError, match="not the evaluation's scores"):
        seedfolder.read_eval_scores(seed)
    np.savez(seed / seedfolder.EVAL_SCORES, positions=np.array([5]), nll=np.zeros(3), audited=np.array([5]))
    with pytest.raises(UsageError, match="do not agree"):
        seedfolder.read_eval_scores(seed)


def test_a_seed_evaluated_without_kept_scores_is_refused_in_one_line(tiny_run, tmp_path):
    import shutil

    out, env = tiny_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy, symlinks=True, ignore=shutil.ignore_patterns("probe"))
    (copy / "seed_1" / "eval_scores.npz").unlink()
    probed = subprocess.run([sys.executable, "-m", "harness", "probe", str(copy), "-q"], capture_output=True,
                            text=True, timeout=60, env=env)
    assert probed.returncode == 2 and len(probed.stderr.splitlines()) == 1 and "pgolf rerun --probe" in probed.stderr
