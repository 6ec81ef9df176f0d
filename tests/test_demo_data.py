"""The committed demo dataset: reproducible, split by document, valid shards, a learnable signal."""
from __future__ import annotations

import json

import numpy as np
import pytest
import sentencepiece as spm

from harness.data.demo import BOS, DEMO_DIR, VARIANT, build_demo, is_val, read_corpus
from harness.data.shards import read_header, read_tokens, train_shards, val_shards
from harness.metric import build_table, check_table, score

DATASET = DEMO_DIR / "datasets" / VARIANT
MANIFEST = json.loads((DEMO_DIR / "manifest.json").read_text("utf-8"))


@pytest.fixture(scope="module")
def sp():
    return spm.SentencePieceProcessor(model_file=str(DEMO_DIR / "tokenizers" / "demo_1024_bpe.model"))


@pytest.fixture(scope="module")
def train():
    return read_tokens(train_shards(DATASET))


@pytest.fixture(scope="module")
def val():
    return read_tokens(val_shards(DATASET))


def documents(tokens: np.ndarray) -> list[tuple[int, ...]]:
    assert tokens[0] == BOS, "every stream starts with a document's BOS"
    return [tuple(d[1:].tolist()) for d in np.split(tokens, np.flatnonzero(tokens == BOS)[1:])]


def test_regeneration_is_byte_identical(tmp_path):
    assert MANIFEST["tokenizer"]["sentencepiece"] == spm.__version__, \
        "the committed files were built with another sentencepiece version; pin the one in manifest.json"
    build_demo(tmp_path)
    built = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert built == sorted([*MANIFEST["files"], "manifest.json"])
    for rel in built:
        assert (tmp_path / rel).read_bytes() == (DEMO_DIR / rel).read_bytes(), f"{rel} differs from the committed copy"


def test_split_is_by_whole_document(sp, train, val):
    train_docs, val_docs = documents(train), documents(val)
    encoded = sp.encode(read_corpus())
    assert val_docs == [tuple(ids) for i, ids in enumerate(encoded) if is_val(i)]
    assert train_docs == [tuple(ids) for i, ids in enumerate(encoded) if not is_val(i)]
    assert not set(val_docs) & set(train_docs)
    assert 0.08 < len(val_docs) / len(encoded) < 0.12
    train_text = "\n".join(sp.decode([list(d) for d in train_docs]))
    leaked = [i for i, d in enumerate(val_docs) if sp.decode(list(d)) in train_text]
    assert not leaked, f"val documents {leaked} appear verbatim in the training shards"


def test_shards_are_valid_and_match_the_manifest(val, train):
    for split, shards in [("val", val_shards(DATASET)), ("train", train_shards(DATASET))]:
        assert shards and sum(read_header(p) for p in shards) == MANIFEST["tokens"][split]
    assert len(val) == MANIFEST["tokens"]["val"] and len(train) == MANIFEST["tokens"]["train"]
    assert val.max() < MANIFEST["tokenizer"]["vocab_size"] == 1024


def test_byte_table_agrees_with_decoded_val_text(sp, val):
    checks = check_table(sp, build_table(sp), val)
    assert all(c.ok for c in checks), checks


def test_bigram_model_beats_uniform(sp, train, val):
    """The demo carries a learnable signal: add-k bigram counts from train score far below uniform on val."""
    vocab, k = sp.vocab_size(), 0.1
    counts = np.bincount(train[:-1].astype(np.int64) * vocab + train[1:], minlength=vocab * vocab)
    counts = counts.reshape(vocab, vocab) + k
    log_p = np.log(counts) - np.log(counts.sum(axis=1, keepdims=True))
    nll = -log_p[val[:-1], val[1:]]
    table = build_table(sp)
    bigram = score(nll, val, table=table)
    uniform = score(np.full(len(val) - 1, np.log(vocab)), val, table=table)
    assert bigram.bytes == uniform.bytes
    assert bigram.bpb < 0.7 * uniform.bpb, (bigram.bpb, uniform.bpb)
