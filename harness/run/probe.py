"""Behavioural probes: the eval job run again, from the seed's own code and artifact in the same sandbox, on
validation streams the harness builds, so causality (C1) and unread targets are judged by what the job
does, not by the events it sends about itself.

Every probe stream is as long as the real one and made of its tokens (same shard names and sizes, same
path, same environment); each run is stopped once it has scored every position the comparison needs.
The first control is the evaluation itself: it kept its NLLs up to its first audited positions and the
distributions it sent there (`eval_scores.npz`, Ledger.probes_basis).
- **Canaries**: the real stream up to a position c taken from the evaluation's audited positions, there a
  random target, after it text from elsewhere. Every NLL before c must equal the evaluation's (else
  `probe.noncausal`), and the NLL at c must be -log p(canary) under the distribution the evaluation sent
  for c, which no causal job can tell from the one it is scoring now (else `probe.reads_targets`).
- **Cuts** (optional): the real stream up to a random c, then text from elsewhere: positions before c as above.
- A **second control**, the real stream with other audit positions, only when some NLL before a change
  point differs from the evaluation's by more than 1e-4 nats: where it differs from the evaluation beyond
  the GPU's noise at positions neither audits sets the noise floor (and with it the tolerance); where
  they differ at audited positions, the scores depend on being audited (`probe.audit_dependent`). A job
  whose runs agree to 1e-4 needs one probe run per change point and no more.

The secret that picks the cuts, the canary tokens and the audit seeds is drawn here and never reaches a
job; it is written into the probe record afterwards, so a reviewer can rebuild every stream.
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


@dataclass(frozen=True)
class Sampling:
    """How many change points a probe makes, each one probe run: canaries (the first needs no other run; a
    second control is added only where a run differs from the evaluation) and cuts."""
    canaries: int = 1
    cuts: int = 0


@dataclass(frozen=True)
class Stream:
    """One probe run's validation stream, as positions of the real one."""
    name: str  # canary_<k>, cut_<k>, control_b; `evaluation` for the evaluation's own scores
    index: np.ndarray  # stream[i] = real[index[i]]
    audit_seed: int
    needed: int  # the run may stop once positions 1 … needed are scored
    cut: int | None = None  # the first position that differs from the real stream
    canary: int | None = None  # the random token put as the target at `cut`


def plan(tokens: np.ndarray, secret: int, canary_at: list[int], cuts: int) -> tuple[list[Stream], Stream]:
    """The change streams for a validation stream — canaries at `canary_at` (positions where the evaluation sent
    its distribution), cuts at random positions before the last canary — and the second control."""
    rng = np.random.default_rng(secret)
    n = int(tokens.size)
    if n < 8:
        raise UsageError(f"the validation stream has {n} tokens; a probe needs at least 8")
    horizon = max(canary_at)
    cut_at = sorted(int(c) for c in rng.integers(2, horizon + 1, size=cuts))
    starts = np.flatnonzero(tokens == tokens[0])  # documents begin with the token the stream begins with
    real = np.arange(n)

    def elsewhere(c: int) -> np.ndarray:
        """Text from a random document start on (wrapping round), to fill the stream after position c."""
        j = int(rng.choice(starts))
        return np.concatenate([real[j:], real[:j]])[: n - c]

    def fresh_seed(c: int) -> int:
        """An audit seed for a stream changed at c: c not among its positions (no row is asked for there) and, if
        one of 1,000 draws has it, a position before c, where a protocol-1 client that is honest only where it
        is audited then scores differently from the evaluation (which was audited at c and not before)."""
        avoiding = None
        while avoiding is None:
            for _ in range(1000):
                seed = int(rng.integers(1 << 62))
                positions = audit_positions(seed, n)
                if c not in positions:
                    if min(positions, default=c) < c:
                        return seed
                    avoiding = seed if avoiding is None else avoiding
        return avoiding

    out = []
    for k, c in enumerate(canary_at, 1):
        others = np.flatnonzero((tokens != tokens[c]) & (tokens != tokens[0]))
        if not others.size:
            raise UsageError("the validation stream has too few distinct tokens to put a canary anywhere")
        other = int(rng.choice(others))
        index = np.concatenate([real[:c], [other], elsewhere(c + 1)])
        out.append(Stream(f"canary_{k}", index, fresh_seed(c), c, c, canary=int(tokens[other])))
    for k, c in enumerate(cut_at, 1):
        out.append(Stream(f"cut_{k}", np.concatenate([real[:c], elsewhere(c)]), fresh_seed(c), c, c))
    return out, Stream("control_b", real, int(rng.integers(1 << 62)), horizon)


@dataclass
class Ran:
    """What one probe run sent back (or, named `evaluation`, what the evaluation kept)."""
    stream: Stream
    nll: np.ndarray
    audited: set[int]
    rows: dict[int, np.ndarray]
    complete: bool  # every needed position was scored
    wall_s: float
    returncode: int

    @classmethod
    def evaluation(cls, kept: dict[str, np.ndarray], n: int, audit_seed: int) -> Ran:
        """The evaluation as the first control, from its kept scores (seedfolder.read_eval_scores)."""
        positions, nll = kept["positions"].tolist(), kept["nll"]
        stream = Stream("evaluation", np.arange(n), audit_seed, positions[-1] if positions else 0)
        return cls(stream, nll, set(kept["audited"].tolist()), {p: kept[f"row_{p}"] for p in positions},
                   not np.isnan(nll[1:]).any(), 0.0, 0)


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
    ran = []
    for stream in streams:
        records = out / seedfolder.PROBE / stream.name
        records.mkdir(parents=True)
        ledger = Ledger(view.tokens[stream.index], audit_positions(stream.audit_seed, view.tokens.size),
                        enough_at=stream.needed)
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


def differs(evaluation: Ran, ran: list[Ran]) -> float:
    """The largest difference between a change run's NLLs before its change point and the evaluation's."""
    return max((float(np.max(Differences.of(r, evaluation, r.stream.cut).diff, initial=0.0))
                for r in ran if r.complete and r.stream.cut is not None), default=0.0)


def judge(a: Ran, ran: list[Ran], eval_wall_s: float) -> tuple[list[Finding], dict[str, Any]]:
    """The probe's findings and facts from the evaluation's kept scores `a` and the probe runs."""
    b = next((r for r in ran if r.stream.name == "control_b"), None)
    changes = [r for r in ran if r.stream.cut is not None]
    cost = sum(r.wall_s for r in ran)
    facts: dict[str, Any] = {"runs": len(ran), "probe_wall_s": round(cost, 3), "eval_wall_s": round(eval_wall_s, 3)}
    out = [Finding("probe", WARN, "probe.incomplete", f"{r.stream.name}: the job stopped (exit {r.returncode}) "
                   f"before scoring positions 1 … {r.stream.needed}; nothing of it is compared")
           for r in ran if not r.complete]
    spent = f"{len(ran)} probe run{'s' if len(ran) != 1 else ''} took {cost:.1f} s, the evaluation {eval_wall_s:.1f} s"
    dependent = []
    if b is None:
        tol = MIN_TOLERANCE
        facts.update(noise_floor=None, tolerance=tol)
        out.append(Finding("probe", INFO, "probe.noise_floor", f"every probe run scored the positions before its "
                           f"change point as the evaluation did, within {differs(a, changes):.3g} nats (≤ {tol:.3g}): "
                           f"no second control was needed; {spent}", data=facts))
    elif not b.complete:
        return out + [Finding("probe", WARN, "probe.unjudged", "the second control run did not finish: the probe "
                              "judged nothing")], facts
    else:
        controls = Differences.of(a, b, b.stream.needed + 1)
        floor = controls.largest_unaudited
        tol = _tolerance(floor)
        facts.update(noise_floor=floor, tolerance=tol)
        if floor > MAX_NOISE_FLOOR:
            return out + [Finding("probe", WARN, "probe.unjudged", f"two runs of the same stream differ by up to "
                                  f"{floor:.3g} nats where neither audits: too noisy to compare")], facts
        out.append(Finding("probe", INFO, "probe.noise_floor", f"a probe run differed from the evaluation before its "
                           f"change point, so the real stream was run again: the two differ by at most {floor:.3g} "
                           f"nats where neither audits (positions 1 … {b.stream.needed}); differences above {tol:.3g} "
                           f"count; {spent}", data=facts))
        dependent.append((b, a, controls.over(tol)[1]))
    noncausal, canaries = [], []
    for r in changes:
        if not r.complete:
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
            out.append(Finding("probe", FAIL, "probe.audit_dependent", f"{x.stream.name} and the {y.stream.name} "
                               f"score {positions.size} positions differently where one of them sends the distribution "
                               f"(position {p}: {y.nll[p]:.6g} vs {x.nll[p]:.6g}): the scores depend on being audited"))
    cuts = sorted(r.stream.cut for r in changes if r.complete)
    if noncausal:
        out.append(Finding("probe", FAIL, "probe.noncausal", "C1: NLLs before the point where the stream changed "
                           "are not the evaluation's, so they depend on later tokens: " + "; ".join(noncausal),
                           data={"runs": noncausal}))
    elif cuts:
        out.append(Finding("probe", PASS, "probe.causal", f"C1: every NLL before {len(cuts)} change points "
                           f"({', '.join(map(str, cuts))}) equals the evaluation's within {tol:.3g} nats"))
    bad = [text for ok, text in canaries if ok is False]
    unjudged = [text for ok, text in canaries if ok is None]
    if bad:
        out.append(Finding("probe", FAIL, "probe.reads_targets", "canary targets are not scored by the distribution "
                           "the job sent for the same context: " + "; ".join(bad)))
    elif canaries and not unjudged:
        out.append(Finding("probe", PASS, "probe.targets_unread", f"{len(canaries)} canary targets scored as the "
                           f"evaluation's distribution predicts: " + "; ".join(text for _, text in canaries)))
    if unjudged:
        out.append(Finding("probe", WARN, "probe.canary_unjudged", "; ".join(unjudged)))
    return out, facts


def _canary(r: Ran, a: Ran, tol: float) -> tuple[bool | None, str]:
    """(judged fine?, text) for the canary at r's cut: its NLL against the evaluation's distribution there."""
    c = r.stream.cut
    row = a.rows.get(c)
    if row is None:
        return None, f"{r.stream.name}: the evaluation sent no distribution at position {c}, so its canary is not judged"
    expected = -float(row[r.stream.canary]) if r.stream.canary < row.size else float("inf")
    got = float(r.nll[c])
    ok = abs(got - expected) <= max(tol, RELATIVE_TOLERANCE * max(1.0, abs(expected)))
    return ok, f"{r.stream.name} at {c}: NLL {got:.6g}, expected {expected:.6g}"


def probe_seed(out: Path, backend: Backend, sampling: Sampling = Sampling(), secret: int | None = None,
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
    kept = seedfolder.read_eval_scores(out)
    if kept is None:
        raise UsageError(f"{out}: no {seedfolder.EVAL_SCORES}, the evaluation's scores a probe compares against "
                         "(the seed was evaluated by an older pgolf); run it again with `pgolf rerun --probe`")
    try:
        view = View.read(path)
    except (ShardError, OSError, ValueError) as exc:
        raise UsageError(f"{path}: cannot read the validation view ({exc})") from None
    a = Ran.evaluation(kept, view.tokens.size, evaluation.get("audit_seed", 0))
    if not a.rows or not a.complete:
        findings = [Finding("probe", WARN, "probe.unjudged", "the evaluation sent no distribution at an audited "
                            "position after its first two, or left a position before it unscored: no canary to judge")]
        _write(out, findings, {}, None)
        return findings
    if sampling.canaries > len(a.rows):
        raise UsageError(f"--canaries {sampling.canaries}: the evaluation kept its distributions at {len(a.rows)} "
                         "positions, so at most that many canaries")
    secret = secrets.randbits(63) if secret is None else secret
    changes, control_b = plan(view.tokens, secret, sorted(a.rows)[:sampling.canaries], sampling.cuts)
    started = time.monotonic()
    ran = run_streams(out, train, evaluation, view, changes, backend, echo)
    if differs(a, ran) > MIN_TOLERANCE:  # noise or a cheat: a second control tells which
        ran += run_streams(out, train, evaluation, view, [control_b], backend, echo)
    findings, facts = judge(a, ran, evaluation["process"]["wall_s"])
    facts["harness_s"] = round(time.monotonic() - started, 3)
    _write(out, findings, facts, {"secret": secret, "canaries": sampling.canaries, "cuts": sampling.cuts,
                                  "streams": [{"name": r.stream.name, "audit_seed": r.stream.audit_seed,
                                               "cut": r.stream.cut, "canary": r.stream.canary,
                                               "needed": r.stream.needed} for r in ran]})
    return findings


def _write(out: Path, findings: list[Finding], facts: dict[str, Any], plan_facts: dict[str, Any] | None) -> None:
    seedfolder.write_probe(out, {"findings": [f.to_dict() for f in findings], "facts": facts, "plan": plan_facts})


def probe_and_verify(out: Path, rules, backend: Backend, sampling: Sampling = Sampling(), secret: int | None = None,
                     echo: bool = True):
    """Probe a finished seed and write its verdict again, now with the probe's findings."""
    from harness.run.judge import verify

    probe_seed(out, backend.prepare(echo), sampling, secret, echo)
    return verify(out, rules)
