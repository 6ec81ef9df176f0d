"""A records folder's evidence, read one way for every reader: what submission.json claims, what each log
says, and which log backs which claimed seed.

`pgolf check` judges it, `pgolf rerun` reproduces its seeds, and `--against` takes the frontier's
per-seed scores from it; reading it once here keeps the three from disagreeing on what a folder says.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.check import submission_json
from harness.check.claims import SeedEvidence, match_seeds
from harness.check.folder import find_track, log_files
from harness.findings import Finding, UsageError
from harness.logs import LogEvidence, read_log
from harness.rules import Rules


@dataclass(frozen=True)
class FolderEvidence:
    folder: Path
    data: dict[str, Any] | None  # submission.json, None when missing or unusable (json_problems says why)
    json_problems: list[Finding]
    claims: submission_json.Claims
    track: str
    track_note: Finding | None  # the track had to be guessed
    logs: list[LogEvidence]
    matched: list[SeedEvidence]  # every claimed seed that a log backs, in claim order
    runs: list[SeedEvidence]  # every other run log: declared re-runs, then unreported runs
    seed_findings: list[Finding]  # what pairing seeds with logs found

    @property
    def scores(self) -> list[float]:
        """The matched seeds' val_bpb, where their log has a score line."""
        return [s.score.val_bpb for s in self.matched if s.score is not None]


def usable_folder(folder: Path) -> Path:
    """The folder, resolved, when it can be listed; else why not."""
    if not folder.exists():
        raise UsageError(f"{folder}: no such folder")
    if not folder.is_dir():
        raise UsageError(f"{folder}: not a folder (pass the submission's records/<track>/<date>_<name>/ folder)")
    try:
        next(folder.iterdir(), None)
    except OSError as exc:
        raise UsageError(f"{folder}: cannot list the folder ({exc.strerror or exc})") from None
    return folder.resolve()


def read_folder(folder: Path, rules: Rules, track: str | None = None) -> FolderEvidence:
    """Read a resolved folder; problems become findings (never exceptions) for the checker to report."""
    data, json_problems = submission_json.load(folder)
    claims = submission_json.claims(data) if data is not None else submission_json.Claims()
    track_name, track_note = find_track(folder, rules, track, claims.track)
    logs = [read_log(p, folder, rules) for p in log_files(folder)]
    matched, runs, seed_findings = match_seeds(claims, logs, rules.tracks[track_name], rules)
    return FolderEvidence(folder, data, json_problems, claims, track_name, track_note, logs, matched, runs,
                          seed_findings)
