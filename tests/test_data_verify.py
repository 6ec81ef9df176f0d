"""Verifying a dataset folder: every corruption is reported with its file, counts and hashes are checked."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from harness.data.shards import HEADER_BYTES, MAGIC, write_shard
from harness.data.variants import DataError, get_variant
from harness.data.verify import verify

TOKENIZER = b"a small tokenizer"


def make_folder(root: Path, name: str = "fineweb10B_sp1024", val: tuple[int, ...] = (300, 200),
                train: int = 2, sidecars: bool = False) -> Path:
    """data/datasets/<name>/ with valid shards (BOS first, ids < 1024) and data/tokenizers/<file>."""
    folder = root / "datasets" / name
    for i, n in enumerate(val):
        write_shard(folder / f"fineweb_val_{i:06d}.bin", np.r_[1, np.arange(n - 1) % 1000 + 4])
        if sidecars:
            write_shard(folder / f"fineweb_val_bytes_{i:06d}.bin", np.full(n, 3))
    for i in range(train):
        write_shard(folder / f"fineweb_train_{i:06d}.bin", np.r_[1, np.arange(99) % 1000 + 4])
    (root / "tokenizers").mkdir(parents=True, exist_ok=True)
    (root / "tokenizers" / "fineweb_1024_bpe.model").write_bytes(TOKENIZER)
    return folder


def small_sp1024(val_tokens: int = 256, seq_len: int = 128):
    """sp1024 as recorded, but with a canonical count that a 500-token test set meets."""
    known = ((hashlib.sha256(TOKENIZER).hexdigest(), "test copy"),)
    return dataclasses.replace(get_variant("sp1024"), val_tokens=val_tokens, eval_seq_len=seq_len, known_sha256=known)


def problems(report) -> dict[str, str]:
    return {p.file: p.message for p in report.problems}


def test_good_folder_passes(tmp_path):
    report = verify(make_folder(tmp_path / "data"), small_sp1024(val_tokens=384))
    assert report.ok, report.render()
    assert report.warnings == []
    assert (report.val_shards, report.val_tokens, report.val_tokens_scored) == (2, 500, 384)
    assert (report.train_shards, report.train_tokens, report.sidecars) == (2, 200, 0)
    assert report.tokenizer_sha256 == hashlib.sha256(TOKENIZER).hexdigest()
    assert report.tokenizer_matches == "test copy"
    data = json.loads(json.dumps(report.to_dict()))
    assert data["ok"] is True and data["variant"] == "sp1024" and data["variant_from"] == "given"
    assert report.render().endswith("OK")


def test_variant_from_folder_name_and_canonical_mismatch(tmp_path):
    report = verify(make_folder(tmp_path / "data"))
    assert (report.variant, report.variant_from) == ("sp1024", "folder name")
    assert not report.ok
    assert "validation holds 500 tokens (0 scored at seq len 1024); the canonical sp1024 set scores 62,021,632" \
        == problems(report)["fineweb10B_sp1024"]
    assert "FAILED: 1 problem(s)" in report.render()


def test_variant_from_token_count(tmp_path):
    folder = tmp_path / "somewhere"
    tokens = np.zeros(40_540_160 + 1, dtype=np.uint16)
    tokens[0] = 1
    write_shard(folder / "fineweb_val_000000.bin", tokens)
    report = verify(folder)
    assert (report.variant, report.variant_from, report.val_tokens_scored) == ("sp8192", "token count", 40_540_160)
    assert report.ok, report.render()
    assert any("tokenizer not found" in w for w in report.warnings)


def _bad_magic(path):
    data = bytearray(path.read_bytes())
    data[:4] = (MAGIC + 1).to_bytes(4, "little")
    path.write_bytes(bytes(data))


def _int32_tokens(path):
    tokens = np.arange(300, dtype="<i4")
    header = np.zeros(256, dtype="<i4")
    header[:3] = (MAGIC, 1, tokens.size)
    path.write_bytes(header.tobytes() + tokens.tobytes())


@pytest.mark.parametrize("corrupt, expected", [
    (_bad_magic, f"bad magic {MAGIC + 1}, expected {MAGIC}"),
    (lambda p: p.write_bytes(p.read_bytes()[:-100]), "but the header promises 300 tokens"),
    (lambda p: p.write_bytes(p.read_bytes()[:-1]), "an odd number of token bytes"),
    (lambda p: p.write_bytes(b""), "empty file"),
    (lambda p: p.write_bytes(p.read_bytes()[:100]), f"shorter than the {HEADER_BYTES}-byte header"),
    (_int32_tokens, "the size fits 32-bit token ids"),
])
def test_each_corruption_is_reported_with_its_file(tmp_path, corrupt, expected):
    folder = make_folder(tmp_path / "data")
    corrupt(folder / "fineweb_val_000000.bin")
    report = verify(folder, small_sp1024())
    assert list(problems(report)) == ["fineweb_val_000000.bin"], report.render()
    assert expected in problems(report)["fineweb_val_000000.bin"]
    assert report.val_tokens is None and report.val_tokens_scored is None  # no count from a broken set


def test_all_problems_are_collected(tmp_path):
    folder = make_folder(tmp_path / "data", val=(300, 200, 100), train=3)
    (folder / "fineweb_val_000000.bin").write_bytes(b"")
    _bad_magic(folder / "fineweb_val_000002.bin")
    (folder / "fineweb_train_000001.bin").write_bytes(b"x" * 2000)
    report = verify(folder, small_sp1024())
    assert sorted(problems(report)) == ["fineweb_train_000001.bin", "fineweb_val_000000.bin", "fineweb_val_000002.bin"]
    assert report.render().count("✗") == 3


def test_missing_validation_shard_and_train_gap(tmp_path):
    folder = make_folder(tmp_path / "data", val=(300, 100, 100), train=3)
    (folder / "fineweb_val_000001.bin").unlink()
    (folder / "fineweb_train_000001.bin").unlink()
    report = verify(folder, small_sp1024(val_tokens=384))
    assert problems(report) == {"fineweb_val_000001.bin": "missing; validation shards must be numbered from 000000 "
                                                          "without gaps"}
    assert report.warnings == ["fineweb_train_000001.bin is missing: the training shards are not a prefix of the export"]


def test_token_ids_outside_the_vocabulary_and_missing_bos(tmp_path):
    folder = make_folder(tmp_path / "data")
    write_shard(folder / "fineweb_val_000000.bin", np.r_[5, np.full(299, 4)])
    write_shard(folder / "fineweb_val_000001.bin", np.r_[np.full(199, 4), 4000])
    found = problems(verify(folder, small_sp1024(val_tokens=384)))
    assert found == {"fineweb_val_000000.bin": "first token is 5, expected BOS = 1 (a document start)",
                     "fineweb_val_000001.bin": "token id 4000 outside the sp1024 vocabulary (< 1024)"}


def test_sidecars_must_align_with_validation_shards(tmp_path):
    folder = make_folder(tmp_path / "data", val=(300, 200, 100), sidecars=True)
    assert verify(folder, small_sp1024(val_tokens=512)).ok
    write_shard(folder / "fineweb_val_bytes_000001.bin", np.full(199, 3))
    (folder / "fineweb_val_bytes_000002.bin").unlink()
    write_shard(folder / "fineweb_val_bytes_000007.bin", np.full(10, 3))
    report = verify(folder, small_sp1024(val_tokens=512))
    assert report.sidecars == 3
    assert problems(report) == {
        "fineweb_val_bytes_000001.bin": "199 byte counts but fineweb_val_000001.bin holds 200 tokens; "
                                        "expected one per token",
        "fineweb_val_bytes_000002.bin": "missing; fineweb_val_000002.bin has no byte sidecar",
        "fineweb_val_bytes_000007.bin": "no fineweb_val_000007.bin to pair with; expected one sidecar per "
                                        "validation shard"}


def test_caseops_without_sidecars_fails(tmp_path):
    caseops = dataclasses.replace(get_variant("caseops"), val_tokens=384, eval_seq_len=128)
    report = verify(make_folder(tmp_path / "data", name="fineweb10B_sp8192_lossless_caps_caseops_v1_reserved"),
                    caseops)
    assert "scores bytes from fineweb_val_bytes_*.bin sidecars; none found" in \
        problems(report)["fineweb10B_sp8192_lossless_caps_caseops_v1_reserved"]


def test_tokenizer_hash_mismatch_warns_and_missing_explicit_tokenizer_fails(tmp_path):
    folder = make_folder(tmp_path / "data")
    (tmp_path / "data" / "tokenizers" / "fineweb_1024_bpe.model").write_bytes(b"another tokenizer")
    report = verify(folder, small_sp1024(val_tokens=384))
    assert report.ok and report.tokenizer_matches is None
    assert report.warnings == [f"fineweb_1024_bpe.model: sha256 differs from every recorded copy "
                               f"({hashlib.sha256(TOKENIZER).hexdigest()[:12]}… test copy)"]
    report = verify(folder, small_sp1024(val_tokens=384), tokenizer=tmp_path / "nope.model")
    assert problems(report) == {"nope.model": "tokenizer file not found"}


def test_given_variant_that_contradicts_the_folder_name_warns(tmp_path):
    report = verify(make_folder(tmp_path / "data"), "sp8192")
    assert "the folder name suggests sp1024, checked as sp8192" in report.warnings
    assert "canonical sp8192 set scores 40,540,160" in problems(report)["fineweb10B_sp1024"]


def test_unknown_variant_and_missing_folder_raise(tmp_path):
    with pytest.raises(DataError, match="unknown data variant 'sp3'; known: sp1024"):
        verify(make_folder(tmp_path / "data"), "sp3")
    with pytest.raises(DataError, match="no such folder"):
        verify(tmp_path / "absent")


def test_empty_folder_has_no_validation_set(tmp_path):
    (tmp_path / "empty").mkdir()
    report = verify(tmp_path / "empty")
    assert problems(report) == {"empty": "no fineweb_val_*.bin validation shards"}
