"""Fetching a variant from a fake hub repository on disk: layout, resume, verification, errors. No network."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from harness.data.fetch import FetchError, HubSource, LocalSource, fetch
from harness.data.shards import read_shard, write_shard
from harness.data.variants import DataError

SP1024 = "fineweb10B_sp1024"
CASEOPS = "fineweb10B_sp8192_lossless_caps_caseops_v1_reserved"


def make_hub(root: Path, dataset: str = SP1024, n_val: int = 2, n_train: int = 3, sidecars: bool = False,
             tokenizer: str = "fineweb_1024_bpe") -> Path:
    """A folder laid out like the hub repository: datasets/{manifest.json, datasets/, tokenizers/}."""
    base = root / "datasets"
    rng = np.random.default_rng(0)
    for split, n in (("val", n_val), ("train", n_train)):
        for i in range(n):
            tokens = np.concatenate([[1], rng.integers(4, 1024, size=500 + i)])
            write_shard(base / "datasets" / dataset / f"fineweb_{split}_{i:06d}.bin", tokens)
            if sidecars and split == "val":
                write_shard(base / "datasets" / dataset / f"fineweb_val_bytes_{i:06d}.bin", np.ones(len(tokens)))
    (base / "tokenizers").mkdir(parents=True)
    (base / "tokenizers" / f"{tokenizer}.model").write_bytes(b"model bytes")
    (base / "tokenizers" / f"{tokenizer}.vocab").write_text("vocab text")
    entry = {"name": dataset, "tokenizer_name": "tok", "stats": {"files_val": n_val, "files_train": n_train}}
    if sidecars:
        entry["val_bytes_glob"] = f"datasets/{dataset}/fineweb_val_bytes_*.bin"
    manifest = {"datasets": [entry], "tokenizers": [
        {"name": "tok", "model_path": f"tokenizers/{tokenizer}.model", "vocab_path": f"tokenizers/{tokenizer}.vocab"}]}
    (base / "manifest.json").write_text(json.dumps(manifest))
    return root


class Recording(LocalSource):
    """Counts what is fetched; can crash like a killed process halfway through the n-th shard."""

    def __init__(self, root: Path, crash_at: str | None = None):
        super().__init__(root)
        self.calls: list[str] = []
        self.crash_at = crash_at

    def get(self, remote: str, target: Path) -> None:
        self.calls.append(remote)
        if self.crash_at and remote.endswith(self.crash_at):
            data = (self.base / remote).read_bytes()
            target.write_bytes(data[: len(data) // 2])
            raise KeyboardInterrupt
        super().get(remote, target)


def leftovers(dest: Path) -> list[Path]:
    return [p for p in dest.rglob("*") if p.name.startswith(".")]


def test_full_fetch_lays_files_out_like_the_challenge_script(tmp_path):
    hub = make_hub(tmp_path / "hub")
    dest = tmp_path / "data"
    report = fetch("sp1024", dest, train_shards=2, source=LocalSource(hub), progress=False)
    folder = dest / "datasets" / SP1024
    assert sorted(p.name for p in folder.iterdir()) == [
        "fineweb_train_000000.bin", "fineweb_train_000001.bin", "fineweb_val_000000.bin", "fineweb_val_000001.bin"]
    remote = hub / "datasets" / "datasets" / SP1024 / "fineweb_val_000001.bin"
    assert np.array_equal(read_shard(folder / "fineweb_val_000001.bin"), read_shard(remote))
    assert (dest / "tokenizers" / "fineweb_1024_bpe.model").read_bytes() == b"model bytes"
    assert report.dataset_dir == folder and len(report.downloaded) == 6 and report.skipped == []
    assert report.tokenizer_files == [dest / "tokenizers" / "fineweb_1024_bpe.model",
                                      dest / "tokenizers" / "fineweb_1024_bpe.vocab"]
    assert leftovers(dest) == []
    json.dumps(report.to_dict())
    assert "6 downloaded" in report.render()


def test_rerun_skips_complete_files_and_replaces_broken_ones(tmp_path):
    hub = make_hub(tmp_path / "hub")
    dest = tmp_path / "data"
    fetch("sp1024", dest, train_shards=1, source=LocalSource(hub), progress=False)
    broken = dest / "datasets" / SP1024 / "fineweb_val_000000.bin"
    broken.write_bytes(broken.read_bytes()[:-2])  # truncated by some other tool
    source = Recording(hub)
    report = fetch("sp1024", dest, train_shards=1, source=source, progress=False)
    assert source.calls == ["manifest.json", f"datasets/{SP1024}/fineweb_val_000000.bin"]
    assert report.downloaded == [f"datasets/{SP1024}/fineweb_val_000000.bin"] and len(report.skipped) == 4
    assert broken.stat().st_size == (hub / "datasets" / "datasets" / SP1024 / broken.name).stat().st_size


def test_resume_after_a_crash_mid_file(tmp_path):
    hub = make_hub(tmp_path / "hub")
    dest = tmp_path / "data"
    folder = dest / "datasets" / SP1024
    with pytest.raises(KeyboardInterrupt):
        fetch("sp1024", dest, train_shards=3, source=Recording(hub, crash_at="fineweb_train_000001.bin"),
              progress=False)
    assert not (folder / "fineweb_train_000001.bin").exists()  # never half a file under the real name
    assert (folder / "fineweb_train_000000.bin").exists() and leftovers(dest) == []
    (folder / ".fineweb_train_000002.bin.part").write_bytes(b"left by kill -9")
    source = Recording(hub)
    report = fetch("sp1024", dest, train_shards=3, source=source, progress=False)
    assert source.calls[1:] == [f"datasets/{SP1024}/fineweb_train_{i:06d}.bin" for i in (1, 2)] + [
        "tokenizers/fineweb_1024_bpe.model", "tokenizers/fineweb_1024_bpe.vocab"]
    assert len(report.skipped) == 3 and leftovers(dest) == []
    assert all(len(read_shard(folder / f"fineweb_train_{i:06d}.bin")) == 501 + i for i in range(3))


def test_caseops_alias_fetches_byte_sidecars(tmp_path):
    hub = make_hub(tmp_path / "hub", dataset=CASEOPS, n_val=2, n_train=1, sidecars=True,
                   tokenizer="fineweb_8192_bpe_lossless_caps_caseops_v1_reserved")
    report = fetch("caseops", tmp_path / "data", train_shards=0, source=LocalSource(hub), progress=False)
    assert report.variant == "sp8192_lossless_caps_caseops_v1_reserved"
    assert sorted(p.name for p in report.dataset_dir.iterdir()) == [
        "fineweb_val_000000.bin", "fineweb_val_000001.bin", "fineweb_val_bytes_000000.bin",
        "fineweb_val_bytes_000001.bin"]


@pytest.mark.parametrize("damage", ["magic", "truncate"])
def test_corrupted_remote_shard_is_caught_before_it_lands(tmp_path, damage):
    hub = make_hub(tmp_path / "hub")
    bad = hub / "datasets" / "datasets" / SP1024 / "fineweb_val_000001.bin"
    data = bytearray(bad.read_bytes())
    if damage == "magic":
        data[0] ^= 0xFF
    else:
        del data[-100:]
    bad.write_bytes(bytes(data))
    dest = tmp_path / "data"
    with pytest.raises(FetchError, match=r"fineweb_val_000001\.bin is not a valid shard: .*(magic|header promises)") as exc:
        fetch("sp1024", dest, train_shards=0, source=LocalSource(hub), progress=False)
    assert "\n" not in str(exc.value)
    assert not (dest / "datasets" / SP1024 / "fineweb_val_000001.bin").exists() and leftovers(dest) == []
    assert (dest / "datasets" / SP1024 / "fineweb_val_000000.bin").exists()


def test_missing_remote_file_is_named(tmp_path):
    hub = make_hub(tmp_path / "hub")
    (hub / "datasets" / "datasets" / SP1024 / "fineweb_train_000001.bin").unlink()
    with pytest.raises(FetchError, match=rf"no file datasets/datasets/{SP1024}/fineweb_train_000001\.bin"):
        fetch("sp1024", tmp_path / "data", train_shards=2, source=LocalSource(hub), progress=False)


def test_unknown_variant_lists_the_known_ones(tmp_path):
    with pytest.raises(DataError, match=r"unknown data variant 'sp999'; known: sp1024, sp4096, sp8192, .*caseops.*byte260"):
        fetch("sp999", tmp_path / "data", source=LocalSource(make_hub(tmp_path / "hub")), progress=False)


def test_too_many_train_shards_says_how_many_exist(tmp_path):
    hub = make_hub(tmp_path / "hub", n_train=3)
    dest = tmp_path / "data"
    with pytest.raises(FetchError, match=r"sp1024 has 3 training shards on .*; asked for 4"):
        fetch("sp1024", dest, train_shards=4, source=LocalSource(hub), progress=False)
    assert not dest.exists()  # refused before downloading anything


def test_dataset_missing_from_the_manifest_is_named(tmp_path):
    hub = make_hub(tmp_path / "hub")
    with pytest.raises(FetchError, match=r"no dataset fineweb10B_sp8192 \(it has: fineweb10B_sp1024\)"):
        fetch("sp8192", tmp_path / "data", source=LocalSource(hub), progress=False)


def test_manifest_paths_cannot_escape_dest(tmp_path):
    hub = make_hub(tmp_path / "hub")
    manifest_path = hub / "datasets" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["tokenizers"][0]["model_path"] = "../../outside.model"
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(FetchError, match="unsafe path '../../outside.model'"):
        fetch("sp1024", tmp_path / "data", train_shards=0, source=LocalSource(hub), progress=False)


def test_variant_without_known_repository_needs_a_source(tmp_path):
    with pytest.raises(FetchError, match="byte260: no known hub repository"):
        fetch("byte260", tmp_path / "data", progress=False)


def test_hub_source_links_the_cached_blob_and_maps_errors(tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    hub = make_hub(tmp_path / "hub", n_train=0)  # stands in for the hub client's cache of blobs
    asked = []

    def fake_download(repo_id, filename, *, repo_type, revision):
        asked.append((repo_id, filename, repo_type))
        if filename.endswith("missing.bin"):
            raise EntryNotFoundError("404")
        if filename.endswith("offline.bin"):
            raise LocalEntryNotFoundError("offline")
        snapshot = tmp_path / "snapshot" / filename  # the cache hands out symlinks to blobs
        snapshot.parent.mkdir(parents=True, exist_ok=True)
        snapshot.unlink(missing_ok=True)
        snapshot.symlink_to(hub / filename)
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    dest = tmp_path / "data"
    stale = dest / "datasets" / SP1024 / ".fineweb_val_000000.bin.part"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"left by kill -9")
    fetch("sp1024", dest, train_shards=0, source=HubSource("someone/parameter-golf"), progress=False)
    assert asked[:2] == [("someone/parameter-golf", "datasets/manifest.json", "dataset"),
                         ("someone/parameter-golf", f"datasets/datasets/{SP1024}/fineweb_val_000000.bin", "dataset")]
    got, blob = dest / "datasets" / SP1024 / "fineweb_val_000000.bin", hub / "datasets" / "datasets" / SP1024 / "fineweb_val_000000.bin"
    assert not got.is_symlink() and got.stat().st_ino == blob.stat().st_ino  # a hard link, not a second copy
    assert leftovers(dest) == []
    source = HubSource("someone/parameter-golf")
    with pytest.raises(FetchError, match=r"hf:someone/parameter-golf: no file datasets/missing\.bin"):
        source.get("missing.bin", tmp_path / "x")
    with pytest.raises(FetchError, match=r"cannot reach the hub and datasets/offline\.bin is not cached"):
        source.get("offline.bin", tmp_path / "y")


def test_cli_fetch_from_a_local_hub_then_verify(tmp_path):
    import subprocess
    import sys

    hub = make_hub(tmp_path / "hub", n_train=2)
    pgolf = [sys.executable, "-m", "harness", "data"]
    run = subprocess.run([*pgolf, "fetch", "--variant", "sp1024", "--train-shards", "1", "--dest", tmp_path / "d",
                          "--from-dir", hub, "-q"], capture_output=True, text=True)
    assert run.returncode == 1 and run.stderr == ""  # fetched fine; the fake val set is not the canonical one
    fetched = tmp_path / "d" / "datasets" / SP1024
    assert sorted(p.name for p in fetched.iterdir()) == ["fineweb_train_000000.bin", "fineweb_val_000000.bin",
                                                          "fineweb_val_000001.bin"]
    verify = subprocess.run([*pgolf, "verify", fetched, "--json"], capture_output=True, text=True)
    report = json.loads(verify.stdout)
    assert verify.returncode == 1 and report["variant"] == "sp1024" and report["val_shards"] == 2
    assert any("canonical" in p["message"] for p in report["problems"])
    bad = subprocess.run([*pgolf, "fetch", "--variant", "sp9999", "--dest", tmp_path / "x"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "known: sp1024" in bad.stderr and "Traceback" not in bad.stderr


def test_cli_verify_on_the_demo_passes(tmp_path):
    import subprocess
    import sys

    from harness.data.demo import DEMO_DIR

    run = subprocess.run([sys.executable, "-m", "harness", "data", "verify",
                          DEMO_DIR / "datasets/fineweb10B_demo1024"],
                         capture_output=True, text=True)
    assert run.returncode == 0 and "variant demo1024" in run.stdout and "canonical 50,018" in run.stdout
