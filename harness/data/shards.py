"""The challenge's token shard format (rules.md §5.1).

A shard is a 1,024-byte header of 256 little-endian int32 — magic 20240520,
version 1, token count, zeros — followed by that many little-endian uint16
token ids. A reader that skips the header check (or the size check) silently
scores garbage, so every read validates both and says what is wrong.
"""
from __future__ import annotations

import re
import stat
from pathlib import Path

import numpy as np

from harness.atomic import atomic_open

MAGIC = 20240520
VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
_VAL = re.compile(r"^fineweb_val_\d+\.bin$")
_VAL_BYTES = re.compile(r"^fineweb_val_bytes_\d+\.bin$")
_TRAIN = re.compile(r"^fineweb_train_\d+\.bin$")


class ShardError(ValueError):
    """A file is not a valid shard; the message names the file and what is wrong."""


def read_header(path: Path) -> int:
    """Validate a shard's header and size; return its token count."""
    path = Path(path)
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):  # a FIFO would block the read, a device never end
            raise ShardError(f"{path}: not a regular file")
        size = info.st_size
        with path.open("rb") as handle:
            head = handle.read(HEADER_BYTES)
    except OSError as exc:
        raise ShardError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if size == 0:
        raise ShardError(f"{path}: empty file, expected a {HEADER_BYTES}-byte header and uint16 tokens")
    if len(head) < HEADER_BYTES:
        raise ShardError(f"{path}: {size} bytes, shorter than the {HEADER_BYTES}-byte header")
    header = np.frombuffer(head, dtype="<i4")
    if header[0] != MAGIC:
        raise ShardError(f"{path}: bad magic {int(header[0])}, expected {MAGIC}")
    if header[1] != VERSION:
        raise ShardError(f"{path}: unsupported version {int(header[1])}, expected {VERSION}")
    count = int(header[2])
    if count < 0:
        raise ShardError(f"{path}: negative token count {count} in the header")
    expected = HEADER_BYTES + 2 * count
    if size != expected:
        detail = "an odd number of token bytes" if (size - HEADER_BYTES) % 2 else f"{(size - HEADER_BYTES) // 2:,} tokens"
        raise ShardError(f"{path}: {size:,} bytes but the header promises {count:,} tokens "
                         f"({expected:,} bytes); the file holds {detail}")
    return count


def read_shard(path: Path) -> np.ndarray:
    """All tokens of a validated shard, as uint16 (memory-mapped, read-only)."""
    count = read_header(path)
    return np.memmap(path, dtype="<u2", mode="r", offset=HEADER_BYTES, shape=(count,))


def write_shard(path: Path, tokens: np.ndarray) -> None:
    """Write tokens as a shard, atomically (temp file + rename): a killed write leaves no shard."""
    tokens = np.asarray(tokens)
    if tokens.ndim != 1:
        raise ShardError(f"{path}: tokens must be one-dimensional, got shape {tokens.shape}")
    if tokens.size and (tokens.min() < 0 or tokens.max() > 0xFFFF):
        raise ShardError(f"{path}: token ids must fit uint16 (0..65535), got {tokens.min()}..{tokens.max()}")
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:3] = (MAGIC, VERSION, tokens.size)
    with atomic_open(path, "wb") as handle:
        handle.write(header.tobytes())
        handle.write(tokens.astype("<u2").tobytes())


def val_shards(folder: Path) -> list[Path]:
    """Validation shards in file order; `fineweb_val_bytes_*` sidecars are not shards of tokens."""
    return sorted(p for p in Path(folder).iterdir() if _VAL.match(p.name))


def val_byte_sidecars(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).iterdir() if _VAL_BYTES.match(p.name))


def train_shards(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).iterdir() if _TRAIN.match(p.name))


def read_tokens(paths: list[Path]) -> np.ndarray:
    """Concatenate shards in the given order into one uint16 stream."""
    if not paths:
        return np.zeros(0, dtype=np.uint16)
    return np.concatenate([np.asarray(read_shard(p)) for p in paths])
