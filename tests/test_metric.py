"""val_bpb byte accounting against real SentencePiece models trained here on the committed demo prose."""
from __future__ import annotations

import dataclasses
import io
import math

import numpy as np
import pytest
import sentencepiece as spm

from harness.data.demo import CORPUS, read_corpus
from harness.metric import BOS, SPACE, build_table, check_table, score, target_bytes

# text the tokenizer never saw, with characters only byte fallback can spell
HELD_OUT = ["The committee met on 12 March 2024 to review the budget; ½ of it was approved.",
            "Ｆｕｌｌ-width text, 漢字, an emoji 🙂 and a café: all must round-trip.",
            "Several   spaces\tand\ttabs\n\nthen a new paragraph.  "]


def train(lines: list[str], **options) -> spm.SentencePieceProcessor:
    config = dict(model_type="bpe", vocab_size=512, byte_fallback=True, split_digits=True,
                  normalization_rule_name="nmt_nfkc", add_dummy_prefix=False, pad_id=0, bos_id=1, eos_id=2,
                  unk_id=3, character_coverage=0.999, hard_vocab_limit=False, max_sentence_length=1 << 20,
                  num_threads=1, minloglevel=2)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=model, **(config | options))
    return spm.SentencePieceProcessor(model_proto=model.getvalue())


def stream(sp, texts: list[str]) -> np.ndarray:
    return np.array([t for ids in sp.encode(texts) for t in [BOS, *ids]], dtype=np.uint16)


def decoded_bytes(sp, tokens: np.ndarray) -> int:
    """The independent denominator: UTF-8 bytes of each BOS-delimited document's decoded text."""
    cuts = np.flatnonzero(tokens == BOS)
    docs = np.split(tokens, cuts[1:])
    return sum(len(sp.decode(d[1:].tolist()).encode("utf-8")) for d in docs)


@pytest.fixture(scope="module")
def docs():
    return read_corpus(CORPUS)


@pytest.fixture(scope="module")
def sp(docs):
    return train(docs[:120])


@pytest.fixture(scope="module")
def held_out(sp, docs):
    return stream(sp, docs[200:215] + HELD_OUT)


def by_name(checks):
    return {c.name: c for c in checks}


def test_table_follows_the_challenge_rules(sp):
    table = build_table(sp, vocab_size=600)
    assert len(table) == 600 and sp.vocab_size() == 512
    assert table.boundary[[0, 1, 2, 3]].all() and not table.base[[0, 1, 2, 3]].any()
    assert table.boundary[512:].all() and not table.base[512:].any() and not table.leading_space[512:].any()
    byte_ids = [i for i in range(512) if sp.is_byte(i)]
    assert len(byte_ids) == 256 and (table.base[byte_ids] == 1).all() and not table.boundary[byte_ids].any()
    space = sp.piece_to_id(SPACE)
    assert table.leading_space[space] and table.base[space] == 0
    word = next(i for i in range(512) if sp.id_to_piece(i).startswith(SPACE) and len(sp.id_to_piece(i)) > 2)
    assert table.leading_space[word] and table.base[word] == len(sp.id_to_piece(word)[1:].encode())


def test_space_is_charged_only_after_a_non_boundary_token(sp):
    table = build_table(sp)
    the = sp.piece_to_id(f"{SPACE}the")
    assert the != sp.unk_id()
    tokens = np.array([BOS, the, the], dtype=np.uint16)  # "the the": first ▁ follows BOS, second follows a word
    assert target_bytes(tokens, table=table).tolist() == [3, 4]


def test_table_agrees_with_decoded_text(sp, held_out):
    table = build_table(sp)
    checks = check_table(sp, table, held_out)
    assert all(c.ok for c in checks), checks
    assert int(target_bytes(held_out, table=table).sum()) == decoded_bytes(sp, held_out)


def test_bpb_equals_bits_over_decoded_bytes(sp, held_out):
    nll = np.random.default_rng(0).gamma(2.0, 1.5, size=len(held_out) - 1).astype(np.float32)
    result = score(nll, held_out, table=build_table(sp))
    bits = float(nll.astype(np.float64).sum()) / math.log(2)
    assert result.tokens == len(held_out) - 1
    assert result.bytes == decoded_bytes(sp, held_out)
    assert result.bpb == pytest.approx(bits / decoded_bytes(sp, held_out), rel=1e-12)
    assert result.loss == pytest.approx(float(nll.astype(np.float64).mean()), rel=1e-12)


def test_byte_fallback_charged_three_bytes_is_caught(sp, held_out):
    """Scylla/TokenMonster: byte pieces charged len("\ufffd") = 3 instead of 1."""
    table = build_table(sp)
    is_byte = np.array([sp.is_byte(i) for i in range(len(table))])
    bad = dataclasses.replace(table, base=np.where(is_byte, 3, table.base).astype(np.int16))
    checks = by_name(check_table(sp, bad, held_out))
    assert not checks["bytes_match_decode"].ok and not checks["piece_bytes_bounded"].ok
    assert "must be 1" in checks["piece_bytes_bounded"].message
    nll = np.ones(len(held_out) - 1)
    assert score(nll, held_out, table=bad).bpb < score(nll, held_out, table=table).bpb


def test_space_counted_twice_is_caught(sp, held_out):
    """GatedDeltaNet line: the LUT keeps the ▁ as a byte and the loop adds the space again."""
    table = build_table(sp)
    bad = dataclasses.replace(table, base=(table.base + table.leading_space).astype(np.int16))
    checks = by_name(check_table(sp, bad, held_out))
    assert not checks["bytes_match_decode"].ok and not checks["piece_bytes_bounded"].ok
    assert checks["standalone_space_piece"].ok


def test_tokenizer_without_a_space_piece_is_caught(docs):
    """Issue #897: spaces so rare in training that "▁" falls outside character coverage."""
    lines = ["".join(d.split()) for d in docs[:60]] + ["one space here"]
    sp = train(lines, vocab_size=400)
    assert sp.piece_to_id(SPACE) == sp.unk_id()
    table, tokens = build_table(sp), stream(sp, ["hello world"])
    assert not by_name(check_table(sp, table, tokens))["standalone_space_piece"].ok
    # the space becomes the 3 UTF-8 bytes of "▁", each charged 1, and decodes to a literal "▁" rather
    # than " ", so only the piece check sees it: 13 bytes charged for an 11-byte text
    assert sp.decode(tokens[1:].tolist()) == f"hello{SPACE}world"
    assert int(target_bytes(tokens, table=table).sum()) == 13 == len("hello world") + 2


def test_sidecar_replaces_the_table(sp, held_out):
    table = build_table(sp)
    sidecar = np.concatenate([[0], target_bytes(held_out, table=table)]).astype(np.uint16)
    nll = np.random.default_rng(1).random(len(held_out) - 1)
    assert score(nll, held_out, sidecar=sidecar) == score(nll, held_out, table=table)
    with pytest.raises(ValueError, match="align 1:1"):
        score(nll, held_out, sidecar=sidecar[:-1])


def test_partial_span_scores_only_its_targets(sp, held_out):
    table = build_table(sp)
    nll = np.full(100, 2.0)
    result = score(nll, held_out, table=table, start=50)
    assert result.tokens == 100 and result.bytes == int(target_bytes(held_out, table=table)[49:149].sum())


@pytest.mark.parametrize("nll, kwargs, error", [
    (np.array([1.0, np.nan]), {}, "1 non-finite NLLs \\(first at target index 1\\)"),
    (np.array([1.0, -0.5]), {}, "negative NLL"),
    (np.ones((2, 2)), {}, "1-D float"),
    (np.ones(3, dtype=np.int64), {}, "1-D float"),
    (np.ones(0), {}, "empty"),
    (np.ones(5), {}, "need 6 tokens"),
    (np.ones(2), {"start": 0}, "start must be >= 1"),
])
def test_score_rejects_bad_input(sp, nll, kwargs, error):
    tokens = np.array([BOS, 100, 200, 300, 400], dtype=np.uint16)
    with pytest.raises(ValueError, match=error):
        score(nll, tokens, table=build_table(sp), **kwargs)


def test_score_needs_exactly_one_byte_source_and_ids_in_the_table(sp):
    tokens = np.array([BOS, 100, 700], dtype=np.uint16)
    table = build_table(sp)
    with pytest.raises(ValueError, match="exactly one"):
        score(np.ones(2), tokens)
    with pytest.raises(ValueError, match="outside the 512-entry"):
        score(np.ones(2), tokens, table=table)
