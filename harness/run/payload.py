"""What a submission carries into its phases, and the one rule for counting it: the staged code and the
artifact.

The code: every file the submission folder ships counts, except its documentation and claims
(README.md, submission.json, requirements.txt, *.log) — so a weight file shipped beside
train_gpt.py is counted, not smuggled. Only those files are staged, and both phases run from the
staged copy, so eval cannot load anything else of the folder. The artifact: only regular files in
plain folders may carry state from train to eval; each file's bytes count and so does each
entry's relative path (UTF-8), so data cannot hide in names; a symlink, a hard link, a FIFO, a
socket or a device is refused. Both are fingerprinted before the phase that uses them and again
after it (and at verify), so a change made by a job shows.

Every scan here walks without following links, never raises for what a job left behind (long
names, deep trees, many files, unreadable or special files each become a finding), and reads no
file that is not a regular one. Extended attributes count as bytes of their file, and nothing is
skipped: a bytecode cache in the artifact is artifact (jobs run with PYTHONDONTWRITEBYTECODE).

What is not counted is not carried either: the staged code and the artifact eval reads are plain
copies (`copy_plain`) — content and extended attributes only, written in name order with one mode and
one time for all — so modification times, mode bits, holes, preallocated blocks and directory order
that a job (or a submission folder) set carry nothing into a phase.
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path

from harness.findings import UsageError

NOT_CODE = ("README.md", "submission.json", "requirements.txt", "*.log")  # shipped, never run: not counted
CACHES = ("__pycache__",)  # a submission folder's bytecode caches are not staged (the jobs write none)
MAX_LISTED = 20  # entries named in a finding; the rest are counted


def is_code(relative: str) -> bool:
    name = relative.rsplit("/", 1)[-1]
    return not any(fnmatch.fnmatchcase(name, pattern) for pattern in NOT_CODE)


@dataclass
class Scan:
    """A folder as the rule sees it: relative path -> (size, sha256) of each regular file, the name bytes,
    and what is refused or unreadable."""
    files: dict[str, tuple[int, str]] = field(default_factory=dict)
    folders: list[str] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)  # (relative path, kind)
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (relative path, why)

    @property
    def file_bytes(self) -> int:
        return sum(size for size, _ in self.files.values())

    @property
    def name_bytes(self) -> int:
        return sum(len(os.fsencode(p)) for p in [*self.files, *self.folders])

    @property
    def total(self) -> int:
        return self.file_bytes + self.name_bytes

    def digest(self) -> str:
        """One hash of the fingerprint: what a phase record keeps to compare against later."""
        return hashlib.sha256(json.dumps(sorted(self.fingerprint().items())).encode()).hexdigest()

    def fingerprint(self) -> dict[str, str]:
        """Everything a change could touch: content, names, and what was refused or unreadable."""
        out = {path: f"{size}:{digest}" for path, (size, digest) in self.files.items()}
        out |= {path: "folder" for path in self.folders}
        out |= {path: f"refused:{kind}" for path, kind in self.refused}
        out |= {path: f"unreadable:{why}" for path, why in self.unreadable}
        return out


def _kind(mode: int, links: int) -> str | None:
    """Why an entry may not carry state, or None for a plain file or folder."""
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISREG(mode):
        return "hard link" if links > 1 else None
    if stat.S_ISDIR(mode):
        return None
    return {stat.S_IFIFO: "fifo", stat.S_IFSOCK: "socket", stat.S_IFCHR: "device",
            stat.S_IFBLK: "device"}.get(stat.S_IFMT(mode), "special file")


def scan(folder: Path, hash_files: bool = True, skip: tuple[str, ...] = ()) -> Scan:
    """Walk `folder` (never following links) and apply the rule; never raises for its content. `skip`
    names folders left out (only a submission's caches, when staging: in code and artifact everything counts)."""
    out = Scan()
    stack = [""]
    while stack:
        relative = stack.pop()
        try:
            entries = sorted(os.scandir(os.path.join(folder, relative)), key=lambda e: e.name)
        except OSError as exc:
            out.unreadable.append((relative or ".", exc.strerror or str(exc)))  # e.g. a path past PATH_MAX
            continue
        for entry in entries:
            path = f"{relative}/{entry.name}" if relative else entry.name
            try:
                path.encode("utf-8")
                info = entry.stat(follow_symlinks=False)
            except UnicodeEncodeError:
                out.refused.append((_printable(path), "name not UTF-8"))
                continue
            except OSError as exc:
                out.unreadable.append((path, exc.strerror or str(exc)))
                continue
            kind = _kind(info.st_mode, info.st_nlink)
            if kind is not None:
                out.refused.append((path, kind))
            elif stat.S_ISDIR(info.st_mode):
                if entry.name not in skip:
                    out.folders.append(path)
                    stack.append(path)
            else:
                try:
                    out.files[path] = (info.st_size + _xattr_bytes(entry.path),
                                       _sha256(entry.path) if hash_files else "")
                except OSError as exc:
                    out.unreadable.append((path, exc.strerror or str(exc)))
    return out


def _xattr_bytes(path: str) -> int:
    """Extended attributes carry bytes beside a file's content: their names and values count too."""
    try:
        return sum(len(os.fsencode(n)) + len(os.getxattr(path, n, follow_symlinks=False)) for n in _xattr_names(path))
    except OSError:
        return 0


def _printable(path: str) -> str:
    """A name that is not UTF-8, as JSON can carry it: its undecodable bytes escaped."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


PLAIN_TIME_NS = 946_684_800 * 10**9  # 2000-01-01: every copied entry's access and modification time
PLAIN_FILE_MODE, PLAIN_RUNNABLE_MODE, PLAIN_FOLDER_MODE = 0o644, 0o755, 0o755


def copy_plain(source: Path, target: Path, files: list[str], folders: list[str]) -> None:
    """Copy the regular `files` and the `folders` (relative paths) of `source` into the new folder `target`,
    carrying only what the byte rule counts: content (every block written, so no holes) and extended
    attributes. Entries are made in name order and get one time and one mode each (a file keeps only git's
    executable bit)."""
    target.mkdir(parents=True)
    for folder in sorted(folders):
        (target / folder).mkdir(parents=True, exist_ok=True)
    for path in sorted(files):
        src, dst = source / path, target / path
        with open(src, "rb", buffering=0) as fin, open(dst, "xb", buffering=0) as fout:
            while chunk := fin.read(1 << 20):
                fout.write(chunk)
        for name in _xattr_names(src):
            os.setxattr(dst, name, os.getxattr(src, name, follow_symlinks=False), follow_symlinks=False)
        runnable = os.stat(src, follow_symlinks=False).st_mode & 0o111
        os.chmod(dst, PLAIN_RUNNABLE_MODE if runnable else PLAIN_FILE_MODE)
        os.utime(dst, ns=(PLAIN_TIME_NS, PLAIN_TIME_NS), follow_symlinks=False)
    for folder in [*sorted(folders, reverse=True), "."]:  # deepest first: adding an entry sets its folder's time
        os.chmod(target / folder, PLAIN_FOLDER_MODE)
        os.utime(target / folder, ns=(PLAIN_TIME_NS, PLAIN_TIME_NS), follow_symlinks=False)


def _xattr_names(path: str | Path) -> list[str]:
    try:
        return sorted(os.listxattr(path, follow_symlinks=False))
    except OSError:  # a filesystem without xattrs
        return []


def replace_with_plain_copy(folder: Path, found: Scan) -> None:
    """Swap `folder` for a plain copy of its regular files (the artifact between the phases): what eval reads
    then holds nothing the byte rule did not count. Only for a folder without refused or unreadable entries,
    which stay where verify finds them."""
    fresh, old = folder.with_name(folder.name + ".plain"), folder.with_name(folder.name + ".written")
    try:
        copy_plain(folder, fresh, list(found.files), found.folders)
    except OSError:
        shutil.rmtree(fresh, ignore_errors=True)
        raise
    os.rename(folder, old)
    os.rename(fresh, folder)
    shutil.rmtree(old)


def stage_code(submission: Path, code: Path) -> Scan:
    """Copy the submission's code files (all but NOT_CODE) into `code`: the only files either phase runs from.
    A link or special file in the submission folder is the user's error: ship the file itself."""
    found = scan(submission, skip=CACHES)
    if found.refused or found.unreadable:
        path, why = (found.refused or found.unreadable)[0]
        raise UsageError(f"{submission / path}: {why} in the submission folder; ship plain files only")
    files = [path for path in found.files if is_code(path)]
    copy_plain(submission, code, files, sorted({str(p) for f in files for p in Path(f).parents} - {"."}))
    return scan(code)


def changes(before: Scan, after: Scan) -> list[tuple[str, str]]:
    """(path, what happened) for every entry that differs between two scans of one folder."""
    old, new = before.fingerprint(), after.fingerprint()
    return [(path, "removed" if path not in new else "added" if path not in old else "changed")
            for path in sorted(old.keys() | new.keys()) if old.get(path) != new.get(path)]


def listed(entries: list[tuple[str, str]]) -> str:
    shown = ", ".join(f"{path} ({why})" for path, why in entries[:MAX_LISTED])
    return shown + (f" and {len(entries) - MAX_LISTED} more" if len(entries) > MAX_LISTED else "")
