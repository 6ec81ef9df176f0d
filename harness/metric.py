"""val_bpb with the challenge's exact byte accounting (rules.md §5.4).

The harness, not the submission, turns per-token NLLs into bits per byte:
a wrong byte denominator moves the score by percent (rules.md §2.6), far
more than any record margin. Bytes come from a per-token table built from the
SentencePiece model, or from a per-token byte sidecar for lossless transformed
tokenizers (CaseOps); `check_table` proves a table against decoded text.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SPACE = "\u2581"  # SentencePiece's visible space, "▁"
BOS = 1


@dataclass(frozen=True)
class ByteTable:
    """Per-id byte accounting: bytes(y) = base[y] + (leading_space[y] and not boundary[x])."""

    base: np.ndarray           # int16, UTF-8 bytes of the piece without its leading "▁"
    leading_space: np.ndarray  # bool, the piece starts with "▁"
    boundary: np.ndarray       # bool, control/unknown/unused or beyond the SP vocab

    def __len__(self) -> int:
        return len(self.base)


@dataclass(frozen=True)
class Score:
    loss: float   # nats per target token
    bpb: float    # bits per byte
    tokens: int
    bytes: int


@dataclass(frozen=True)
class Check:
    """One sanity check of a byte table; `message` says what was found either way."""

    name: str
    ok: bool
    message: str


def build_table(sp, vocab_size: int = 0) -> ByteTable:
    """The challenge's LUT: table size max(sp vocab, vocab_size); ids past the SP vocab stay 0/boundary."""
    n = max(sp.vocab_size(), vocab_size)
    base = np.zeros(n, dtype=np.int16)
    leading = np.zeros(n, dtype=bool)
    boundary = np.ones(n, dtype=bool)
    for i in range(sp.vocab_size()):
        if sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i):
            continue
        boundary[i] = False
        if sp.is_byte(i):
            base[i] = 1
            continue
        piece = sp.id_to_piece(i)
        if piece.startswith(SPACE):
            leading[i] = True
            piece = piece[1:]
        base[i] = len(piece.encode("utf-8"))
    return ByteTable(base, leading, boundary)


def _span(tokens: np.ndarray, start: int, count: int) -> tuple[int, int]:
    if tokens.ndim != 1:
        raise ValueError(f"tokens must be one-dimensional, got shape {tokens.shape}")
    if start < 1:
        raise ValueError(f"start must be >= 1 (the first target needs a predecessor), got {start}")
    stop = start + count
    if stop > len(tokens):
        raise ValueError(f"{count:,} targets from position {start} need {stop:,} tokens, the stream has {len(tokens):,}")
    return start, stop


def target_bytes(tokens: np.ndarray, *, table: ByteTable | None = None, sidecar: np.ndarray | None = None,
                 start: int = 1, count: int | None = None) -> np.ndarray:
    """Bytes charged to each target at stream positions start … start+count-1 (sum them in int64).

    Exactly one of `table` (predecessor-aware LUT) or `sidecar` (uint16 counts
    aligned 1:1 with `tokens`; the target at position p uses sidecar[p]).
    """
    if (table is None) == (sidecar is None):
        raise ValueError("give exactly one of table= or sidecar=")
    tokens = np.asarray(tokens)
    start, stop = _span(tokens, start, len(tokens) - start if count is None else count)
    if sidecar is not None:
        sidecar = np.asarray(sidecar)
        if sidecar.shape != tokens.shape:
            raise ValueError(f"byte sidecar has shape {sidecar.shape}, tokens {tokens.shape}: they must align 1:1")
        return sidecar[start:stop]
    top = int(tokens.max(initial=0))
    if top >= len(table):
        raise ValueError(f"token id {top} is outside the {len(table)}-entry byte table")
    y, x = tokens[start:stop], tokens[start - 1:stop - 1]
    out = table.base[y]
    out += table.leading_space[y] & ~table.boundary[x]
    return out


def score(nll: np.ndarray, tokens: np.ndarray, *, table: ByteTable | None = None,
          sidecar: np.ndarray | None = None, start: int = 1) -> Score:
    """val_loss and val_bpb from per-target NLLs in nats; nll[i] scores tokens[start + i]."""
    nll = np.asarray(nll)
    if nll.ndim != 1 or nll.dtype.kind != "f":
        raise ValueError(f"nll must be a 1-D float array, got {nll.dtype} of shape {nll.shape}")
    if nll.size == 0:
        raise ValueError("nll is empty: nothing was scored")
    total = float(np.sum(nll, dtype=np.float64))
    if not math.isfinite(total):
        bad = np.flatnonzero(~np.isfinite(nll))
        where = f"first at target index {bad[0]}" if bad.size else "their float64 sum overflows"
        raise ValueError(f"{bad.size:,} non-finite NLLs ({where})")
    if nll.min() < 0:
        raise ValueError(f"negative NLL at target index {int(np.argmin(nll))}: NLLs are -log p >= 0")
    nbytes = int(target_bytes(tokens, table=table, sidecar=sidecar, start=start, count=nll.size).sum(dtype=np.int64))
    if nbytes <= 0:
        raise ValueError(f"the {nll.size:,} scored targets carry {nbytes} bytes: no byte denominator")
    loss = total / nll.size
    return Score(loss=loss, bpb=loss / math.log(2) * nll.size / nbytes, tokens=int(nll.size), bytes=nbytes)


def check_table(sp, table: ByteTable, tokens: np.ndarray, limit: int = 5) -> list[Check]:
    """(a) table bytes == UTF-8 bytes of sp.decode, per BOS-delimited document; (b) a standalone "▁"
    piece exists; (c) no piece costs more than its own text, byte-fallback exactly 1."""
    return [_check_decode(sp, table, np.asarray(tokens), limit), _check_space_piece(sp), _check_pieces(sp, table, limit)]


def _check_decode(sp, table: ByteTable, tokens: np.ndarray, limit: int) -> Check:
    starts = np.flatnonzero(tokens == BOS)
    if starts.size == 0:
        return Check("bytes_match_decode", False, "no BOS in the token stream: documents cannot be delimited")
    # document d holds targets starts[d]+1 … starts[d+1] (the next BOS, charged 0); a 0 pads a final BOS
    charged = np.append(target_bytes(tokens, table=table, start=int(starts[0]) + 1).astype(np.int64), 0)
    per_doc = np.add.reduceat(charged, starts - starts[0])
    bounds = np.append(starts, len(tokens))
    bad, table_total, text_total = [], 0, 0
    for lo in range(0, starts.size, 4096):
        docs = [tokens[bounds[d] + 1:bounds[d + 1]].tolist() for d in range(lo, min(lo + 4096, starts.size))]
        for d, text in enumerate(sp.decode(docs), lo):
            n = len(text.encode("utf-8"))
            text_total += n
            table_total += int(per_doc[d])
            if n != per_doc[d]:
                bad.append(f"doc {d}: table {int(per_doc[d])}, text {n}")
    verdict = f"{starts.size:,} documents: table {table_total:,} bytes, decoded text {text_total:,} bytes"
    if bad:
        return Check("bytes_match_decode", False, f"{verdict}; {len(bad):,} differ ({'; '.join(bad[:limit])})")
    return Check("bytes_match_decode", True, verdict)


def _check_space_piece(sp) -> Check:
    i = sp.piece_to_id(SPACE)
    if i == sp.unk_id() or sp.is_unused(i) or sp.is_control(i):
        return Check("standalone_space_piece", False, f'no standalone "{SPACE}" piece: a space after a byte '
                     f"or a piece without it is emitted as 3 byte-fallback tokens and charged 3 bytes (issue #897)")
    return Check("standalone_space_piece", True, f'"{SPACE}" is piece {i}')


def _check_pieces(sp, table: ByteTable, limit: int) -> Check:
    bad = []
    for i in range(min(sp.vocab_size(), len(table))):
        worst = int(table.base[i]) + bool(table.leading_space[i])  # charge after a non-boundary token
        if sp.is_byte(i):
            if worst != 1:
                bad.append(f"byte piece {i} {sp.id_to_piece(i)} charged {worst}, must be 1")
            continue
        own = 0 if table.boundary[i] else len(sp.id_to_piece(i).replace(SPACE, " ").encode("utf-8"))
        if worst > own:
            bad.append(f"piece {i} {sp.id_to_piece(i)!r} charged up to {worst}, its text has {own}")
    if bad:
        return Check("piece_bytes_bounded", False, f"{len(bad):,} pieces overcharged: {'; '.join(bad[:limit])}")
    return Check("piece_bytes_bounded", True, f"{len(table):,} entries within their pieces' own UTF-8 length")
