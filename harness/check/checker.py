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
from harness.findings import FAIL, INFO, WARN, Evidence, Finding, UsageError
from harness.client import CLIENT_FILE
from harness.check.folder import find_track, folder_findings, log_files
from harness.check.lint import lint_files
from harness.logs import read_log, tokenizer_of
from harness.rules import Rules
from harness.check.significance import parse_bpb_list, significance_findings
from harness.verdict import Verdict

def check_folder(folder: Path, rules: Rules, profile: str = "strict", track_name: str | None = None,
                 against: str | None = None) -> Verdict:
    folder = _usable_folder(folder)
    if track_name is not None:
        rules.track(track_name)  # an unknown track stops here
    findings: list[Finding] = []

    data, json_problems = submission_json.load(folder)
    claimed = submission_json.claims(data) if data is not None else submission_json.Claims()
    track_name, track_note = find_track(folder, rules, track_name, claimed.track)
    track = rules.tracks[track_name]
    scan = scan_code(folder, rules)

    findings += folder_findings(folder, scan, rules)
    findings += [track_note] if track_note else []
    findings += json_problems
    if data is not None:
        findings += submission_json.validate(data, profile)
        findings += _json_consistency(folder, claimed, rules, track_name)

    logs = [read_log(p, folder, rules) for p in log_files(folder)]
    for log in logs:
        findings += [Finding("logs", FAIL if log.unreadable else WARN, "logs.unreadable" if log.unreadable
                             else "logs.problem", f"{log.name}: {problem}", (Evidence(log.name),))
                     for problem in log.problems]
    matched, seed_findings = claims_mod.match_seeds(claimed, logs, track, rules)
    findings += seed_findings
    findings += claims_mod.headline_findings(claimed, matched, rules)

    tokenizer, _ = tokenizer_of([s.log for s in matched] or logs, rules)
    code_bytes = cache(lambda compressed: counted_bytes(folder, scan, compressed, rules))
    for s in matched:
        findings += budgets.seed_budgets(s, code_bytes, track, rules, claims=claimed, tokenizer=tokenizer)
    if not track.record and track.unlimited_compute_must_say_so:
        findings += _unlimited_disclosed(folder, matched, rules)

    new = [s.score.val_bpb for s in matched if s.score is not None]
    frontier, source = resolve_frontier(against, rules, profile)
    findings += significance_findings(new, frontier, source, tokenizer, track, rules)
    findings += lint_files(folder, [p for p in scan.counted if p.suffix == ".py" and p.is_file() and not _is_client(p)])

    seeds = {s.seed: _seed_summary(s) for s in matched}
    return Verdict(str(folder), track_name, profile, findings, seeds)


def _is_client(path: Path) -> bool:
    """A verbatim copy of pgolf's own event client (shipped by pgolf export) is harness code, not the
    submission's: its socket use is the event channel, so it is counted but not linted."""
    try:
        return path.read_bytes() == CLIENT_FILE.read_bytes()
    except OSError:
        return False


def _usable_folder(folder: Path) -> Path:
    if not folder.exists():
        raise UsageError(f"{folder}: no such folder")
    if not folder.is_dir():
        raise UsageError(f"{folder}: not a folder (pass the submission's records/<track>/<date>_<name>/ folder)")
    try:
        next(folder.iterdir(), None)
    except OSError as exc:
        raise UsageError(f"{folder}: cannot list the folder ({exc.strerror or exc})") from None
    return folder.resolve()


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
                               f"$.seeds lists {listed} but $.seed_results has seeds {sorted(keyed, key=int)}",
                               (Evidence(submission_json.FILE, None, "$.seeds"),)))
    if claimed.date and not claimed.date.startswith(folder.name[:10]):
        out.append(Finding("json", INFO, "json.date_differs",
                           f"submission.json date {claimed.date} differs from the folder's {folder.name[:10]}",
                           (Evidence(submission_json.FILE, None, "$.date"),)))
    return out


def _unlimited_disclosed(folder: Path, matched: list[claims_mod.SeedEvidence], rules: Rules) -> list[Finding]:
    """Non-record runs over the record budget must say in their README that compute was unlimited."""
    limit = next(t.train_limit_s for t in rules.tracks.values() if t.record) * 1000 + rules.tolerances["train_time_ms"]
    long_runs = [s for s in matched if s.log.train_stop and float(s.log.train_stop.value) > limit]
    try:
        text = (folder / "README.md").read_text("utf-8", errors="replace").lower()
    except OSError:
        text = ""  # missing or unreadable: the files check already says so
    if long_runs and "unlimited" not in text:
        return [Finding("train_time", WARN, "train_time.unlimited_undisclosed",
                        f"seed {long_runs[0].seed} trained past the record budget but README.md does not say the "
                        "run used unlimited compute", (Evidence("README.md"),))]
    return []


def resolve_frontier(against: str | None, rules: Rules, profile: str) -> tuple[list[float] | None, str]:
    """The frontier's per-seed BPBs from --against (a list of values, or a records folder read from its
    logs) and where they came from; shared by check and rerun so both read --against the same way."""
    if not against:
        return None, ""
    values = parse_bpb_list(against)
    if values is not None:
        return values, f"--against {against}"
    path = Path(against)
    if not path.is_dir():
        raise UsageError(f"--against {against}: neither a folder nor a comma-separated list of BPB values")
    other = check_folder(path, rules, profile="historic")
    scores = [s["val_bpb"] for s in other.seeds.values() if s.get("val_bpb") is not None]
    if not scores:
        raise UsageError(f"--against {against}: found no per-seed scores in that folder's logs")
    return scores, str(path)


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
