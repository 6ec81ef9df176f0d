"""Behavioural probes: the eval job run again, from the seed's own code and artifact in the same sandbox, on
validation streams the harness builds, so causality (C1) and unread targets are judged by what the job
does, not by the events it sends about itself.

Every probe stream is as long as the real one and made of its tokens (same shard names and sizes, same
path, same environment); each run is stopped once it has scored every position the comparison needs.
- Two **controls**: the real stream, with different audit seeds. Where they differ beyond the GPU's
  noise at positions neither audits sets the noise floor; where they differ at audited positions, the
  scores depend on being audited (`probe.audit_dependent`).
- **Canaries**: the real stream up to a position c taken from control A's audit positions, there a
  random target, after it text from elsewhere. Every NLL before c must equal control A's (else
  `probe.noncausal`), and the NLL at c must be -log p(canary) under the distribution control A sent for
  c, which no causal job can tell from the one it is scoring now (else `probe.reads_targets`).
- **Cuts**: the real stream up to a random c, then text from elsewhere: positions before c as above.

The secret that picks c, the canary tokens and the audit seeds is drawn here and never reaches a job; it
is written into the probe record afterwards, so a reviewer can rebuild every stream.
"""
from __future__ import annotations

import os
import secrets
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from harness.client.pgolf_events import audit_positions
from harness.data.shards import ShardError, read_header, read_tokens, val_byte_sidecars, val_shards, write_shard
from harness.findings import FAIL, INFO, PASS, WARN, Finding, UsageError
from harness.run import seedfolder
from harness.run.backend import Backend
from harness.run.ledger import Ledger
from harness.run.phases import PhaseSpec, run_job, tokenizer_in

NOISE_MULTIPLE, MIN_TOLERANCE = 3.0, 1e-4  # a difference counts above max(3 × noise floor, 1e-4 nats)
RELATIVE_TOLERANCE = 1e-3  # a canary against a distribution the job sent: float32 rows, as the ledger allows
MAX_NOISE_FLOOR = 0.05  # nats: two controls further apart than this leave nothing to compare
CANARIES, CUTS = 1, 0  # default: three runs (two controls, one canary, which is a change point too)


@dataclass(frozen=True)
class Stream:
    """One probe run's validation stream, as positions of the real one."""
    name: str  # control_a, control_b, canary_<k>, cut_<k>
    index: np.ndarray  # stream[i] = real[index[i]]
    audit_seed: int
    needed: int  # the run may stop once positions 1 … needed are scored
    cut: int | None = None  # the first position that differs from the real stream
    canary: int | None = None  # the random token put as the target at `cut`


def plan(tokens: np.ndarray, secret: int, canaries: int, cuts: int) -> list[Stream]:
    """The probe streams for a validation stream: controls, canaries at control A's first audit positions,
    cuts at random positions before the last canary."""
    rng = np.random.default_rng(secret)
    n = int(tokens.size)
    if n < 8:
        raise UsageError(f"the validation stream has {n} tokens; a probe needs at least 8")
    seed_a = int(rng.integers(1 << 62))
    canary_at = [p for p in audit_positions(seed_a, n) if p >= 2][:canaries]
    horizon = max(canary_at, default=n - 1)
    cut_at = sorted(int(c) for c in rng.integers(2, horizon + 1, size=cuts))
    starts = np.flatnonzero(tokens == tokens[0])  # documents begin with the token the stream begins with
    real = np.arange(n)

    def elsewhere(c: int) -> np.ndarray:
        """Text from a random document start on (wrapping round), to fill the stream after position c."""
        j = int(rng.choice(starts))
        return np.concatenate([real[j:], real[:j]])[: n - c]

    def fresh_seed(avoid: int) -> int:
        while True:
            seed = int(rng.integers(1 << 62))
            if avoid not in audit_positions(seed, n):
                return seed

    out = [Stream("control_a", real, seed_a, horizon), Stream("control_b", real, int(rng.integers(1 << 62)), horizon)]
    for k, c in enumerate(canary_at, 1):
        others = np.flatnonzero((tokens != tokens[c]) & (tokens != tokens[0]))
        if not others.size:
            raise UsageError("the validation stream has too few distinct tokens to put a canary anywhere")
        other = int(rng.choice(others))
        index = np.concatenate([real[:c], [other], elsewhere(c + 1)])
        out.append(Stream(f"canary_{k}", index, fresh_seed(c), c, c, canary=int(tokens[other])))
    for k, c in enumerate(cut_at, 1):
        out.append(Stream(f"cut_{k}", np.concatenate([real[:c], elsewhere(c)]), fresh_seed(c), c, c))
    return out


@dataclass
class Ran:
    """What one probe run sent back."""
    stream: Stream
    nll: np.ndarray
    audited: set[int]
    rows: dict[int, np.ndarray]
    complete: bool  # every needed position was scored
    wall_s: float
    returncode: int


@dataclass(frozen=True)
class View:
    """The seed's validation view as read once: its shard files and their values in stream order (tokens, and
    the byte sidecars when it has them), which every probe stream is rearranged from."""
    path: Path
    files: tuple[tuple[list[Path], np.ndarray], ...]  # (shards, their tokens), then (sidecars, their values)

    @property
    def tokens(self) -> np.ndarray:
        return self.files[0][1]

    @classmethod
    def read(cls, path: Path) -> View:
        shards, sidecars = val_shards(path), val_byte_sidecars(path)
        return cls(path, ((shards, read_tokens(shards)),) + (((sidecars, read_tokens(sidecars)),) if sidecars else ()))


@contextmanager
def _stream_in_place(view: View, stream: Stream) -> Iterator[None]:
    """Put the probe stream where the real view was (same folder, file names and sizes, same tokenizer), so the
    job sees the path, files and environment of an evaluation; the real view is back afterwards, whatever happens."""
    real = view.path.with_name(view.path.name + ".scored")
    os.rename(view.path, real)
    try:
        view.path.mkdir()
        for files, values in view.files:
            sizes = [read_header(real / p.name) for p in files]
            for p, part in zip(files, np.split(values[stream.index], np.cumsum(sizes)[:-1])):
                write_shard(view.path / p.name, part)
        for p in real.iterdir():
            if not (view.path / p.name).exists():
                os.link(p, view.path / p.name)  # the tokenizer
        yield
    finally:
        shutil.rmtree(view.path, ignore_errors=True)
        os.rename(real, view.path)


def run_streams(out: Path, train: dict[str, Any], evaluation: dict[str, Any], view: View, streams: list[Stream],
                backend: Backend, echo: bool) -> list[Ran]:
    """Each stream's eval job, in the seed's own sandbox and code, its log and events under probe/<name>/."""
    tokenizer = tokenizer_in(view.path)
    train_view = out / seedfolder.DATA / "train"
    hide = ((train_view, tuple(sorted(p.name for p in train_view.glob("fineweb_*")))),) if train_view.is_dir() else ()
    phase = PhaseSpec(out, view.path, seedfolder.artifact_of(out), evaluation["limit_s"], echo=echo, hide=hide,
                      backend=backend)
    keep = tuple(s.cut for s in streams if s.canary is not None)  # control A's rows there judge the canaries
    ran = []
    for stream in streams:
        records = out / seedfolder.PROBE / stream.name
        records.mkdir(parents=True)
        ledger = Ledger(view.tokens[stream.index], audit_positions(stream.audit_seed, view.tokens.size),
                        enough_at=stream.needed, keep_rows=keep if stream.name == "control_a" else ())
        with _stream_in_place(view, stream):
            process, _ = run_job(phase, "eval", train["seed"], train["nproc"], tokenizer.name, ledger, records,
                                 stream.audit_seed, stop_when_enough=True)
        ran.append(Ran(stream, ledger.nll[: stream.needed + 1].copy(), set(ledger.audits), ledger.rows,
                       ledger.enough.is_set(), process.wall_s, process.returncode))
    return ran


def _tolerance(floor: float) -> float:
    return max(NOISE_MULTIPLE * floor, MIN_TOLERANCE)


@dataclass(frozen=True)
class Differences:
    """Two runs' NLLs at positions 1 … end-1: how far apart, and where either run sent the distribution."""
    positions: np.ndarray
    diff: np.ndarray
    audited: np.ndarray  # bool per position

    @classmethod
    def of(cls, x: Ran, y: Ran, end: int) -> Differences:
        positions = np.arange(1, end)
        return cls(positions, np.abs(x.nll[1:end].astype(np.float64) - y.nll[1:end]),
                   np.isin(positions, list(x.audited | y.audited)))

    @property
    def largest_unaudited(self) -> float:
        return float(np.max(self.diff[~self.audited], initial=0.0))

    def over(self, tol: float) -> tuple[np.ndarray, np.ndarray]:
        """Positions that differ by more than `tol`: (where neither run audited, where one did)."""
        over = self.diff > tol
        return self.positions[over & ~self.audited], self.positions[over & self.audited]


def judge(ran: list[Ran], eval_wall_s: float) -> tuple[list[Finding], dict[str, Any]]:
    """The probe's findings and facts from its runs."""
    by_name = {r.stream.name: r for r in ran}
    a, b = by_name["control_a"], by_name["control_b"]
    cost = sum(r.wall_s for r in ran)
    facts: dict[str, Any] = {"runs": len(ran), "probe_wall_s": round(cost, 3), "eval_wall_s": round(eval_wall_s, 3)}
    out = [Finding("probe", WARN, "probe.incomplete", f"{r.stream.name}: the job stopped (exit {r.returncode}) "
                   f"before scoring positions 1 … {r.stream.needed}; nothing of it is compared")
           for r in ran if not r.complete]
    if not (a.complete and b.complete):
        return out + [Finding("probe", WARN, "probe.unjudged", "the control runs did not finish: the probe "
                              "judged nothing")], facts
    controls = Differences.of(a, b, a.stream.needed + 1)
    floor = controls.largest_unaudited
    tol = _tolerance(floor)
    facts.update(noise_floor=floor, tolerance=tol)
    if floor > MAX_NOISE_FLOOR:
        return out + [Finding("probe", WARN, "probe.unjudged", f"two runs of the same stream differ by up to "
                              f"{floor:.3g} nats where neither audits: too noisy to compare")], facts
    out.append(Finding("probe", INFO, "probe.noise_floor", f"two runs of the real stream differ by at most "
                       f"{floor:.3g} nats (positions 1 … {a.stream.needed}); differences above {tol:.3g} count; "
                       f"{len(ran)} probe runs took {cost:.1f} s, the evaluation {eval_wall_s:.1f} s", data=facts))
    dependent = [(a, b, controls.over(tol)[1])]
    noncausal, canaries = [], []
    for r in ran:
        if r.stream.cut is None or not r.complete:
            continue
        changed, audited = Differences.of(r, a, r.stream.cut).over(tol)
        dependent.append((r, a, audited))
        if changed.size:
            worst = changed[np.argmax(np.abs(r.nll[changed].astype(np.float64) - a.nll[changed]))]
            noncausal.append(f"{r.stream.name} (cut at {r.stream.cut}): {changed.size} earlier positions changed, "
                             f"first {changed[0]}, most at {worst} ({a.nll[worst]:.6g} → {r.nll[worst]:.6g})")
        if r.stream.canary is not None:
            canaries.append(_canary(r, a, tol))
    for x, y, positions in dependent:
        if positions.size:
            p = positions[0]
            out.append(Finding("probe", FAIL, "probe.audit_dependent", f"{x.stream.name} and {y.stream.name} score "
                               f"{positions.size} positions differently where one of them sends the distribution "
                               f"(position {p}: {y.nll[p]:.6g} vs {x.nll[p]:.6g}): the scores depend on being audited"))
    cuts = sorted(r.stream.cut for r in ran if r.stream.cut is not None and r.complete)
    if noncausal:
        out.append(Finding("probe", FAIL, "probe.noncausal", "C1: NLLs before the point where the stream changed "
                           "are not the control's, so they depend on later tokens: " + "; ".join(noncausal),
                           data={"runs": noncausal}))
    elif cuts:
        out.append(Finding("probe", PASS, "probe.causal", f"C1: every NLL before {len(cuts)} change points "
                           f"({', '.join(map(str, cuts))}) equals the control's within {tol:.3g} nats"))
    bad = [text for ok, text in canaries if ok is False]
    unjudged = [text for ok, text in canaries if ok is None]
    if bad:
        out.append(Finding("probe", FAIL, "probe.reads_targets", "canary targets are not scored by the distribution "
                           "the job sent for the same context: " + "; ".join(bad)))
    elif canaries and not unjudged:
        out.append(Finding("probe", PASS, "probe.targets_unread", f"{len(canaries)} canary targets scored as the "
                           f"control's distribution predicts: " + "; ".join(text for _, text in canaries)))
    if unjudged:
        out.append(Finding("probe", WARN, "probe.canary_unjudged", "; ".join(unjudged)))
    return out, facts


def _canary(r: Ran, a: Ran, tol: float) -> tuple[bool | None, str]:
    """(judged fine?, text) for the canary at r's cut: its NLL against control A's distribution at that position."""
    c = r.stream.cut
    row = a.rows.get(c)
    if row is None:
        return None, f"{r.stream.name}: control_a sent no distribution at position {c}, so its canary is not judged"
    expected = -float(row[r.stream.canary]) if r.stream.canary < row.size else float("inf")
    got = float(r.nll[c])
    ok = abs(got - expected) <= max(tol, RELATIVE_TOLERANCE * max(1.0, abs(expected)))
    return ok, f"{r.stream.name} at {c}: NLL {got:.6g}, expected {expected:.6g}"


def probe_seed(out: Path, backend: Backend, canaries: int = CANARIES, cuts: int = CUTS, secret: int | None = None,
               echo: bool = True) -> list[Finding]:
    """Probe one finished seed; write probe.json (findings, facts, the secret) and return the findings."""
    train, evaluation = seedfolder.read_record(out, "train"), seedfolder.read_record(out, "eval")
    if train is None or evaluation is None:
        raise UsageError(f"{out}: no train and eval phase records; probe a seed that `pgolf run` finished")
    if (out / seedfolder.PROBE).exists():
        raise UsageError(f"{out / seedfolder.PROBE} already exists; pgolf never overwrites a probe")
    if evaluation["skipped"] or not seedfolder.phase_succeeded(evaluation, out):
        findings = [Finding("probe", WARN, "probe.unjudged", "the eval phase did not succeed: nothing to probe")]
        _write(out, findings, {}, None)
        return findings
    path = out / seedfolder.DATA / "val"
    if not path.is_dir():
        raise UsageError(f"{out}: no data/val view; `pgolf probe` reruns the eval job of a seed that `pgolf run` "
                         "or `pgolf rerun` wrote (a compose run's phases read their views from mounts)")
    if "limit_s" not in evaluation:
        raise UsageError(f"{seedfolder.record_path(out, 'eval')}: no limit_s; probe a seed that `pgolf run` finished")
    try:
        view = View.read(path)
    except (ShardError, OSError, ValueError) as exc:
        raise UsageError(f"{path}: cannot read the validation view ({exc})") from None
    secret = secrets.randbits(63) if secret is None else secret
    streams = plan(view.tokens, secret, canaries, cuts)
    started = time.monotonic()
    ran = run_streams(out, train, evaluation, view, streams, backend, echo)
    findings, facts = judge(ran, evaluation["process"]["wall_s"])
    facts["harness_s"] = round(time.monotonic() - started, 3)
    _write(out, findings, facts, {"secret": secret, "canaries": canaries, "cuts": cuts,
                                  "streams": [{"name": s.name, "audit_seed": s.audit_seed, "cut": s.cut,
                                               "canary": s.canary, "needed": s.needed} for s in streams]})
    return findings


def _write(out: Path, findings: list[Finding], facts: dict[str, Any], plan_facts: dict[str, Any] | None) -> None:
    seedfolder.write_probe(out, {"findings": [f.to_dict() for f in findings], "facts": facts, "plan": plan_facts})


def probe_and_verify(out: Path, rules, backend: Backend, canaries: int = CANARIES, cuts: int = CUTS, secret: int | None = None,
                     echo: bool = True):
    """Probe a finished seed and write its verdict again, now with the probe's findings."""
    from harness.run.judge import verify

    probe_seed(out, backend.prepare(echo), canaries, cuts, secret, echo)
    return verify(out, rules)
