"""The challenge shard format: round trip and every way a file can be wrong."""
from __future__ import annotations

import numpy as np
import pytest

from harness.data.shards import (HEADER_BYTES, MAGIC, ShardError, read_header, read_shard, read_tokens,
                                 train_shards, val_byte_sidecars, val_shards, write_shard)


def header(count: int, magic: int = MAGIC, version: int = 1) -> bytes:
    values = np.zeros(256, dtype="<i4")
    values[:3] = (magic, version, count)
    return values.tobytes()


def test_round_trip(tmp_path):
    tokens = np.array([1, 0, 65535, 8191, 42], dtype=np.uint16)
    write_shard(tmp_path / "fineweb_val_000000.bin", tokens)
    raw = (tmp_path / "fineweb_val_000000.bin").read_bytes()
    assert raw[:12] == np.array([MAGIC, 1, 5], dtype="<i4").tobytes() and len(raw) == HEADER_BYTES + 10
    assert read_shard(tmp_path / "fineweb_val_000000.bin").tolist() == tokens.tolist()
    assert oct((tmp_path / "fineweb_val_000000.bin").stat().st_mode & 0o777) == "0o644"


def test_empty_shard_round_trips(tmp_path):
    write_shard(tmp_path / "s.bin", np.array([], dtype=np.uint16))
    assert read_header(tmp_path / "s.bin") == 0


@pytest.mark.parametrize("content, expected", [
    (b"", "empty file"),
    (header(4)[:100], "shorter than the 1024-byte header"),
    (header(4, magic=20240521) + b"\0" * 8, "bad magic 20240521"),
    (header(4, version=2) + b"\0" * 8, "unsupported version 2"),
    (header(4) + b"\0" * 6, "promises 4 tokens"),
    (header(4) + b"\0" * 7, "odd number of token bytes"),
    (header(4) + np.arange(4, dtype="<i4").tobytes(), "the file holds 8 tokens"),  # int32 tokens
    (header(-3), "negative token count"),
])
def test_corrupt_shards_name_the_file_and_the_problem(tmp_path, content, expected):
    path = tmp_path / "fineweb_train_000001.bin"
    path.write_bytes(content)
    with pytest.raises(ShardError, match=expected) as err:
        read_shard(path)
    assert "fineweb_train_000001.bin" in str(err.value)


def test_out_of_range_tokens_are_refused(tmp_path):
    with pytest.raises(ShardError, match="fit uint16"):
        write_shard(tmp_path / "s.bin", np.array([70000]))
    with pytest.raises(ShardError, match="one-dimensional"):
        write_shard(tmp_path / "s.bin", np.zeros((2, 2)))
    assert not (tmp_path / "s.bin").exists() and list(tmp_path.iterdir()) == []


def test_shard_listing_excludes_byte_sidecars(tmp_path):
    for name in ("fineweb_val_000001.bin", "fineweb_val_000000.bin", "fineweb_val_bytes_000000.bin",
                 "fineweb_train_000000.bin", "notes.bin"):
        write_shard(tmp_path / name, np.array([1, 2], dtype=np.uint16))
    assert [p.name for p in val_shards(tmp_path)] == ["fineweb_val_000000.bin", "fineweb_val_000001.bin"]
    assert [p.name for p in val_byte_sidecars(tmp_path)] == ["fineweb_val_bytes_000000.bin"]
    assert [p.name for p in train_shards(tmp_path)] == ["fineweb_train_000000.bin"]
    assert read_tokens(val_shards(tmp_path)).tolist() == [1, 2, 1, 2]
