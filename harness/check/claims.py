"""Claims against evidence: which log backs which seed, and does it say what the JSON says.

A seed's score is read from an allow-listed post-quantization metric line of its
own log (rules.yaml score_labels), never from "the last line": logs often end
with a failed experiment or a diagnostic. When the JSON gives a per-seed value,
it must equal one of those lines at its printed precision; otherwise the latest
evaluation stage wins (phased TTT > LoRA TTT > TTT > legal TTT > sliding >
roundtrip), preferring the more precise `_exact` twin.
"""
from __future__ import annotations

import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.findings import FAIL, INFO, PASS, WARN, Evidence, Finding
from harness.logs import LogEvidence, MetricLine
from harness.rules import Rules, Track
from harness.check.submission_json import FILE, Claim, Claims

_FILENAME_SEED = re.compile(r"seed[_\-]?(\d+)", re.IGNORECASE)
# What a run log is to the claims. Every run a folder shows is the submitted code, so each is judged for
# size and time; only reported seeds make the headline.
REPORTED, RERUN, UNREPORTED = "reported", "rerun", "unreported"


@dataclass
class SeedEvidence:
    seed: int | None  # None only for an unreported run whose log names no seed
    log: LogEvidence
    score: MetricLine | None  # the line the seed's score is read from
    role: str = REPORTED  # REPORTED, RERUN (a declared re-run of a reported seed) or UNREPORTED

    @property
    def run(self) -> str:
        """How a finding names the run: `seed 42`, or the role and log of a run that is not a reported seed."""
        if self.role == REPORTED:
            return f"seed {self.seed}"
        seed = f" of seed {self.seed}" if self.seed is not None else ""
        return f"{'declared re-run' if self.role == RERUN else 'unreported run'}{seed} ({self.log.name})"


def filename_seed(name: str) -> int | None:
    found = _FILENAME_SEED.search(Path(name).name)
    return int(found[1]) if found else None


def matches(claim: Claim, value: float, rules: Rules) -> bool:
    """Equal at the claim's printed precision, or within the configured tolerance."""
    half_unit = 0.5 * 10.0 ** -claim.decimals if claim.decimals else 0.0
    return abs(claim.value - value) <= max(rules.tolerances["claim_abs"], half_unit) + 1e-12


def pick_score(log: LogEvidence, rules: Rules) -> MetricLine | None:
    """Latest stage first; within a stage the most decimals; then the later line."""
    scores = log.scores
    if not scores:
        return None
    return min(scores, key=lambda m: (rules.stage_rank(m.stage), -m.decimals, -m.line))


def _ev(log: LogEvidence, line: int | None = None, text: str | None = None) -> Evidence:
    return Evidence(log.name, line, text)


def match_seeds(claims: Claims, logs: list[LogEvidence], track: Track,
                rules: Rules) -> tuple[list[SeedEvidence], list[SeedEvidence], list[Finding]]:
    """Pair every claimed seed with its log and its score line; every other run log (declared re-runs,
    unreported runs) comes back as a run of its own, so that its budgets are judged too."""
    findings: list[Finding] = []
    readable = [log for log in logs if not log.unreadable]
    reruns = _declared_reruns(claims, readable, rules, findings)
    rerun_logs = {r.log.name for r in reruns}

    for log in readable:
        named = filename_seed(log.name)
        if named is not None and log.seed is not None and named != log.seed:
            seen = log.get("seed")
            findings.append(Finding("claims", FAIL, "claims.wrong_logged_seed",
                                    f"{log.name} is named for seed {named} but the run logged seed {log.seed}",
                                    (_ev(log, seen.line, seen.text),), seed=named))
        elif log.seed is None:
            findings.append(Finding("logs", WARN, "logs.no_seed", f"cannot find the seed in {log.name}",
                                    (_ev(log),), seed=named))

    seeds = list(claims.seeds)
    if len(set(seeds)) != len(seeds):
        dupes = sorted({s for s in seeds if seeds.count(s) > 1})
        findings.append(Finding("claims", FAIL, "claims.duplicate_seed",
                                f"{FILE} lists seed(s) {dupes} more than once; seeds must be distinct",
                                (Evidence(FILE, None, claims.seeds_path),)))
    by_logged: dict[int, list[LogEvidence]] = {}
    for log in readable:
        if log.seed is not None and log.name not in rerun_logs:
            by_logged.setdefault(log.seed, []).append(log)
    for seed, same in sorted(by_logged.items()):
        distinct = {_fingerprint(l) for l in same}
        if len(same) > 1 and len(distinct) > 1:
            findings.append(Finding("claims", FAIL, "claims.duplicate_seed",
                                    f"seed {seed} is logged by {len(same)} different runs "
                                    f"({', '.join(l.name for l in same)}); each seed must be one run",
                                    tuple(_ev(l) for l in same), seed=seed))

    if not seeds:
        seeds = _seeds_from_logs(claims, readable, rules)
        if seeds:
            findings.append(Finding("claims", INFO, "claims.seeds_from_logs",
                                    f"{FILE} lists no seeds; taking seed(s) {seeds} from the logs", (Evidence(FILE),)))

    matched: list[SeedEvidence] = []
    for seed in dict.fromkeys(seeds):
        log = _log_for(seed, [l for l in readable if l.name not in rerun_logs])
        if log is None:
            unreadable = [l for l in logs if l.unreadable and filename_seed(l.name) == seed]
            why = f" ({unreadable[0].name}: {unreadable[0].problems[0]})" if unreadable else ""
            findings.append(Finding("files", FAIL, "files.missing_seed_log",
                                    f"no log shows a run with seed {seed}{why}; every claimed seed needs its log",
                                    (Evidence(FILE, None, claims.seeds_path),), seed=seed))
            continue
        matched.append(_score_for(seed, log, claims.per_seed.get(seed), rules, findings))

    reported = {s.log.name for s in matched}
    extra = [l for l in readable if l.name not in reported | rerun_logs and l.seed is not None and l.seed not in seeds]
    if extra:
        findings.append(Finding("claims", WARN, "claims.unreported_runs",
                                f"{len(extra)} log(s) show runs whose seeds are not reported "
                                f"({', '.join(f'{l.name}: seed {l.seed}' for l in extra)}); "
                                "reporting the best k of n runs biases the mean",
                                tuple(_ev(l) for l in extra)))
    if claims.disclosed_runs is not None and claims.disclosed_runs > len(seeds):
        findings.append(Finding("claims", WARN, "claims.best_of_n",
                                f"{FILE} discloses {claims.disclosed_runs} runs but reports {len(seeds)}: "
                                "a best-k-of-n selection; judge the mean of all runs",
                                (Evidence(FILE, None, claims.disclosure_path),)))
    if track.record and 0 < len(matched) < track.min_seeds:
        findings.append(Finding("claims", WARN, "claims.few_seeds",
                                f"{len(matched)} seed(s) reported; the {track.name} track expects at least "
                                f"{track.min_seeds} to show significance", (Evidence(FILE),)))
    return matched, reruns + _other_runs(readable, matched + reruns, rules), findings


def _declared_reruns(claims: Claims, logs: list[LogEvidence], rules: Rules,
                     findings: list[Finding]) -> list[SeedEvidence]:
    """The log of each re-run submission.json declares: the log of that seed whose score is nearest the
    re-run's (of two as near, the one that does not also show the original claim)."""
    out: list[SeedEvidence] = []
    for seed, claim in claims.reruns.items():
        hits = [(l, m) for l in logs if l.seed == seed for m in l.scores if matches(claim, m.val_bpb, rules)]
        original = claims.per_seed.get(seed)
        hits.sort(key=lambda hit: (abs(claim.value - hit[1].val_bpb), original is not None and any(
            matches(original, m.val_bpb, rules) for m in hit[0].scores)))
        if not hits:
            findings.append(Finding("claims", FAIL, "claims.rerun_mismatch",
                                    f"seed {seed}: {FILE} declares a re-run scoring {claim.text} ({claim.path}) but "
                                    f"no log of seed {seed} shows that score", (Evidence(FILE, None, claim.path),),
                                    seed=seed))
            continue
        log, score = hits[0]
        findings.append(Finding("claims", PASS, "claims.rerun_matches_log",
                                f"seed {seed}: the declared re-run's {claim.text} matches {score.label} "
                                f"{score.val_bpb} of {log.name}", (_ev(log, score.line, score.text),), seed=seed))
        out.append(SeedEvidence(seed, log, score, RERUN))
    return out


def _other_runs(logs: list[LogEvidence], judged: list[SeedEvidence], rules: Rules) -> list[SeedEvidence]:
    """Every readable log not yet paired, as an unreported run; a verbatim copy of a paired log (the same
    score lines under another name) is the same run and is left out."""
    out: list[SeedEvidence] = []
    names = {s.log.name for s in judged}
    seen = {(s.log.seed, _fingerprint(s.log)) for s in judged if s.log.metrics}
    for log in logs:
        if log.name in names or (log.metrics and (log.seed, _fingerprint(log)) in seen):
            continue
        seen.add((log.seed, _fingerprint(log)))
        seed = log.seed if log.seed is not None else filename_seed(log.name)
        out.append(SeedEvidence(seed, log, pick_score(log, rules), UNREPORTED))
    return out


def _seeds_from_logs(claims: Claims, logs: list[LogEvidence], rules: Rules) -> list[int]:
    """Every logged seed; or the one seed whose score is the headline when the headline is not
    the mean of all of them (early folders claim one run and keep other runs' logs beside it)."""
    scored = {log.seed: pick_score(log, rules) for log in logs if log.seed is not None}
    seeds = sorted(scored)
    if claims.headline is None or len(seeds) < 2:
        return seeds
    values = [m.val_bpb for m in scored.values() if m is not None]
    if values and matches(claims.headline, statistics.fmean(values), rules):
        return seeds
    single = [seed for seed, m in scored.items() if m is not None and matches(claims.headline, m.val_bpb, rules)]
    return single[:1] if len(single) == 1 else seeds


def _fingerprint(log: LogEvidence) -> tuple:
    """Two copies of one log (train.log == train_seed1337.log) share their score lines."""
    return tuple((m.label, m.val_bpb) for m in log.metrics)


def _log_for(seed: int, logs: list[LogEvidence]) -> LogEvidence | None:
    by_both = [l for l in logs if l.seed == seed and filename_seed(l.name) == seed]
    by_logged = [l for l in logs if l.seed == seed]
    return (by_both or by_logged or [None])[0]


def _score_for(seed: int, log: LogEvidence, claim: Claim | None, rules: Rules,
               findings: list[Finding]) -> SeedEvidence:
    if not log.scores:
        findings.append(Finding("logs", FAIL, "logs.no_score",
                                f"cannot find a post-quantization score line in {log.name} "
                                f"(looked for the labels in rules.yaml score_labels)", (_ev(log),), seed=seed))
        return SeedEvidence(seed, log, None)
    if claim is None:
        score = pick_score(log, rules)
        findings.append(Finding("claims", INFO, "claims.score_from_log",
                                f"seed {seed}: no per-seed value in {FILE}; its score is {score.val_bpb} "
                                f"({score.label}, stage {score.stage})", (_ev(log, score.line, score.text),),
                                seed=seed))
        return SeedEvidence(seed, log, score)
    hits = [m for m in log.scores if matches(claim, m.val_bpb, rules)]
    if hits:
        score = min(hits, key=lambda m: (rules.stage_rank(m.stage), -m.decimals, -m.line))
        findings.append(Finding("claims", PASS, "claims.seed_matches_log",
                                f"seed {seed}: claimed {claim.text} matches {score.label} {score.val_bpb}",
                                (_ev(log, score.line, score.text),), seed=seed))
        return SeedEvidence(seed, log, score)
    others = [m for m in log.metrics if m.stage is None and matches(claim, m.val_bpb, rules)]
    if others:
        findings.append(Finding("claims", FAIL, "claims.not_post_quant",
                                f"seed {seed}: claimed {claim.text} ({claim.path}) only matches "
                                f"'{others[0].label}', which is not a post-quantization score",
                                (_ev(log, others[0].line, others[0].text),), seed=seed))
    else:
        best = pick_score(log, rules)
        findings.append(Finding("claims", FAIL, "claims.mismatch",
                                f"seed {seed}: claimed {claim.text} ({claim.path}) matches no score line of "
                                f"{log.name}; its {best.label} says {best.val_bpb}",
                                (_ev(log, best.line, best.text),), seed=seed,
                                data={"claimed": claim.value, "logged": best.val_bpb}))
    return SeedEvidence(seed, log, pick_score(log, rules))


def headline_findings(claims: Claims, matched: list[SeedEvidence], rules: Rules,
                      runs: Sequence[SeedEvidence] = ()) -> list[Finding]:
    """The headline must be the mean of the per-seed scores, and the spread their std. A folder whose
    JSON names no seed and whose one scored log names none either is judged on that log's score."""
    scores = [s.score.val_bpb for s in matched if s.score is not None]
    lone = [r for r in runs if r.role == UNREPORTED and r.score is not None]
    if not scores and not claims.seeds and claims.headline is not None and len(lone) == 1:
        scores = [lone[0].score.val_bpb]
    if not scores:
        return []
    mean = statistics.fmean(scores)
    found: list[Finding] = []
    where = (Evidence(FILE, None, claims.headline.path if claims.headline else None),)
    if claims.headline is None:
        found.append(Finding("claims", FAIL, "claims.no_headline",
                             f"{FILE} has no val_bpb; expected the mean of the seeds, {mean:.8f}", where))
    elif matches(claims.headline, mean, rules):
        found.append(Finding("claims", PASS, "claims.headline_is_mean",
                             f"headline {claims.headline.text} = mean of {len(scores)} seed(s) {mean:.8f}", where))
    else:
        found.append(Finding("claims", FAIL, "claims.headline_not_mean",
                             f"headline {claims.headline.text} ({claims.headline.path}) is not the mean of the "
                             f"logged seed scores, {mean:.8f}", where,
                             data={"claimed": claims.headline.value, "mean": mean}))
    if claims.std is not None and len(scores) > 1:
        sample, population = statistics.stdev(scores), statistics.pstdev(scores)
        if not (matches(claims.std, sample, rules) or matches(claims.std, population, rules)):
            found.append(Finding("claims", WARN, "claims.std_mismatch",
                                 f"claimed spread {claims.std.text} ({claims.std.path}) is neither the sample "
                                 f"std {sample:.6f} nor the population std {population:.6f} of the seeds",
                                 (Evidence(FILE, None, claims.std.path),)))
    return found
