"""The published data variants as data: where each lives and what a correct copy looks like.

variants.yaml beside this file holds the facts with their sources; it is validated against
schemas/data_variants.schema.json on load, so a bad edit names the offending key.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib.resources import files

import yaml

from harness.validation import errors


class DataError(Exception):
    """A data operation cannot proceed; the message is one line a participant can act on."""


@dataclass(frozen=True)
class Variant:
    name: str
    title: str
    repo_id: str | None
    remote_root: str
    dataset: str
    tokenizer_file: str
    tokenizer_kind: str
    vocab_size: int
    known_sha256: tuple[tuple[str, str], ...]  # (sha256, where that copy was seen)
    val_tokens: int
    eval_seq_len: int
    train_shards: int | None
    byte_sidecar: bool
    aliases: tuple[str, ...] = ()

    def scored(self, total_tokens: int) -> int:
        """The validation count a training script logs for `total_tokens` (tail trimmed to whole sequences)."""
        return max(0, (total_tokens - 1) // self.eval_seq_len * self.eval_seq_len)


@cache
def variants() -> dict[str, Variant]:
    """All known variants by name, from the bundled variants.yaml."""
    raw = yaml.safe_load(files("harness.data").joinpath("variants.yaml").read_text("utf-8"))
    problems = list(errors("urn:pgolf:data_variants", raw))
    if problems:
        raise DataError("variants.yaml: " + "; ".join(problems))
    return {
        name: Variant(
            name=name, title=v["title"], repo_id=v["repo_id"], remote_root=v["remote_root"],
            dataset=v["dataset"], tokenizer_file=v["tokenizer"]["file"], tokenizer_kind=v["tokenizer"]["kind"],
            vocab_size=v["tokenizer"]["vocab_size"],
            known_sha256=tuple((k["sha256"], k["seen_in"]) for k in v["tokenizer"]["known_sha256"]),
            val_tokens=v["val_tokens"], eval_seq_len=v["eval_seq_len"], train_shards=v["train_shards"],
            byte_sidecar=v["byte_sidecar"], aliases=tuple(v.get("aliases", ())),
        )
        for name, v in raw["variants"].items()
    }


def get_variant(name: str) -> Variant:
    """The variant called `name` (or one of its aliases); DataError listing the known ones otherwise."""
    for variant in variants().values():
        if name == variant.name or name in variant.aliases:
            return variant
    known = ", ".join(f"{v.name} ({', '.join(v.aliases)})" if v.aliases else v.name for v in variants().values())
    raise DataError(f"unknown data variant {name!r}; known: {known}")


def variant_for_dataset(folder_name: str) -> Variant | None:
    """The variant whose dataset folder is called `folder_name`, e.g. fineweb10B_sp8192."""
    return next((v for v in variants().values() if v.dataset == folder_name), None)
