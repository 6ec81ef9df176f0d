"""A tiny challenge-format dataset built from committed public-domain prose (data/demo/).

A fresh machine can run the whole pipeline — tokenizer, shards, training,
val_bpb — with no download. It mirrors the official export (rules.md §5.1–5.2):
a SentencePiece BPE tokenizer with the challenge's settings, documents as
[BOS] + ids with no EOS, the split made by whole documents, and shards in the
exact format. Everything is deterministic, so the committed copy can be
checked by regenerating it.
"""
from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import sentencepiece as spm

from harness.atomic import atomic_open, write_text_atomic
from harness.data.shards import train_shards, val_shards, write_shard

DEMO_DIR = Path(__file__).resolve().parents[2] / "data" / "demo"
CORPUS = DEMO_DIR / "factbook.jsonl"
VARIANT = "fineweb10B_demo1024"
MODEL_NAME = "demo_1024_bpe.model"
VOCAB = 1024
BOS = 1
VAL_EVERY = 10           # documents 0, 10, 20, … are validation (~10%)
SHARD_TOKENS = 1 << 17   # small, so the demo has several train shards like the real export
SEED = 1337


@dataclass(frozen=True)
class DemoPaths:
    root: Path
    dataset: Path    # holds fineweb_train_*.bin and fineweb_val_*.bin
    tokenizer: Path  # the SentencePiece .model
    manifest: Path


def read_corpus(corpus: Path = CORPUS) -> list[str]:
    """Document texts in file order (JSONL, one {"id", "text"} per line)."""
    return [json.loads(line)["text"] for line in Path(corpus).read_text("utf-8").splitlines() if line]


def is_val(index: int) -> bool:
    return index % VAL_EVERY == 0


def train_tokenizer(texts: list[str]) -> bytes:
    """The challenge's SentencePiece config (rules.md §5.2), single-threaded so the model bytes are reproducible."""
    spm.set_random_generator_seed(SEED)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([t.replace("\0", " ").strip() for t in texts]),
        model_writer=model, model_type="bpe", vocab_size=VOCAB, byte_fallback=True, split_digits=True,
        normalization_rule_name="nmt_nfkc", add_dummy_prefix=False, pad_id=0, bos_id=BOS, eos_id=2, unk_id=3,
        character_coverage=0.999, hard_vocab_limit=False, max_sentence_length=1 << 20,
        input_sentence_size=0, shuffle_input_sentence=False, num_threads=1, minloglevel=2)
    return model.getvalue()


def _stream(sp: spm.SentencePieceProcessor, texts: list[str]) -> np.ndarray:
    return np.array([t for ids in sp.encode(texts) for t in [BOS, *ids]], dtype=np.uint16)


def _write_stream(folder: Path, split: str, tokens: np.ndarray) -> None:
    for k, lo in enumerate(range(0, max(len(tokens), 1), SHARD_TOKENS)):
        write_shard(folder / f"fineweb_{split}_{k:06d}.bin", tokens[lo:lo + SHARD_TOKENS])


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_demo(out_dir: Path, corpus: Path = CORPUS) -> DemoPaths:
    """Train the tokenizer on the training documents only, export both splits, write manifest.json."""
    out_dir = Path(out_dir)
    texts = read_corpus(corpus)
    val = [t for i, t in enumerate(texts) if is_val(i)]
    train = [t for i, t in enumerate(texts) if not is_val(i)]
    paths = DemoPaths(out_dir, out_dir / "datasets" / VARIANT, out_dir / "tokenizers" / MODEL_NAME,
                      out_dir / "manifest.json")
    model = train_tokenizer(train)
    with atomic_open(paths.tokenizer, "wb") as handle:
        handle.write(model)
    sp = spm.SentencePieceProcessor(model_proto=model)
    paths.dataset.mkdir(parents=True, exist_ok=True)
    for stale in [*train_shards(paths.dataset), *val_shards(paths.dataset)]:
        stale.unlink()
    streams = {"train": _stream(sp, train), "val": _stream(sp, val)}
    for split, tokens in streams.items():
        _write_stream(paths.dataset, split, tokens)
    files = [paths.tokenizer, *train_shards(paths.dataset), *val_shards(paths.dataset)]
    manifest = {
        "corpus": {"file": Path(corpus).name, "sha256": _sha256(Path(corpus)), "documents": len(texts)},
        "split": {"rule": f"document index % {VAL_EVERY} == 0 -> val", "val_docs": len(val), "train_docs": len(train)},
        "tokenizer": {"vocab_size": sp.vocab_size(), "sentencepiece": spm.__version__},
        "tokens": {split: int(tokens.size) for split, tokens in streams.items()},
        "files": {p.relative_to(out_dir).as_posix(): {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in files},
    }
    write_text_atomic(paths.manifest, json.dumps(manifest, indent=2) + "\n")
    return paths
