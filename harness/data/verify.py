"""Check a dataset folder before trusting a score computed on it.

A wrong validation set changes BPB silently: a truncated or re-exported shard, a missing shard, a
byte sidecar out of step with its tokens, or another tokenizer's files under the same name. Every
shard is checked (all problems are collected, not just the first), the validation tokens are
counted against the canonical count of the variant, and the tokenizer is hashed.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harness.data.shards import (HEADER_BYTES, MAGIC, ShardError, read_header, read_shard, train_shards,
                                 val_byte_sidecars, val_shards)
from harness.data.variants import DataError, Variant, get_variant, variant_for_dataset, variants

BOS = 1  # every export starts each document with BOS = 1 (rules.md §5.1)


@dataclass(frozen=True)
class Problem:
    file: str
    message: str


@dataclass
class VerifyReport:
    folder: str
    variant: str | None = None
    variant_from: str | None = None  # "given", "folder name" or "token count"
    val_shards: int = 0
    val_tokens: int | None = None  # all tokens held; None when a shard is unreadable
    val_tokens_scored: int | None = None  # what a training script logs: tail trimmed to whole sequences
    canonical_val_tokens: int | None = None
    eval_seq_len: int | None = None
    sidecars: int = 0
    train_shards: int = 0
    train_tokens: int | None = None
    tokenizer: str | None = None
    tokenizer_sha256: str | None = None
    tokenizer_matches: str | None = None  # where the same file was seen
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def problem(self, file: str | Path, message: str) -> None:
        self.problems.append(Problem(Path(file).name, message))

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, **asdict(self)}

    def render(self) -> str:
        how = "given" if self.variant_from == "given" else f"from the {self.variant_from}"
        lines = [f"data verify: {self.folder} — " + (f"variant {self.variant} ({how})" if self.variant
                                                      else "variant unknown")]
        val = f"  validation: {self.val_shards} shard(s)"
        if self.val_tokens is not None:
            val += f", {self.val_tokens:,} tokens"
            if self.val_tokens_scored is not None:
                val += (f"; {self.val_tokens_scored:,} scored at seq len {self.eval_seq_len}, "
                        f"canonical {self.canonical_val_tokens:,}")
        lines.append(val)
        if self.sidecars:
            lines.append(f"  sidecars:   {self.sidecars} byte sidecar(s)")
        lines.append(f"  training:   {self.train_shards} shard(s)"
                     + (f", {self.train_tokens:,} tokens" if self.train_tokens is not None else ""))
        if self.tokenizer:
            lines.append(f"  tokenizer:  {self.tokenizer} sha256 {self.tokenizer_sha256 or '-'}"
                         + (f" (same file as the {self.tokenizer_matches})" if self.tokenizer_matches else ""))
        lines += [f"  ✗ {p.file}: {p.message}" for p in self.problems]
        lines += [f"  ! {w}" for w in self.warnings]
        lines.append("OK" if self.ok else f"FAILED: {len(self.problems)} problem(s)")
        return "\n".join(lines)


def verify(folder: Path, variant: str | Variant | None = None, tokenizer: Path | None = None) -> VerifyReport:
    """Verify `folder` (a fineweb10B_<variant> folder); the variant is inferred when not given.

    The tokenizer is looked for at ../../tokenizers/<file> (the fetch layout) unless `tokenizer` names it.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder")
    report = VerifyReport(str(folder))
    val = _counts(report, val_shards(folder))
    sidecars = _counts(report, val_byte_sidecars(folder))
    train = _counts(report, train_shards(folder))
    report.val_shards, report.sidecars, report.train_shards = len(val), len(sidecars), len(train)
    if not val:
        report.problem(folder, "no fineweb_val_*.bin validation shards")
    _numbering(report, val, "fineweb_val_", strict=True)
    _numbering(report, train, "fineweb_train_", strict=False)
    if None not in val.values():
        report.val_tokens = sum(val.values()) if val else None
    if None not in train.values():
        report.train_tokens = sum(train.values())

    v = _variant(report, folder, variant)
    if v is not None:
        _against_variant(report, v, val, folder)
    _sidecars(report, val, sidecars, v)
    _tokenizer(report, v, folder, tokenizer)
    return report


def _counts(report: VerifyReport, paths: list[Path]) -> dict[Path, int | None]:
    """Token count of each shard, None (and a problem) for each invalid one."""
    counts: dict[Path, int | None] = {}
    for path in paths:
        try:
            counts[path] = read_header(path)
        except ShardError as exc:
            counts[path] = None
            report.problem(path, str(exc).removeprefix(f"{path}: ") + _dtype_hint(path))
    return counts


def _dtype_hint(path: Path) -> str:
    """Name the common mistake of writing int32 ids under a header that counts uint16 tokens."""
    if not path.is_file():
        return ""
    try:
        with path.open("rb") as handle:
            head = handle.read(12)
        size = path.stat().st_size
    except OSError:
        return ""
    if len(head) == 12:
        magic, _, count = np.frombuffer(head, dtype="<i4")
        if magic == MAGIC and count > 0 and size == HEADER_BYTES + 4 * int(count):
            return " (the size fits 32-bit token ids: written with the wrong dtype?)"
    return ""


def _numbering(report: VerifyReport, shards: dict[Path, Any], prefix: str, strict: bool) -> None:
    """Shards are read in file order, so a gap in the numbering means a shard is missing."""
    present = {int(re.search(r"(\d+)\.bin$", p.name).group(1)) for p in shards}
    for i in sorted(set(range(max(present, default=-1) + 1)) - present):
        name = f"{prefix}{i:06d}.bin"
        if strict:
            report.problem(name, "missing; validation shards must be numbered from 000000 without gaps")
        else:
            report.warnings.append(f"{name} is missing: the training shards are not a prefix of the export")


def _variant(report: VerifyReport, folder: Path, given: str | Variant | None) -> Variant | None:
    by_name = variant_for_dataset(folder.name)
    if given is not None:
        v, how = (given if isinstance(given, Variant) else get_variant(given)), "given"
        if by_name and by_name.name != v.name:
            report.warnings.append(f"the folder name suggests {by_name.name}, checked as {v.name}")
    elif by_name:
        v, how = by_name, "folder name"
    else:
        found = [x for x in variants().values() if report.val_tokens and x.scored(report.val_tokens) == x.val_tokens]
        v, how = (found[0], "token count") if len(found) == 1 else (None, None)
    if v is None:
        report.warnings.append("variant unknown (folder not named fineweb10B_<variant>, count matches none): "
                               "canonical count not checked")
    else:
        report.variant, report.variant_from = v.name, how
        report.canonical_val_tokens, report.eval_seq_len = v.val_tokens, v.eval_seq_len
    return v


def _against_variant(report: VerifyReport, v: Variant, val: dict[Path, int | None], folder: Path) -> None:
    """Canonical count, token ids within the vocabulary, BOS first."""
    if report.val_tokens is None:
        return  # an unreadable shard already failed the check; a partial count would only add noise
    report.val_tokens_scored = v.scored(report.val_tokens)
    if report.val_tokens_scored != v.val_tokens:
        report.problem(folder, f"validation holds {report.val_tokens:,} tokens ({report.val_tokens_scored:,} scored at "
                               f"seq len {v.eval_seq_len}); the canonical {v.name} set scores {v.val_tokens:,}")
    for path in val:
        tokens = read_shard(path)
        if tokens.size and int(tokens.max()) >= v.vocab_size:
            report.problem(path, f"token id {int(tokens.max())} outside the {v.name} vocabulary (< {v.vocab_size})")
    first = next(iter(val))
    if val[first] and read_shard(first)[0] != BOS:
        report.problem(first, f"first token is {int(read_shard(first)[0])}, expected BOS = {BOS} (a document start)")


def _sidecars(report: VerifyReport, val: dict[Path, int | None], sidecars: dict[Path, int | None],
              v: Variant | None) -> None:
    """A byte sidecar holds one byte count per validation token, shard by shard."""
    if not sidecars:
        if v is not None and v.byte_sidecar and val:
            report.problem(report.folder, f"{v.name} scores bytes from fineweb_val_bytes_*.bin sidecars; none found")
        return
    tokens = {p.name.replace("fineweb_val_", ""): n for p, n in val.items()}
    for path, count in sidecars.items():
        key = path.name.replace("fineweb_val_bytes_", "")
        if key not in tokens:
            report.problem(path, f"no fineweb_val_{key} to pair with; expected one sidecar per validation shard")
        elif count is not None and tokens[key] is not None and count != tokens[key]:
            report.problem(path, f"{count:,} byte counts but fineweb_val_{key} holds {tokens[key]:,} tokens; "
                                 "expected one per token")
    paired = {p.name.replace("fineweb_val_bytes_", "") for p in sidecars}
    for key in sorted(set(tokens) - paired):
        report.problem(f"fineweb_val_bytes_{key}", f"missing; fineweb_val_{key} has no byte sidecar")


def _tokenizer(report: VerifyReport, v: Variant | None, folder: Path, given: Path | None) -> None:
    path = Path(given) if given else folder.parent.parent / "tokenizers" / v.tokenizer_file if v else None
    if path is None:
        return
    report.tokenizer = str(path)
    if not path.is_file():
        if given:
            report.problem(path, "tokenizer file not found")
        else:
            report.warnings.append(f"tokenizer not found at {path}: not hashed")
        return
    with path.open("rb") as handle:
        report.tokenizer_sha256 = hashlib.file_digest(handle, "sha256").hexdigest()
    known = dict(v.known_sha256) if v else {}
    report.tokenizer_matches = known.get(report.tokenizer_sha256)
    if known and report.tokenizer_matches is None:
        report.warnings.append(f"{path.name}: sha256 differs from every recorded copy ("
                               + "; ".join(f"{h[:12]}… {where}" for h, where in known.items()) + ")")
