"""The score ledger: does the evaluation respect C2, C3 and C4 (rules.md §2.1)?

Fed with what every rank reports over the event channel, each frame with the
time it was sent: `score` ranges with their NLLs, `update` declarations made
before each state change, and `audit` distributions at seeded positions. Ranks'
connections are read in no particular order, so score-before-update is judged
at the end on send times, not on arrival. Per validation position it keeps a
count, the NLL, when and by which rank it was first scored (15 bytes: 40M
positions cost 600 MB), so every check is a numpy slice, not a Python loop.

An update before scoring is told apart in two kinds: fitting on a window and
then scoring it (SLOT/ETLB style: the same rank scores the range's unscored
positions, and nothing past its end, before its next update), and any other
update on positions not yet scored (pre-quantization TTT and the like).
"""
from __future__ import annotations

import math
import secrets
import threading
from dataclasses import dataclass, field

import numpy as np

from harness.findings import FAIL, INFO, PASS, WARN, Finding

EXAMPLES = 5  # violations quoted per kind; the rest are counted
AUDITS = 64  # distributions asked for over a whole stream (protocol 2: at random, after the scores arrived)
KEPT_FOR_PROBES = 4  # the evaluation's first audited positions kept for `pgolf probe`: at most this many canaries


@dataclass
class _Kind:
    count: int = 0
    examples: list[str] = field(default_factory=list)


class Ledger:
    """Positions 1 … n_tokens-1 of the validation stream are the targets; 0 (the first BOS) is not."""

    def __init__(self, tokens: np.ndarray, audit_positions: list[int], tolerance: float = 1e-3,
                 enough_at: int | None = None, keep_rows: bool = False):
        """`audit_positions`: those a protocol-1 client foresees from PGOLF_AUDIT_SEED; `enough_at`: set `enough`
        once every position 1 … enough_at is scored (a probe run needs no more); `keep_rows`: keep the whole
        distribution sent for each position the harness audits (the evaluation's, for `probes_basis`)."""
        self.tokens = np.asarray(tokens)
        self.n = int(self.tokens.size)
        self.count = np.zeros(self.n, dtype=np.uint8)
        self.nll = np.full(self.n, np.nan, dtype=np.float32)
        self.scored_at = np.full(self.n, np.inf)  # send time of the first score of each position
        self.scored_by = np.zeros(self.n, dtype=np.uint16)  # rank that first scored each position
        self.foreseen = set(audit_positions)  # protocol 1
        self.asked: set[int] = set()  # protocol 2: chosen as the scores arrive, by a generator no job can seed
        self.protocols: set[int] = set()
        self._pick = np.random.default_rng(secrets.randbits(128))
        self.audits: dict[int, tuple[float, float]] = {}  # position -> (logsumexp, -logprob[target])
        self.tolerance = tolerance
        self.updates: list[tuple[float, int, int, int]] = []  # (sent, start, end, rank)
        self._judged = False
        self.problems: dict[str, _Kind] = {}
        self.keep_rows, self.rows = keep_rows, {}
        self.enough = threading.Event()
        self._enough_at = self.n - 1 if enough_at is None else min(enough_at, self.n - 1)
        self._unscored = self._enough_at  # positions 1 … enough_at not scored yet

    def _problem(self, kind: str, text: str) -> None:
        entry = self.problems.setdefault(kind, _Kind())
        entry.count += 1
        if len(entry.examples) < EXAMPLES:
            entry.examples.append(text)

    def score(self, start: int, nlls: np.ndarray, rank: int, sent: float) -> None:
        end = start + nlls.size
        lo, hi = max(start, 1), min(end, self.n)
        if (lo, hi) != (start, end):
            self._problem("out_of_range", f"rank {rank} scored [{start}, {end}); targets are [1, {self.n})")
            if hi <= lo:
                return
            nlls, start, end = nlls[lo - start: hi - start], lo, hi
        if not np.isfinite(nlls).all():
            bad = start + int(np.flatnonzero(~np.isfinite(nlls))[0])
            self._problem("not_finite", f"rank {rank} sent a non-finite NLL at position {bad}")
        already = np.flatnonzero(self.count[start:end])
        if already.size:
            self._problem("double_scored", f"rank {rank} scored positions {start + int(already[0])}… again "
                                           f"({already.size} of [{start}, {end}))")
        first = self.count[start:end] == 0
        self._unscored -= int(np.count_nonzero(first[:max(0, self._enough_at + 1 - start)]))
        if self._unscored <= 0:
            self.enough.set()
        self.scored_by[start:end][first] = rank
        self.count[start:end] += 1
        self.nll[start:end] = nlls
        np.minimum(self.scored_at[start:end], sent, out=self.scored_at[start:end])

    def client_protocol(self, version: int) -> None:
        self.protocols.add(version)

    def ask_audits(self, start: int, end: int) -> list[int]:
        """Positions of a scores frame just received whose distribution the job must send now: each target with
        probability AUDITS / targets, so about AUDITS over the stream and none foreseeable."""
        lo, hi = max(start, 1), min(end, self.n)
        if hi <= lo:
            return []
        count = int(self._pick.binomial(hi - lo, min(1.0, AUDITS / max(self.n - 1, 1))))
        picked = {lo + int(i) for i in self._pick.choice(hi - lo, size=count, replace=False)} if count else set()
        self.asked |= picked
        return sorted(picked)

    def update(self, start: int, end: int, rank: int, sent: float) -> None:
        if start < 0 or end > self.n or start >= end:
            self._problem("bad_update", f"rank {rank} declared update [{start}, {end}) outside [0, {self.n})")
            return
        self.updates.append((sent, start, end, rank))

    def _judge_updates(self) -> None:
        """C3 on send times: each update's positions were scored in frames sent no later than it."""
        if self._judged:
            return
        self._judged = True
        last_end = 0
        updates = sorted(self.updates)
        for i, (sent, start, end, rank) in enumerate(updates):
            lo = max(start, 1)
            late = np.flatnonzero(self.scored_at[lo:end] > sent)
            if late.size:
                next_update = next((u[0] for u in updates[i + 1:] if u[3] == rank), np.inf)
                positions = lo + late
                beyond = end < self.n and self.scored_by[end] == rank and sent < self.scored_at[end] < next_update
                if ((self.scored_by[positions] == rank).all() and (self.scored_at[positions] < next_update).all()
                        and not beyond):
                    self._problem("fit_on_scored_window",
                                  f"rank {rank} declared an update on [{start}, {end}) and then scored its "
                                  f"{late.size} unscored positions, and nothing beyond, with the updated state "
                                  "(SLOT-style fitting on the window being scored)")
                else:
                    self._problem("update_before_score",
                                  f"rank {rank} declared an update on [{start}, {end}) while {late.size} of its "
                                  f"positions were not yet scored (first: {lo + int(late[0])})")
            if start < last_end < end:
                self._problem("update_order", f"rank {rank} declared [{start}, {end}) overlapping the previous "
                                              f"update, which ended at {last_end}")
            last_end = max(last_end, end)

    def audit(self, position: int, logprobs: np.ndarray, rank: int) -> None:
        if not 1 <= position < self.n:
            self._problem("out_of_range", f"rank {rank} audited position {position} outside [1, {self.n})")
            return
        top = float(np.max(logprobs))
        lse = top + math.log(float(np.sum(np.exp(logprobs.astype(np.float64) - top))))
        target = int(self.tokens[position])
        picked = -float(logprobs[target]) if target < logprobs.size else math.inf
        self.audits[position] = (lse, picked)
        if self.keep_rows and (position in self.asked or position in self.foreseen):  # never more than asked for
            self.rows[position] = np.array(logprobs, dtype=np.float32)

    def probes_basis(self) -> dict[str, np.ndarray]:
        """What `pgolf probe` compares its runs against, so that the evaluation itself is the first control: its
        first KEPT_FOR_PROBES audited positions from 2 on (where canaries may go), the distributions it sent
        there, its NLLs up to the last of them and which of those positions it was audited at."""
        kept = sorted(p for p in self.rows if p >= 2)[:KEPT_FOR_PROBES]
        horizon = kept[-1] if kept else 0
        return {"positions": np.array(kept, dtype=np.int64), "nll": self.nll[:horizon + 1].copy(),
                "audited": np.array(sorted(p for p in self.audits if p <= horizon), dtype=np.int64),
                **{f"row_{p}": self.rows[p] for p in kept}}

    def findings(self) -> list[Finding]:
        """C4 coverage, C3 ordering and C2 normalisation, as findings of check `ledger`."""
        self._judge_updates()
        out: list[Finding] = []
        counts = self.count[1:]
        missing = int(np.count_nonzero(counts == 0))
        twice = int(np.count_nonzero(counts > 1))
        for kind, entry in self.problems.items():
            status = WARN if kind == "update_order" else FAIL
            out.append(Finding("ledger", status, f"ledger.{kind}", f"{entry.count} × {entry.examples[0]}",
                               data={"count": entry.count, "examples": entry.examples}))
        if missing:
            first = 1 + int(np.flatnonzero(counts == 0)[0])
            out.append(Finding("ledger", FAIL, "ledger.missing",
                               f"C4: {missing:,} of {self.n - 1:,} target positions were never scored "
                               f"(first: {first})", data={"missing": missing}))
        if not missing and not twice:
            out.append(Finding("ledger", PASS, "ledger.single_pass",
                               f"C4: each of the {self.n - 1:,} target positions was scored exactly once"))
        if self.updates and not {"update_before_score", "fit_on_scored_window"} & self.problems.keys():
            out.append(Finding("ledger", PASS, "ledger.score_before_update",
                               f"C3: all {len(self.updates)} update declarations covered already-scored positions"))
        out += self._audit_findings()
        return out

    def _audit_findings(self) -> list[Finding]:
        wanted = self.asked | (self.foreseen if 1 in self.protocols or not self.protocols else set())
        absent = sorted(wanted - set(self.audits))
        out: list[Finding] = []
        if 1 in self.protocols:
            out.append(Finding("ledger", INFO, "ledger.audits_foreseeable",
                               "C2: the job's client speaks protocol 1, so it knew which positions would be audited "
                               "before scoring them (PGOLF_AUDIT_SEED); protocol 2 (harness/client/pgolf_events.py) "
                               "asks for them after the scores arrive, and `pgolf probe` tells honesty only there"))
        if absent:
            out.append(Finding("ledger", WARN, "ledger.audit_missing",
                               f"C2 not verified at {len(absent)} of {len(wanted)} audit positions "
                               f"(no distribution sent; first: {absent[0]})"))
        unnormalised = [(p, lse) for p, (lse, _) in sorted(self.audits.items()) if abs(lse) > self.tolerance]
        if unnormalised:
            p, lse = unnormalised[0]
            out.append(Finding("ledger", FAIL, "ledger.unnormalized",
                               f"C2: at {len(unnormalised)} audited positions the distribution does not sum to 1 "
                               f"(position {p}: logsumexp = {lse:.4g}, sum = {math.exp(min(lse, 700)):.4g})"))
        disagree = [(p, picked, float(self.nll[p])) for p, (_, picked) in sorted(self.audits.items())
                    if not abs(picked - float(self.nll[p])) <= self.tolerance * max(1.0, abs(picked))]
        if disagree:
            p, picked, reported = disagree[0]
            out.append(Finding("ledger", FAIL, "ledger.audit_mismatch",
                               f"C2: at {len(disagree)} audited positions the reported NLL is not -log p(target) of "
                               f"the audited distribution (position {p}: {reported:.6g} vs {picked:.6g})"))
        if self.audits and not unnormalised and not disagree:
            out.append(Finding("ledger", PASS, "ledger.normalized",
                               f"C2: {len(self.audits)} audited distributions sum to 1 and match the reported NLLs"))
        return out
