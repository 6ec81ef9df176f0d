"""Per-phase data views inside a data folder, for container engines that mount folders, not globs.

The challenge keeps both splits side by side (`datasets/<name>/fineweb_{train,val}_*.bin`) and the
tokenizer elsewhere (`tokenizers/<file>`). A container's train phase must see only the training
shards and the tokenizer, its eval phase only the validation shards (and byte sidecars) and the
tokenizer; `make_views` builds `ROOT/.pgolf/<name>/train` and `.../val` holding exactly those, as
hard links (same filesystem: instant, no extra space). The engine then bind-mounts each view
read-only as the phase's DATA_PATH, so the isolation is the engine's.

A bind mount holds the folder's inode, so a view folder is synced in place — stale entries removed,
missing or changed ones linked — and never deleted or recreated; running it again changes nothing.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from harness.data.shards import train_shards, val_byte_sidecars, val_shards
from harness.findings import UsageError

VIEWS = ".pgolf"


@dataclass(frozen=True)
class Views:
    train: Path  # training shards + tokenizer
    val: Path    # validation shards (+ byte sidecars) + tokenizer


def _owned_dir(path: Path, owner: os.stat_result) -> None:
    """Create `path` if missing; when running as root, give it the data folder's owner, so the
    views a container made do not end up root-owned in a user's folder."""
    path.mkdir(exist_ok=True)
    if os.geteuid() == 0:
        os.chown(path, owner.st_uid, owner.st_gid)


def _same_file(a: Path, b: Path) -> bool:
    try:
        sa, sb = a.stat(), b.stat()
    except FileNotFoundError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def sync_view(folder: Path, files: list[Path]) -> None:
    """Make `folder` hold exactly `files` (by name), hard-linked, without recreating the folder.
    Where hard links are impossible (another filesystem) the file is copied."""
    wanted = {path.name: path for path in files}
    for entry in folder.iterdir():
        if entry.name not in wanted:
            if entry.is_dir() and not entry.is_symlink():
                raise UsageError(f"{entry}: unexpected folder inside a data view; remove it")
            entry.unlink()
    for name, source in wanted.items():
        target = folder / name
        if _same_file(source, target):
            continue
        temp = folder / f".{name}.tmp"
        temp.unlink(missing_ok=True)
        try:
            os.link(source, temp)
        except OSError:
            shutil.copy2(source, temp)
        os.replace(temp, target)


def make_views(root: Path, dataset: str, tokenizer: str) -> Views:
    """Views of ROOT/datasets/DATASET with ROOT/tokenizers/TOKENIZER, in ROOT/.pgolf/DATASET/."""
    shards, model = root / "datasets" / dataset, root / "tokenizers" / tokenizer
    if not shards.is_dir():
        raise UsageError(f"{shards}: no such dataset folder (expected ROOT/datasets/{dataset})")
    if not model.is_file():
        raise UsageError(f"{model}: no such tokenizer file (expected ROOT/tokenizers/{tokenizer})")
    train, val = train_shards(shards), val_shards(shards)
    if not train or not val:
        raise UsageError(f"{shards}: needs fineweb_train_*.bin and fineweb_val_*.bin shards; found {len(train)} "
                         f"training and {len(val)} validation shard(s)")
    owner = root.stat()
    base = root / VIEWS / dataset
    for folder in (root / VIEWS, base, base / "train", base / "val"):
        _owned_dir(folder, owner)
    views = Views(base / "train", base / "val")
    sync_view(views.train, [*train, model])
    sync_view(views.val, [*val, *val_byte_sidecars(shards), model])
    return views
