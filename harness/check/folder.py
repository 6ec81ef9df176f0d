"""The submission folder itself: its name, its required files, nothing that escapes it.

A PR must add exactly one `records/<track>/YYYY-MM-DD_Description/` folder that
runs from inside itself. Symlinks are refused outright when they point outside
(the reviewer's checkout would read files the PR does not contain) and flagged
when they stay inside.
"""
from __future__ import annotations

import datetime as dt
import os
import re
from pathlib import Path

from harness.code import ENTRY, CodeScan
from harness.findings import FAIL, PASS, WARN, Evidence, Finding
from harness.rules import Rules

FOLDER_NAME = re.compile(r"^(?P<date>\d{4}-\d{2}-\d{2})_(?P<desc>[A-Za-z0-9][A-Za-z0-9._+\-]*)$")
_LOG_SUFFIXES = {".log", ".txt"}
_NOT_LOGS = {"requirements.txt", "readme.txt"}


def find_track(folder: Path, rules: Rules, override: str | None, json_track: str | None) -> tuple[str, Finding | None]:
    """Track from --track, else the parent folder (records/<track>/...), else the JSON, else the record track."""
    if override:
        return override, None
    if folder.parent.name in rules.tracks:
        return folder.parent.name, None
    from_json = rules.track_for_json_name(json_track) if json_track else None
    if from_json:
        return from_json, None
    default = next(t.name for t in rules.tracks.values() if t.record)
    return default, Finding("files", WARN, "files.track_unknown",
                            f"the folder is not under records/<track>/ and submission.json names no known track; "
                            f"judging it against {default} (use --track to choose)", (Evidence("."),))


def log_files(folder: Path) -> list[Path]:
    """Logs are *.log, and *.txt files whose name says log/train/seed."""
    out = []
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or path.is_symlink() or path.name.lower() in _NOT_LOGS:
            continue
        name = path.name.lower()
        if path.suffix.lower() == ".log" or (path.suffix.lower() in _LOG_SUFFIXES
                                             and re.search(r"log|train|seed", name)):
            out.append(path)
    return out


def folder_findings(folder: Path, scan: CodeScan, rules: Rules, profile: str = "strict") -> list[Finding]:
    """The folder's layout, and what the code model found wrong with the code it follows."""
    out: list[Finding] = []
    here = (Evidence("."),)
    name = FOLDER_NAME.match(folder.name)
    if not name:
        out.append(Finding("files", FAIL, "files.folder_name",
                           f"folder name '{folder.name}' must be YYYY-MM-DD_Description "
                           "(letters, digits, . _ + - ; no spaces)", here))
    else:
        try:
            dt.date.fromisoformat(name["date"])
        except ValueError:
            out.append(Finding("files", FAIL, "files.folder_date",
                               f"folder name starts with '{name['date']}', which is not a calendar date", here))

    for required, why in (("README.md", "describes the submission"), ("submission.json", "holds the claims"),
                          (ENTRY, "is the code that runs")):
        path = folder / required
        if not path.is_file():
            out.append(Finding("files", FAIL, "files.missing", f"{required} is missing: it {why}", here))
        elif path.stat().st_size == 0 and required != "submission.json":
            status = FAIL if required == ENTRY else WARN
            out.append(Finding("files", status, "files.empty", f"{required} is empty", (Evidence(required),)))

    out += _walk(folder)
    if not log_files(folder):
        out.append(Finding("files", FAIL, "files.no_logs",
                           "no training log (*.log, or train/seed/log *.txt) in the folder", here))

    for rel, line, target in scan.outside:
        out.append(Finding("files", WARN, "files.path_outside",
                           f"{rel} refers to '{target}', outside the folder: a record must run from inside it",
                           (Evidence(rel, line),)))
    for rel, why in scan.unparsed.items():
        out.append(Finding("files", WARN, "files.syntax_error",
                           f"{rel} {why}; its imports cannot be followed", (Evidence(rel),)))
    for limit in scan.limits:
        out.append(Finding("files", WARN, "files.code_model_limit",
                           f"the code is too large or too deep to follow in full: {limit}", (Evidence(ENTRY),)))
    if scan.third_party and not (folder / "requirements.txt").is_file():
        listed = ", ".join(f"{m} ({rel}:{line})" if rel != ENTRY else f"{m} (line {line})"
                           for m, (rel, line) in sorted(scan.third_party.items()))
        first_rel, first_line = min(scan.third_party.values(), key=lambda at: (at[0] != ENTRY, at))
        historic = " (accepted without one in the challenge's history)" if profile == "historic" else ""
        out.append(Finding("files", rules.requirements_missing(profile), "files.requirements_missing",
                           f"the code imports packages the challenge does not install ({listed}) "
                           f"but the folder has no requirements.txt{historic}", (Evidence(first_rel, first_line),)))
    if not any(f.status == FAIL for f in out):
        out.append(Finding("files", PASS, "files.layout", "folder name and required files are in order", here))
    return out


def _walk(folder: Path) -> list[Finding]:
    """Symlinks, odd names and unreadable files anywhere in the folder."""
    out: list[Finding] = []
    root = folder.resolve()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        for entry in dirnames + filenames:
            path = Path(dirpath) / entry
            rel = path.relative_to(folder).as_posix()
            if path.is_symlink():
                target = os.readlink(path)
                real = Path(os.path.realpath(path))  # never raises: a symlink loop resolves to a path inside
                inside = root in real.parents or real == root
                out.append(Finding("files", WARN if inside else FAIL,
                                   "files.symlink" if inside else "files.escapes_folder",
                                   f"{rel} is a symlink to {target}"
                                   + ("" if inside else ", outside the folder: a PR must carry real files"),
                                   (Evidence(rel),)))
                continue
            if " " in entry or not entry.isascii():
                out.append(Finding("files", WARN, "files.odd_name",
                                   f"'{rel}' has spaces or non-ASCII characters in its name", (Evidence(rel),)))
            if path.is_file():
                try:
                    with path.open("rb"):
                        pass
                except OSError as exc:
                    out.append(Finding("files", FAIL, "files.unreadable",
                                       f"{rel} cannot be read ({exc.strerror or exc})", (Evidence(rel),)))
    return out
