"""Download a data variant the way the challenge's script lays it out, but safe to interrupt.

dest/datasets/fineweb10B_<variant>/ gets every validation shard (and byte sidecar), the first N
training shards; dest/tokenizers/ gets the tokenizer files named by the hub repository's
manifest.json. Each file lands in a hidden `.NAME.part` beside its target, shards are header-checked
there, and only then renamed: a crash never leaves a half file under a real name, and a rerun skips
what is complete. The remote is a `Source` so tests (and offline mirrors) use a local folder.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from tqdm import tqdm

from harness.data.shards import ShardError, read_header
from harness.data.variants import DataError, get_variant

DEFAULT_TRAIN_SHARDS = 80  # the challenge's default: 8B training tokens


class FetchError(DataError):
    """The download cannot complete; the message names the variant, file or source at fault."""


class Source(Protocol):
    label: str

    def get(self, remote: str, target: Path) -> None:
        """Write the file at `remote` (a path under the remote root) to `target`; FetchError if absent."""


class LocalSource:
    """A folder laid out like the hub repository: <root>/<remote_root>/manifest.json, datasets/, tokenizers/."""

    def __init__(self, root: Path, remote_root: str = "datasets"):
        self.base = Path(root) / remote_root
        self.label = str(root)

    def get(self, remote: str, target: Path) -> None:
        path = self.base / remote
        if not path.is_file():
            raise FetchError(f"{self.label}: no file {path.relative_to(self.base.parent)}")
        shutil.copyfile(path, target)


class HubSource:
    """A Hugging Face dataset repository; the hub client's cache resumes interrupted transfers."""

    def __init__(self, repo_id: str, remote_root: str = "datasets", revision: str | None = None):
        self.repo_id, self.remote_root, self.revision = repo_id, remote_root, revision
        self.label = f"hf:{repo_id}" + (f"@{revision}" if revision else "")

    def get(self, remote: str, target: Path) -> None:
        try:
            from huggingface_hub import hf_hub_download
            from huggingface_hub.errors import (EntryNotFoundError, LocalEntryNotFoundError,
                                                RepositoryNotFoundError, RevisionNotFoundError)
        except ImportError:
            raise FetchError("downloading needs huggingface_hub: pip install huggingface_hub") from None
        name = f"{self.remote_root}/{remote}"
        try:
            cached = hf_hub_download(self.repo_id, name, repo_type="dataset", revision=self.revision)
        except LocalEntryNotFoundError:
            raise FetchError(f"{self.label}: cannot reach the hub and {name} is not cached") from None
        except EntryNotFoundError:
            raise FetchError(f"{self.label}: no file {name}") from None
        except (RepositoryNotFoundError, RevisionNotFoundError):
            raise FetchError(f"{self.label}: dataset repository not found (or private/gated)") from None
        except OSError as exc:  # HTTP and network errors
            raise FetchError(f"{self.label}: downloading {name} failed: {str(exc).splitlines()[0]}") from None
        blob = Path(cached).resolve(strict=True)  # cache entries are symlinks to blobs
        try:
            os.link(blob, target)  # no second copy of multi-GB data when the cache is on the same disk
        except OSError:
            shutil.copyfile(blob, target)


@dataclass
class FetchReport:
    variant: str
    source: str
    dataset_dir: Path
    tokenizer_files: list[Path]
    downloaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "dataset_dir": str(self.dataset_dir),
                "tokenizer_files": [str(p) for p in self.tokenizer_files]}

    def render(self) -> str:
        return (f"{self.variant} from {self.source}: {len(self.downloaded)} downloaded, "
                f"{len(self.skipped)} already present\n  data:      {self.dataset_dir}\n"
                + "".join(f"  tokenizer: {p}\n" for p in self.tokenizer_files)).rstrip("\n")


def fetch(variant: str, dest: Path = Path("data"), train_shards: int = DEFAULT_TRAIN_SHARDS,
          source: Source | None = None, progress: bool = True) -> FetchReport:
    """Download all validation shards, the first `train_shards` training shards and the tokenizer."""
    v = get_variant(variant)
    if train_shards < 0:
        raise FetchError(f"train_shards must be 0 or more, got {train_shards}")
    if source is None:
        if v.repo_id is None:
            raise FetchError(f"{v.name}: no known hub repository publishes it; pass a source")
        source = HubSource(v.repo_id, v.remote_root)
    dataset, tokenizer = _entries(_manifest(source), v.dataset, source.label)
    stats = dataset.get("stats") or {}
    n_val, n_train = stats.get("files_val"), stats.get("files_train")
    if not isinstance(n_val, int) or not isinstance(n_train, int):
        raise FetchError(f"{source.label}: manifest.json gives no stats.files_val/files_train for {v.dataset}")
    if train_shards > n_train:
        raise FetchError(f"{v.name} has {n_train} training shards on {source.label}; asked for {train_shards}")

    folder = f"datasets/{v.dataset}"
    shards = [f"{folder}/fineweb_val_{i:06d}.bin" for i in range(n_val)]
    if dataset.get("val_bytes_glob") or v.byte_sidecar:
        shards += [f"{folder}/fineweb_val_bytes_{i:06d}.bin" for i in range(n_val)]
    shards += [f"{folder}/fineweb_train_{i:06d}.bin" for i in range(train_shards)]
    tokenizer_files = [str(tokenizer[k]) for k in ("model_path", "vocab_path", "path") if tokenizer.get(k)]
    if not tokenizer_files:
        raise FetchError(f"{source.label}: manifest.json names no file for tokenizer {tokenizer.get('name')!r}")

    dest = Path(dest)
    report = FetchReport(v.name, source.label, dest / folder, [dest / _safe(f) for f in tokenizer_files])
    plan = [(remote, True) for remote in shards] + [(remote, False) for remote in tokenizer_files]
    with tqdm(total=len(plan), unit="file", desc=v.name, disable=not progress) as bar:
        for remote, is_shard in plan:
            bar.set_postfix_str(PurePosixPath(remote).name, refresh=False)
            if _complete(dest / _safe(remote), is_shard):
                report.skipped.append(remote)
            else:
                _download(source, remote, dest / _safe(remote), is_shard)
                report.downloaded.append(remote)
            bar.update()
    return report


def _manifest(source: Source) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "manifest.json"
        source.get("manifest.json", path)
        try:
            manifest = json.loads(path.read_text("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise FetchError(f"{source.label}: manifest.json is not valid JSON ({exc})") from None
    if not isinstance(manifest, dict):
        raise FetchError(f"{source.label}: manifest.json is not a JSON object")
    return manifest


def _entries(manifest: dict[str, Any], dataset: str, label: str) -> tuple[dict, dict]:
    """The manifest's entries for `dataset` and for the tokenizer it was made with."""
    datasets = [d for d in manifest.get("datasets") or [] if isinstance(d, dict)]
    entry = next((d for d in datasets if d.get("name") == dataset), None)
    if entry is None:
        names = ", ".join(str(d.get("name")) for d in datasets) or "none"
        raise FetchError(f"{label}: manifest.json has no dataset {dataset} (it has: {names})")
    tokenizers = [t for t in manifest.get("tokenizers") or [] if isinstance(t, dict)]
    tokenizer = next((t for t in tokenizers if t.get("name") == entry.get("tokenizer_name")), None)
    if tokenizer is None:
        raise FetchError(f"{label}: manifest.json has no tokenizer {entry.get('tokenizer_name')!r} for {dataset}")
    return entry, tokenizer


def _safe(remote: str) -> PurePosixPath:
    """A manifest path that stays inside dest (no absolute paths, no '..')."""
    path = PurePosixPath(remote)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise FetchError(f"manifest.json names an unsafe path {remote!r}")
    return path


def _complete(path: Path, is_shard: bool) -> bool:
    if not path.is_file():
        return False
    if not is_shard:
        return path.stat().st_size > 0
    try:
        read_header(path)
        return True
    except ShardError:
        return False  # e.g. truncated by another tool: download again


def _download(source: Source, remote: str, target: Path, is_shard: bool) -> None:
    """Fetch into `.NAME.part` beside target, check a shard's header there, then rename into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(f".{target.name}.part")
    part.unlink(missing_ok=True)  # left by a killed run; the hub cache keeps its own partial data
    try:
        source.get(remote, part)
        if is_shard:
            try:
                read_header(part)
            except ShardError as exc:
                detail = str(exc).removeprefix(f"{part}: ")
                raise FetchError(f"{source.label}: downloaded {remote} is not a valid shard: {detail}") from None
        os.replace(part, target)
    finally:
        part.unlink(missing_ok=True)
