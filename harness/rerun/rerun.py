"""`pgolf rerun DIR`: run a submission's claimed seeds again and judge, per seed and in aggregate, whether
its claims hold.

The claims are read by `pgolf check`'s reader (harness.check.evidence): per-seed val_bpb and artifact
bytes from submission.json where it gives them, else from the seed's log; times, steps and the
training-loss curve from the log. Each seed then runs through `pgolf run`'s runner (phases, or one job with
--legacy) into RUNDIR/seed_<s>/. A seed folder counts as finished only when its verdict.json is a
valid run verdict for that seed, which the runner writes atomically as its last act; a folder
without one is half a run, and `--resume` sets it aside as seed_<s>.incomplete-<n> and runs the
seed again, so a rerun killed during seed 3 continues at seed 3 and never builds on a torn run.
`--merge` judges seed folders that other jobs wrote (one container per seed on a scheduler).

How close is close enough comes from rules.yaml's `reproduction` section, never from code: a seed
further than `val_bpb_abs` from its claim is not reproduced (FAIL); times, steps and bytes outside
their tolerances are warnings. The aggregate is the mean paired difference with a t interval, a
two-sample Welch test claimed vs reproduced (harness.check.significance's), and, with --against, whether
the reproduced seeds still clear the significance policies.
"""
from __future__ import annotations

import json
import math
import os
import reprlib
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.check import submission_json
from harness.atomic import write_text_atomic
from harness.check.budgets import score_eval_s
from harness.check.claims import SeedEvidence, pick_score
from harness.check.evidence import read_folder
from harness.code import scan_code
from harness.findings import FAIL, INFO, PASS, WARN, Evidence, Finding, UsageError
from harness.logs import loss_curve, read_log, tokenizer_of
from harness.report import verdict_json
from harness.rerun.report import render_html, render_markdown
from harness.rules import Rules, Track
from harness.check.significance import compare, resolve_frontier, significance_findings
from harness.run import seedfolder
from harness.run.backend import Backend, Native
from harness.verdict import Verdict

if TYPE_CHECKING:
    from harness.run.probe import Sampling

PLAN = "rerun.json"  # the options a rerun folder was started with; --resume must repeat them


@dataclass(frozen=True)
class SeedNumbers:
    """One seed as claimed or as reproduced; None where the evidence does not say."""

    val_bpb: float | None
    artifact_bytes: int | None
    train_s: float | None
    eval_s: float | None
    steps: int | None
    loss_curve: list[tuple[int, float]]
    source: str  # the log (claimed) or the seed folder (reproduced) the numbers come from


@dataclass(frozen=True)
class Claimed:
    folder: Path
    track: str
    seeds: dict[int, SeedNumbers]  # every claimed seed with a val_bpb, in the order the submission lists them
    world_size: int | None  # when all the seed logs agree on one
    tokenizer: str | None
    speaks_protocol: bool  # the code imports pgolf_events, so it can run as separate phases


@dataclass(frozen=True)
class RerunRequest:
    submission: Path
    out: Path
    dataset: Path
    tokenizer: Path
    seeds: list[int] | None = None  # None: every claimed seed
    nproc: int | None = None  # None: the claimed world size, else the track's GPU count, else 1
    track: str | None = None
    legacy: bool = False
    resume: bool = False
    merge: tuple[Path, ...] = ()  # judge the finished seed folders in these instead of running
    against: str | None = None
    train_limit_s: float | None = None
    eval_limit_s: float | None = None
    echo: bool = True
    backend: Backend = Native()  # where each seed's jobs run
    probe: Sampling | None = None  # probe each seed (harness.run.probe) once its run is finished


def rerun(request: RerunRequest, rules: Rules) -> Verdict:
    """Run (or merge) the seeds, judge them against the claims, and write verdict.json and the reports."""
    claimed = read_claims(request.submission, rules, request.track)
    seeds = _chosen(request.seeds, claimed)
    frontier, source = resolve_frontier(request.against, rules)  # a bad --against fails before any run
    if request.merge:
        if request.resume or request.legacy or request.backend.settings():
            raise UsageError("--merge runs nothing: --resume, --legacy and --container do not apply (each seed folder "
                             "says how it ran)")
        runs = merged_seeds(request.merge, seeds)
        request.out.mkdir(parents=True, exist_ok=True)
    else:
        runs = run_seeds(request, claimed, seeds, rules)
    verdict = judge(claimed, seeds, runs, frontier, source, rules)
    publish(verdict, request.out)
    return verdict


def publish(verdict: Verdict, out: Path) -> None:
    document = verdict.to_dict()
    write_text_atomic(out / "verdict.json", verdict_json(document))
    write_text_atomic(out / "report.md", render_markdown(document))
    write_text_atomic(out / "report.html", render_html(document))


# --- the claims ---------------------------------------------------------------------------------

def read_claims(folder: Path, rules: Rules, track: str | None = None) -> Claimed:
    if not folder.is_dir():
        raise UsageError(f"{folder}: no such submission folder")
    if track is not None:
        rules.track(track)  # an unknown track stops here
    ev = read_folder(folder.resolve(), rules, track)
    if ev.data is None:
        why = ev.json_problems[0].message if ev.json_problems else f"{submission_json.FILE} is missing"
        raise UsageError(f"{ev.folder}: {why}; pgolf rerun reads the claimed seeds from it")
    folder, claims, matched = ev.folder, ev.claims, ev.matched  # check reports the findings of reading it
    evidence = {s.seed: s for s in matched}
    seeds = {}
    for seed in dict.fromkeys([*claims.seeds, *evidence]):
        numbers = _claimed_numbers(folder, claims, evidence.get(seed), seed)
        if numbers.val_bpb is not None:
            seeds[seed] = numbers
    if not seeds:
        raise UsageError(f"{folder}: no per-seed val_bpb in {submission_json.FILE} or in a seed log; nothing to reproduce")
    worlds = {int(s.log.get("world_size").value) for s in matched if s.log.get("world_size")}
    scan = scan_code(folder, rules)
    protocol = "pgolf_events" in scan.third_party or any(p.name == "pgolf_events.py" for p in scan.counted)
    return Claimed(folder, ev.track, seeds, worlds.pop() if len(worlds) == 1 else None,
                   tokenizer_of([s.log for s in matched], rules)[0], protocol)


def _claimed_numbers(folder: Path, claims: submission_json.Claims, evidence: SeedEvidence | None,
                     seed: int) -> SeedNumbers:
    claim, size = claims.per_seed.get(seed), claims.per_seed_bytes.get(seed)
    log = evidence.log if evidence else None
    score = evidence.score if evidence else None
    if log is None:
        return SeedNumbers(claim.value if claim else None, int(size.value) if size else None, None, None, None, [],
                           submission_json.FILE)
    total = log.get("total_bytes")
    curve = loss_curve(folder / log.name)
    return SeedNumbers(
        val_bpb=claim.value if claim else score.val_bpb if score else None,
        artifact_bytes=int(size.value) if size else int(total.value) if total else None,
        train_s=float(log.train_stop.value) / 1000 if log.train_stop else None,
        eval_s=score_eval_s(log, evidence)[0],
        steps=log.steps or (curve[-1][0] if curve else None),  # exported logs say step 0 when unknown
        loss_curve=curve, source=log.name)


def _chosen(requested: list[int] | None, claimed: Claimed) -> list[int]:
    if requested is None:
        return list(claimed.seeds)
    unknown = [s for s in requested if s not in claimed.seeds]
    if unknown:
        raise UsageError(f"--seeds: {claimed.folder} claims no val_bpb for seed(s) {unknown}; "
                         f"claimed: {', '.join(map(str, claimed.seeds))}")
    return requested


# --- running and resuming -----------------------------------------------------------------------

def run_seeds(request: RerunRequest, claimed: Claimed, seeds: list[int],
              rules: Rules) -> dict[int, tuple[Path, dict[str, Any]]]:
    from harness.run.probe import probe_and_verify
    from harness.run.seed import RunSpec, run_seed  # imports torch's runner and the event server: only runs need them

    if request.probe and request.legacy:
        raise UsageError("--probe reruns the eval phase: a --legacy rerun has none")
    if not request.legacy and not claimed.speaks_protocol:
        raise UsageError(f"{claimed.folder}/train_gpt.py does not import pgolf_events, so it cannot run as separate "
                         "train and eval phases; rerun it with --legacy")
    if not request.dataset.is_dir():
        raise UsageError(f"{request.dataset}: no such dataset folder")
    if not request.tokenizer.is_file():
        raise UsageError(f"{request.tokenizer}: no such tokenizer file")
    hardware = rules.tracks[claimed.track].hardware
    nproc = request.nproc or claimed.world_size or (hardware["gpus"] if hardware else 1)
    if nproc < 1:
        raise UsageError("--nproc must be at least 1")
    plan = {"submission": str(claimed.folder), "seeds": seeds, "nproc": nproc, "legacy": request.legacy,
            "dataset": str(request.dataset), "tokenizer": str(request.tokenizer), "track": claimed.track,
            "train_limit_s": request.train_limit_s or rules.hard_limit(claimed.track, "train"),
            "eval_limit_s": request.eval_limit_s or rules.hard_limit(claimed.track, "eval"), "container": request.backend.settings()}
    _open_rundir(request.out, plan, request.resume)
    runs = {}
    for seed in seeds:
        seed_dir = seedfolder.seed_folder(request.out, seed)
        verdict = seedfolder.finished_verdict(seed_dir, seed)
        if verdict is None:
            if seed_dir.exists():
                aside = seedfolder.set_aside(seed_dir)
                _say(request, f"seed {seed}: unfinished folder set aside as {aside.name}")
            _say(request, f"seed {seed}: running into {seed_dir}")
            run_seed(RunSpec(claimed.folder, request.dataset, request.tokenizer, seed, nproc, seed_dir, claimed.track,
                             plan["train_limit_s"], plan["eval_limit_s"], rules.phase_clock["grace_s"], echo=request.echo,
                             legacy=request.legacy, backend=request.backend), rules)
            verdict = seedfolder.finished_verdict(seed_dir, seed)  # read back: one definition of finished, here and on resume
            if verdict is None:
                raise AssertionError(f"{seed_dir}: the runner returned without a valid verdict.json")
        else:
            _say(request, f"seed {seed}: finished earlier, kept ({seed_dir})")
        if request.probe and seedfolder.read_probe(seed_dir) is None:
            _say(request, f"seed {seed}: probing")
            verdict = probe_and_verify(seed_dir, rules, request.backend, request.probe, echo=request.echo).to_dict()
        runs[seed] = (seed_dir, verdict)
    return runs


def _say(request: RerunRequest, text: str) -> None:
    if request.echo:
        print(f"pgolf rerun: {text}", flush=True)


def _open_rundir(out: Path, plan: dict[str, Any], resume: bool) -> None:
    if not out.exists():
        out.mkdir(parents=True)
        write_text_atomic(out / PLAN, json.dumps(plan, indent=2) + "\n")
        return
    if not resume:
        raise UsageError(f"{out} already exists; --resume continues the rerun there, or choose another --out")
    try:
        before = json.loads((out / PLAN).read_text("utf-8"))
    except (OSError, ValueError, RecursionError):
        raise UsageError(f"--resume {out}: no readable {PLAN}, so not a folder pgolf rerun started") from None
    if not isinstance(before, dict):
        raise UsageError(f"--resume {out / PLAN}: expected a JSON object of the rerun's options, found a "
                         f"{type(before).__name__}")
    changed = [k for k in plan if before.get(k) != plan[k]]
    if changed:
        raise UsageError(f"--resume {out}: it was started with other options ("
                         + "; ".join(f"{k} {reprlib.repr(before.get(k))} then, {reprlib.repr(plan[k])} now"
                                     for k in changed) + ")")
    busy = working_in(out)
    if busy:
        raise UsageError(f"--resume {out}: process(es) {busy} still work inside it (a job of the interrupted rerun "
                         "outlived it, or another rerun runs there); stop them first")


def working_in(folder: Path) -> list[int]:
    """Pids whose working directory lies inside the folder. A phase job whose harness was SIGKILLed
    keeps running in its seed folder and writes to absolute paths there: resuming beside it would
    let it write into the new attempt."""
    root = folder.resolve()
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cwd = Path(os.readlink(proc / "cwd"))
        except OSError:
            continue  # gone, or not ours to read
        if cwd == root or root in cwd.parents:
            pids.append(int(proc.name))
    return sorted(pids)


def merged_seeds(folders: tuple[Path, ...], seeds: list[int]) -> dict[int, tuple[Path, dict[str, Any]]]:
    """The finished seed_<s>/ folders in the given run folders (one job each); a seed finished twice is refused."""
    found: dict[int, tuple[Path, dict[str, Any]]] = {}
    for folder in folders:
        if not folder.is_dir():
            raise UsageError(f"--merge {folder}: no such folder")
        for seed in seeds:
            seed_dir = seedfolder.seed_folder(folder.resolve(), seed)
            verdict = seedfolder.finished_verdict(seed_dir, seed)
            if verdict is None:
                continue
            if seed in found:
                raise UsageError(f"--merge: seed {seed} is finished in both {found[seed][0].parent} and {folder}; "
                                 "give each seed's folder once")
            found[seed] = (seed_dir, verdict)
    return found


def reproduced_numbers(seed_dir: Path, verdict: dict[str, Any], seed: int, rules: Rules) -> SeedNumbers:
    """What the run measured; a --legacy run's numbers are the script's own, read from its log as check reads them."""
    facts = seedfolder.seed_facts(verdict, seed)
    if seedfolder.is_legacy(verdict):
        legacy_log = seedfolder.log_path(seed_dir, seedfolder.LEGACY_PHASE)
        log = read_log(legacy_log, seed_dir, rules)
        curve = loss_curve(legacy_log)
        return SeedNumbers(facts.get("logged_val_bpb"), facts.get("logged_artifact_bytes"),
                           float(log.train_stop.value) / 1000 if log.train_stop else None,
                           score_eval_s(log, SeedEvidence(seed, log, pick_score(log, rules)))[0],
                           log.steps or (curve[-1][0] if curve else None), curve, str(seed_dir))
    curve = loss_curve(seedfolder.log_path(seed_dir, "train"))
    steps = seedfolder.reported_steps(seed_dir, facts, rules)
    return SeedNumbers(facts.get("val_bpb"), facts.get("artifact_bytes") or None,
                       seedfolder.train_seconds(facts), seedfolder.eval_seconds(facts),
                       steps or (curve[-1][0] if curve else None), curve, str(seed_dir))


# --- the judgement ------------------------------------------------------------------------------

def judge(claimed: Claimed, seeds: list[int], runs: dict[int, tuple[Path, dict[str, Any]]],
          frontier: list[float] | None, frontier_source: str, rules: Rules) -> Verdict:
    tol = rules.reproduction
    track = rules.tracks[claimed.track]
    values = [n.val_bpb for n in claimed.seeds.values()]
    spread = (statistics.stdev(values) if len(values) > 1 else 0.0) or None  # the claimed seeds' sample std
    findings: list[Finding] = []
    table: dict[int, dict[str, Any]] = {}
    pairs: list[tuple[float, float]] = []
    for seed in seeds:
        claim = claimed.seeds[seed]
        row: dict[str, Any] = {"claimed": asdict(claim), "reproduced": None, "folder": None}
        table[seed] = row
        if seed not in runs:
            row["outcome"] = "not_run"
            findings.append(Finding("rerun", FAIL, "rerun.not_run", f"seed {seed}: no finished run of it "
                                    "(no seed folder with a valid verdict.json)", seed=seed))
            continue
        seed_dir, run = runs[seed]
        got = reproduced_numbers(seed_dir, run, seed, rules)
        row.update(reproduced=asdict(got), folder=str(seed_dir), run_status=run["status"],
                   legacy=bool(run.get("legacy")))
        found, outcome = _score_findings(seed, claim, got, spread, tol, seed_dir)
        row["outcome"] = "run_failed" if outcome == "reproduced" and run["status"] == FAIL else outcome
        if got.val_bpb is not None:
            pairs.append((claim.val_bpb, got.val_bpb))
            row["delta_val_bpb"] = got.val_bpb - claim.val_bpb
            row["delta_claimed_std"] = row["delta_val_bpb"] / spread if spread else None
        findings += _run_findings(seed, run, seed_dir) + found + _budget_findings(seed, claim, got, tol)
    findings += _aggregate_findings(pairs, tol)
    if frontier is not None:
        findings += _significance(pairs, frontier, frontier_source, claimed.tokenizer, track, rules)
    extra = {"rerun": {
        "submission": str(claimed.folder), "tolerances": dict(tol), "claimed_std": spread,
        "limits": {"artifact_bytes": track.artifact_limit_bytes, "train_s": track.train_limit_s,
                   "eval_s": track.eval_limit_s},
        "aggregate": _aggregate(pairs, tol["confidence"]),
        "frontier": {"source": frontier_source, "val_bpb": frontier} if frontier is not None else None,
    }}
    return Verdict(str(claimed.folder), claimed.track, None, findings, table, command="rerun", extra=extra)


def _run_findings(seed: int, run: dict[str, Any], seed_dir: Path) -> list[Finding]:
    """The seed's own run verdict: a failed run (a crash, a ledger breach, over a limit) reproduces nothing;
    its warnings (e.g. what --legacy leaves unenforced) are named for the reviewer."""
    where = (Evidence(str(seed_dir / seedfolder.VERDICT)),)
    failed = [f for f in run["findings"] if f["status"] == FAIL]
    if failed:
        listed = "; ".join(f"{f['code']} ({f['message']})" for f in failed[:3]) + (" ..." if len(failed) > 3 else "")
        return [Finding("rerun", FAIL, "rerun.run_failed", f"seed {seed}: the rerun itself failed: {listed}", where,
                        seed=seed, data={"codes": [f["code"] for f in failed]})]
    warned = [f["code"] for f in run["findings"] if f["status"] == WARN]
    if warned:
        return [Finding("rerun", INFO, "rerun.run_warnings", f"seed {seed}: the rerun's own verdict warns: "
                        f"{', '.join(warned)}", where, seed=seed, data={"codes": warned})]
    return []


def _score_findings(seed: int, claim: SeedNumbers, got: SeedNumbers, spread: float | None,
                    tol: dict[str, float], seed_dir: Path) -> tuple[list[Finding], str]:
    if got.val_bpb is None:
        return [Finding("rerun", FAIL, "rerun.no_score", f"seed {seed}: the rerun produced no val_bpb "
                        f"(see {seed_dir})", (Evidence(str(seed_dir / seedfolder.VERDICT)),), seed=seed)], "no_score"
    delta = got.val_bpb - claim.val_bpb
    units = delta / spread if spread else None
    in_std = f"{units:+z.2f} claimed std" if units is not None else "claimed std unknown: fewer than 2 distinct seeds"
    numbers = (f"seed {seed}: val_bpb claimed {claim.val_bpb:.8f}, reproduced {got.val_bpb:.8f} "
               f"(Δ {delta:+z.8f} BPB, {in_std})")
    data = {"claimed": claim.val_bpb, "reproduced": got.val_bpb, "delta": delta, "delta_claimed_std": units,
            "tolerance_abs": tol["val_bpb_abs"], "tolerance_claimed_std": tol["val_bpb_claimed_std"]}
    where = (Evidence(claim.source), Evidence(str(seed_dir / seedfolder.VERDICT)))
    if abs(delta) > tol["val_bpb_abs"] + 1e-12:
        return [Finding("rerun", FAIL, "rerun.not_reproduced", f"{numbers}: not reproduced, beyond the "
                        f"±{tol['val_bpb_abs']:g} BPB tolerance", where, seed=seed, data=data)], "not_reproduced"
    if units is not None and abs(units) > tol["val_bpb_claimed_std"]:
        return [Finding("rerun", WARN, "rerun.beyond_claimed_spread", f"{numbers}: reproduced within "
                        f"±{tol['val_bpb_abs']:g} BPB, but more than {tol['val_bpb_claimed_std']:g} claimed std away",
                        where, seed=seed, data=data)], "reproduced"
    return [Finding("rerun", PASS, "rerun.reproduced", f"{numbers}: reproduced within ±{tol['val_bpb_abs']:g} BPB",
                    where, seed=seed, data=data)], "reproduced"


def _budget_findings(seed: int, claim: SeedNumbers, got: SeedNumbers, tol: dict[str, float]) -> list[Finding]:
    """Bytes, times and steps next to their claims; a miss is a warning (hardware differs), never a failure."""
    ratio = tol["time_ratio"]
    rows = [  # check, what, claimed, reproduced, holds(claimed, reproduced), tolerance text, unit format
        ("size", "artifact bytes", claim.artifact_bytes, got.artifact_bytes,
         lambda c, r: abs(r - c) <= tol["artifact_bytes_abs"], f"±{tol['artifact_bytes_abs']:,} bytes", "{:,.0f}"),
        ("train_time", "train time", claim.train_s, got.train_s, lambda c, r: r <= c * ratio,
         f"≤ {ratio:g}× the claim", "{:.2f} s"),
        ("eval_time", "eval time", claim.eval_s, got.eval_s, lambda c, r: r <= c * ratio,
         f"≤ {ratio:g}× the claim", "{:.2f} s"),
        ("steps", "steps", claim.steps, got.steps, lambda c, r: r * ratio >= c, f"≥ 1/{ratio:g} of the claim",
         "{:,.0f}"),
    ]
    out = []
    for check, what, c, r, holds, within, fmt in rows:
        if c is None or r is None:
            missing = "the claim" if c is None else "the rerun"
            out.append(Finding(check, INFO, f"{check}.not_compared", f"seed {seed}: {what} not compared: "
                               f"{missing} does not say", seed=seed))
            continue
        ok = holds(c, r)
        text = f"seed {seed}: {what} claimed {fmt.format(c)}, reproduced {fmt.format(r)}"
        out.append(Finding(check, PASS if ok else WARN, f"{check}.reproduced" if ok else f"{check}.differs",
                           f"{text} ({'within' if ok else 'outside'} {within})", seed=seed,
                           data={"claimed": c, "reproduced": r}))
    return out


def _aggregate(pairs: list[tuple[float, float]], confidence: float) -> dict[str, Any]:
    """Means, the mean paired difference (reproduced - claimed) and its t interval at `confidence`."""
    if not pairs:
        return {"seeds": 0}
    from scipy.special import stdtrit

    diffs = [r - c for c, r in pairs]
    out: dict[str, Any] = {"seeds": len(pairs), "claimed_mean": statistics.fmean(c for c, _ in pairs),
                           "reproduced_mean": statistics.fmean(r for _, r in pairs),
                           "mean_difference": statistics.fmean(diffs), "confidence": confidence, "ci": None}
    if len(pairs) > 1:
        half = float(stdtrit(len(pairs) - 1, (1 + confidence) / 2)) * statistics.stdev(diffs) / math.sqrt(len(pairs))
        out["ci"] = [out["mean_difference"] - half, out["mean_difference"] + half]
    return out


def _aggregate_findings(pairs: list[tuple[float, float]], tol: dict[str, float]) -> list[Finding]:
    if not pairs:
        return []
    agg = _aggregate(pairs, tol["confidence"])
    level = f"{tol['confidence']:.0%}"
    interval = (f", {level} CI [{agg['ci'][0]:+z.8f}, {agg['ci'][1]:+z.8f}]" if agg["ci"]
                else " (no interval from one seed)")
    ok = abs(agg["mean_difference"]) <= tol["val_bpb_abs"] + 1e-12
    out = [Finding("statistics", PASS if ok else FAIL, "statistics.headline_reproduced" if ok
                   else "statistics.headline_not_reproduced",
                   f"mean of {len(pairs)} seed(s): claimed {agg['claimed_mean']:.8f}, reproduced "
                   f"{agg['reproduced_mean']:.8f}; mean difference {agg['mean_difference']:+z.8f} BPB{interval}; "
                   f"{'within' if ok else 'beyond'} ±{tol['val_bpb_abs']:g} BPB", data=agg)]
    if len(pairs) < 2:
        out.append(Finding("statistics", INFO, "statistics.too_few_seeds",
                           "a Welch test needs at least 2 reproduced seeds; have 1"))
        return out
    # bytes per token only scales compare's nats figure, which is not used here
    c = compare([r for _, r in pairs], [c for c, _ in pairs], bytes_per_token=1.0)
    two_sided = min(1.0, 2 * min(c.p_value, 1 - c.p_value))
    differs = two_sided < 1 - tol["confidence"]
    direction = "higher" if c.t_stat > 0 else "lower"
    out.append(Finding(
        "statistics", WARN if differs else INFO, "statistics.welch",
        f"two-sample Welch test, claimed vs reproduced seeds: t = {c.t_stat:.3f}, two-sided p = {two_sided:.4g}: "
        + (f"the reproduced seeds are systematically {direction} than claimed (at {level})" if differs
           else f"no evidence at {level} that the reproduced seeds differ from the claimed ones"),
        data={"t": c.t_stat, "p_two_sided": two_sided}))
    return out


def _significance(pairs: list[tuple[float, float]], frontier: list[float], source: str, tokenizer: str | None,
                  track: Track, rules: Rules) -> list[Finding]:
    """Do the reproduced seeds still clear the policies against the frontier? The claimed seeds' answer beside it."""
    reproduced = significance_findings([r for _, r in pairs], frontier, source, tokenizer, track, rules)
    claimed = significance_findings([c for c, _ in pairs], frontier, source, tokenizer, track, rules)
    judged = next((f.data for f in claimed if "policies" in f.data), None)
    if judged is None:  # too few seeds: the reproduced side already says so
        return reproduced
    said = ", ".join(f"'{name}' {'cleared' if ok else 'not cleared'}" for name, ok in judged["policies"].items())
    return reproduced + [Finding("significance", INFO, "significance.claimed",
                                 f"for comparison, the claimed values of the same seeds: {said} "
                                 f"(one-sided Welch p = {judged['p_value']:.4g})", (Evidence(source),), data=judged)]
