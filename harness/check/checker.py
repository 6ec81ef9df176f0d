"""`pgolf check DIR`: every check over one submission folder, as one verdict.

The order mirrors how a reviewer reads a PR: the folder, the JSON, the logs and
which seed each backs, then each seed's budgets, the claimed mean, significance
against the frontier, and a static read of the code.
"""
from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from harness.check import budgets
from harness.check import claims as claims_mod
from harness.check import submission_json
from harness.code import scan_code, counted_bytes
from harness.findings import FAIL, INFO, WARN, Evidence, Finding
from harness.client import CLIENT_FILE
from harness.check.evidence import read_folder, usable_folder
from harness.check.folder import folder_findings
from harness.check.lint import lint_sources
from harness.logs import tokenizer_of
from harness.rules import Rules
from harness.check.significance import resolve_frontier, significance_findings
from harness.verdict import Verdict

def check_folder(folder: Path, rules: Rules, profile: str = "strict", track_name: str | None = None,
                 against: str | None = None) -> Verdict:
    folder = usable_folder(folder)
    if track_name is not None:
        rules.track(track_name)  # an unknown track stops here
    findings: list[Finding] = []

    ev = read_folder(folder, rules, track_name)
    claimed, logs, matched, track = ev.claims, ev.logs, ev.matched, rules.tracks[ev.track]
    scan = scan_code(folder, rules)

    findings += folder_findings(folder, scan, rules, profile)
    findings += [ev.track_note] if ev.track_note else []
    findings += ev.json_problems
    if ev.data is not None:
        findings += submission_json.validate(ev.data, profile)
        findings += _json_consistency(folder, claimed, rules, ev.track)

    for log in logs:
        findings += [Finding("logs", FAIL if log.unreadable else WARN, "logs.unreadable" if log.unreadable
                             else "logs.problem", f"{log.name}: {problem}", (Evidence(log.name),))
                     for problem in log.problems]
    findings += ev.seed_findings
    findings += claims_mod.headline_findings(claimed, matched, rules, ev.runs)

    tokenizer, _ = tokenizer_of([s.log for s in matched] or logs, rules)
    code_bytes = cache(lambda compressed: counted_bytes(folder, scan, compressed, rules))
    reruns = {r.seed: r for r in ev.runs if r.role == claims_mod.RERUN}
    for s in matched:
        findings += budgets.seed_budgets(s, code_bytes, track, rules, claims=claimed, tokenizer=tokenizer,
                                         rerun=reruns.get(s.seed))
    for r in ev.runs:  # every run the folder shows is the submitted code: each must fit
        findings += budgets.run_budgets(r, code_bytes, track, rules)
    if not track.record and track.unlimited_compute_must_say_so:
        findings += _unlimited_disclosed(folder, matched + ev.runs, rules)

    frontier, source = resolve_frontier(against, rules)
    findings += significance_findings(ev.scores, frontier, source, tokenizer, track, rules)
    findings += lint_sources([s for s in scan.sources.values() if not _is_client(folder / s.rel)])

    seeds = {s.seed: _seed_summary(s) for s in matched}
    return Verdict(str(folder), ev.track, profile, findings, seeds)


def _is_client(path: Path) -> bool:
    """A verbatim copy of pgolf's own event client (shipped by pgolf export) is harness code, not the
    submission's: its socket use is the event channel, so it is counted but not linted."""
    try:
        return path.read_bytes() == CLIENT_FILE.read_bytes()
    except OSError:
        return False


def _json_consistency(folder: Path, claimed: submission_json.Claims, rules: Rules, track: str) -> list[Finding]:
    out: list[Finding] = []
    json_track = rules.track_for_json_name(claimed.track) if claimed.track else None
    if claimed.track and json_track != track:
        out.append(Finding("json", WARN, "json.track_mismatch",
                           f"submission.json says track '{claimed.track}' but the folder is judged as {track}",
                           (Evidence(submission_json.FILE, None, "$.track"),)))
    if claimed.listed_vs_results:
        listed, keyed = claimed.listed_vs_results
        if sorted(map(str, listed)) != sorted(keyed):
            out.append(Finding("json", FAIL, "json.seeds_disagree",
                               f"$.seeds lists {listed} but $.seed_results has seeds {keyed}",
                               (Evidence(submission_json.FILE, None, "$.seeds"),)))
    if claimed.date and not claimed.date.startswith(folder.name[:10]):
        out.append(Finding("json", INFO, "json.date_differs",
                           f"submission.json date {claimed.date} differs from the folder's {folder.name[:10]}",
                           (Evidence(submission_json.FILE, None, "$.date"),)))
    return out


def _unlimited_disclosed(folder: Path, runs: list[claims_mod.SeedEvidence], rules: Rules) -> list[Finding]:
    """Non-record runs over the record budget, reported or not, must say in their README that compute was
    unlimited."""
    limit = next(t.train_limit_s for t in rules.tracks.values() if t.record) * 1000 + rules.tolerances["train_time_ms"]
    long_runs = [s for s in runs if s.log.train_stop and float(s.log.train_stop.value) > limit]
    try:
        text = (folder / "README.md").read_text("utf-8", errors="replace").lower()
    except OSError:
        text = ""  # missing or unreadable: the files check already says so
    if long_runs and "unlimited" not in text:
        return [Finding("train_time", WARN, "train_time.unlimited_undisclosed",
                        f"{long_runs[0].run} trained past the record budget but README.md does not say the "
                        "run used unlimited compute", (Evidence("README.md"),))]
    return []


def _seed_summary(s: claims_mod.SeedEvidence) -> dict[str, Any]:
    log = s.log
    value = lambda name: (log.get(name).value if log.get(name) else None)  # noqa: E731
    return {
        "log": log.name,
        "val_bpb": s.score.val_bpb if s.score else None,
        "val_loss": s.score.val_loss if s.score else None,
        "score_label": s.score.label if s.score else None,
        "train_time_ms": float(log.train_stop.value) if log.train_stop else None,
        "steps": log.steps,
        "model_bytes": value("model_bytes"),
        "logged_total_bytes": value("total_bytes"),
        "world_size": value("world_size"),
    }
