"""Write files so that a reader never sees half of one: temp file in the same folder, fsync, rename.

A run killed mid-write leaves at most a hidden `.NAME.*.tmp` file, never a
truncated file under the real name that looks whole.

The files a user names (`--json`, `--markdown`) go through write_output: where such a path exists as
something other than a regular file — a symlink (`--json link`), a device or FIFO (`--json
/dev/stdout`) — it is written through, in place, since renaming over it would replace the link or
the device with a plain file. The harness's own records are always replaced, never followed: a link
planted in a seed folder must not redirect them. Text is UTF-8; a character UTF-8 cannot encode (a
lone surrogate from a JSON escape, an undecodable byte of a file name) is written as its backslash
escape.
"""
from __future__ import annotations

import os
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator


def _text_mode(mode: str) -> dict[str, str]:
    return {} if "b" in mode else {"encoding": "utf-8", "errors": "backslashreplace"}


@contextmanager
def atomic_open(path: Path, mode: str = "w") -> Iterator[IO]:
    """Open a temp file beside `path`; on clean exit it replaces `path`, on error it vanishes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes 0600; outputs are for other users and containers to read
        with os.fdopen(fd, mode, **_text_mode(mode)) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_open(path, "w") as handle:
        handle.write(text)


def write_output(path: Path, text: str) -> None:
    """A file the user named: atomically replaced when it is a regular file or new; written through in place
    when it is a symlink (even a dangling one) or a device or FIFO, which replacing would destroy."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        info = None
    if info is None or stat.S_ISREG(info.st_mode):
        write_text_atomic(path, text)
        return
    with open(path, "w", **_text_mode("w")) as handle:
        handle.write(text)
