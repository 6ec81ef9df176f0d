"""Is the new mean BPB better than the frontier's, and by enough?

Both policies in rules.yaml are judged from one one-sided Welch two-sample
t-test on per-seed val_bpb (new < frontier), the test the leaderboard rebuild
used. "0.005 nats" is per token: in BPB it is 0.005 / (ln 2 × bytes per token),
which depends on the tokenizer, so the threshold is reported in both units.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path

from harness.check.evidence import read_folder, usable_folder
from harness.findings import FAIL, INFO, PASS, WARN, Evidence, Finding, UsageError
from harness.rules import Rules, Track


@dataclass(frozen=True)
class Comparison:
    p_value: float
    t_stat: float
    delta_bpb: float  # frontier mean - new mean (positive = better)
    delta_nats: float  # per token
    threshold_bpb: float  # the 0.005-nat margin expressed in BPB for this tokenizer


def compare(new: list[float], frontier: list[float], bytes_per_token: float) -> Comparison:
    """One-sided Welch test, H1: mean(new) < mean(frontier).

    Written out with Welch-Satterthwaite degrees of freedom and the Student t CDF from
    scipy.special, because importing scipy.stats costs about a second of start-up.
    """
    from scipy.special import stdtr  # imported here: only --against needs it

    var_new = statistics.variance(new) / len(new)
    var_old = statistics.variance(frontier) / len(frontier)
    spread = math.sqrt(var_new + var_old)
    delta = statistics.fmean(frontier) - statistics.fmean(new)
    if spread == 0:  # identical seeds on each side: only the sign of the difference is left
        t = -math.copysign(math.inf, delta) if delta else 0.0
        p = 0.0 if delta > 0 else 1.0 if delta < 0 else 0.5
    else:
        t = -delta / spread
        df = (var_new + var_old) ** 2 / (var_new**2 / (len(new) - 1) + var_old**2 / (len(frontier) - 1))
        p = float(stdtr(df, t))
    return Comparison(p, t, delta, delta * math.log(2) * bytes_per_token, 0.005 / (math.log(2) * bytes_per_token))


def significance_findings(new: list[float], frontier: list[float] | None, frontier_source: str,
                          tokenizer: str | None, track: Track, rules: Rules) -> list[Finding]:
    if frontier is None:
        return [Finding("significance", INFO, "significance.not_assessed",
                        "no frontier given (--against DIR or --against BPB,BPB,...): significance not assessed")]
    if len(new) < 2 or len(frontier) < 2:
        return [Finding("significance", WARN, "significance.too_few_seeds",
                        f"a Welch test needs at least 2 seeds on each side; have {len(new)} new and "
                        f"{len(frontier)} frontier", (Evidence(frontier_source),))]
    if tokenizer is None:
        tokenizer = "sp8192"
        note = " (tokenizer unknown: bytes/token of sp8192 assumed)"
    else:
        note = ""
    bpt = rules.tokenizers[tokenizer]["bytes_per_token"]
    c = compare(new, frontier, bpt)
    data = {"p_value": c.p_value, "t": c.t_stat, "delta_bpb": c.delta_bpb, "delta_nats_per_token": c.delta_nats,
            "threshold_0005_nats_in_bpb": c.threshold_bpb, "tokenizer": tokenizer,
            "new": new, "frontier": frontier, "policies": {}}
    default = rules.raw["significance"]["default_policy"]
    out: list[Finding] = []
    for name, policy in rules.policies.items():
        ok = c.p_value < policy["alpha"] and c.delta_nats >= policy["min_delta_nats"]
        data["policies"][name] = ok
        if name == default:
            status = PASS if ok else (FAIL if track.record else WARN)
        else:
            status = INFO
        verdict = "clears" if ok else "does not clear"
        out.append(Finding(
            "significance", status, f"significance.{name}",
            f"{verdict} '{policy['title']}': one-sided Welch p = {c.p_value:.4g} (t = {c.t_stat:.3f}), "
            f"ΔBPB = {c.delta_bpb:+.5f}, Δ = {c.delta_nats:+.5f} nats/token; 0.005 nats = "
            f"{c.threshold_bpb:.5f} BPB for {tokenizer}{note}; frontier {frontier_source}",
            (Evidence(frontier_source),), data=data))
    return out


def parse_bpb_list(text: str) -> list[float] | None:
    """'1.0810,1.0812,1.0809' -> floats; None when it is not such a list."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        return None
    return values if values and all(0 < v < 20 for v in values) else None


def resolve_frontier(against: str | None, rules: Rules) -> tuple[list[float] | None, str]:
    """The frontier's per-seed BPBs from --against (a list of values, or a records folder's evidence) and
    where they came from; check and rerun both read --against here."""
    if not against:
        return None, ""
    values = parse_bpb_list(against)
    if values is not None:
        return values, f"--against {against}"
    path = Path(against)
    if not path.is_dir():
        raise UsageError(f"--against {against}: neither a folder nor a comma-separated list of BPB values")
    scores = read_folder(usable_folder(path), rules).scores
    if not scores:
        raise UsageError(f"--against {against}: found no per-seed scores in that folder's logs")
    return scores, str(path)
