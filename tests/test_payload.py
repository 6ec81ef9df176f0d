"""harness.run.payload: what a submission carries is counted by one rule, and a hostile folder never
stops the scan."""
import os
import socket
import subprocess

import pytest

from harness.findings import UsageError
from harness.run import payload
from harness.run.judge import artifact_findings


def codes(findings):
    return {f.code: f.status for f in findings}


def test_names_count_and_files_count(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "weights.bin").write_bytes(b"x" * 100)
    for i in range(50):  # data hidden in names: each name is counted
        (tmp_path / f"{i:04d}{'a' * 200}").touch()
    found = payload.scan(tmp_path)
    assert found.file_bytes == 100
    assert found.name_bytes == len("m") + len("m/weights.bin") + 50 * 204
    assert found.total == found.file_bytes + found.name_bytes and not found.refused


@pytest.mark.parametrize("kind", ["symlink", "dangling symlink", "folder symlink", "hard link", "fifo", "socket"])
def test_anything_but_plain_files_and_folders_is_refused(tmp_path, kind):
    art = tmp_path / "artifact"
    art.mkdir()
    (art / "model.pt").write_bytes(b"m" * 10)
    if kind == "symlink":
        (art / "extra").symlink_to(art / "model.pt")
    elif kind == "dangling symlink":
        (art / "extra").symlink_to("/nonexistent/" + "w" * 3000)  # the model in the target's text
    elif kind == "folder symlink":
        (tmp_path / "outside").mkdir()
        (tmp_path / "outside" / "big.bin").write_bytes(b"b" * 1000)
        (art / "extra").symlink_to(tmp_path / "outside")
    elif kind == "hard link":
        os.link(art / "model.pt", tmp_path / "elsewhere")
    elif kind == "fifo":
        os.mkfifo(art / "extra")
    else:
        with socket.socket(socket.AF_UNIX) as s:
            s.bind(str(art / "extra"))
    found = payload.scan(art)
    assert found.refused and found.refused[0][1] in ("symlink", "hard link", "fifo", "socket")
    findings, _ = artifact_findings(found, payload.scan(tmp_path / "artifact"), 16_000_000)
    assert codes(findings)["size.artifact_entry"] == "fail"


def test_deep_long_and_many_never_raise(tmp_path):
    fd = os.open(tmp_path, os.O_RDONLY)
    for _ in range(30):  # 6,000 characters deep: past PATH_MAX, made through directory descriptors
        os.mkdir("d" * 200, dir_fd=fd)
        fd, parent = os.open("d" * 200, os.O_RDONLY, dir_fd=fd), fd
        os.close(parent)
    os.close(fd)
    for i in range(3000):
        (tmp_path / f"f{i}").touch()
    found = payload.scan(tmp_path)
    assert len(found.files) == 3000 and found.folders
    assert found.unreadable and found.unreadable[0][1] == "File name too long"  # a finding, not a crash


def test_changes_name_what_happened(tmp_path):
    (tmp_path / "a").write_text("1")
    (tmp_path / "b").write_text("2")
    before = payload.scan(tmp_path)
    (tmp_path / "a").write_text("3")
    (tmp_path / "b").unlink()
    (tmp_path / "c").write_text("4")
    assert payload.changes(before, payload.scan(tmp_path)) == [("a", "changed"), ("b", "removed"), ("c", "added")]
    assert before.digest() != payload.scan(tmp_path).digest()


def test_staging_takes_every_code_file_and_no_docs(tmp_path):
    sub = tmp_path / "sub"
    (sub / "lib").mkdir(parents=True)
    for name in ("train_gpt.py", "prior.pt", "lib/helper.py", "README.md", "submission.json", "requirements.txt",
                 "train_seed1.log"):
        (sub / name).write_text("x")
    (sub / "__pycache__").mkdir()
    (sub / "__pycache__" / "x.pyc").write_text("x")
    staged = payload.stage_code(sub, tmp_path / "code")
    assert sorted(staged.files) == ["lib/helper.py", "prior.pt", "train_gpt.py"]
    (sub / "link").symlink_to(sub / "prior.pt")
    with pytest.raises(UsageError, match="symlink in the submission folder"):
        payload.stage_code(sub, tmp_path / "code2")


def test_extended_attributes_and_caches_count(tmp_path):
    """A model in a file's xattrs or in a __pycache__ folder of the artifact is still the artifact's bytes."""
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "m.pyc").write_bytes(b"w" * 500)
    (tmp_path / "model.pt").write_bytes(b"m")
    try:
        os.setxattr(tmp_path / "model.pt", "user.weights", b"x" * 1000)
    except OSError:
        pytest.skip("this filesystem keeps no user xattrs")
    found = payload.scan(tmp_path)
    assert found.files["model.pt"][0] == 1 + len("user.weights") + 1000
    assert found.files["__pycache__/m.pyc"][0] == 500


def test_the_plain_copy_keeps_what_counts_and_nothing_else(tmp_path):
    """Times, modes, holes, preallocated blocks and creation order a job chose do not survive into eval's
    artifact; content, names, folders and xattrs (all counted) do, so the fingerprint is unchanged."""
    art = tmp_path / "artifact"
    (art / "deep" / "er").mkdir(parents=True)
    for i, name in enumerate(["z", "a", "m", "deep/er/w"]):  # made out of name order
        (art / name).write_bytes(bytes([i]) * (i + 1))
        os.chmod(art / name, 0o600 + i)
        os.utime(art / name, ns=(i * 10**15 + 123, i * 10**15 + 456789))
    with open(art / "sparse", "wb") as f:  # a hole: content reads as zeros, the layout is not content
        f.seek(1 << 20)
        f.write(b"end")
    (art / "prealloc").write_bytes(b"abc")  # 3 bytes of content, a megabyte of blocks past its end
    subprocess.run(["fallocate", "--keep-size", "--length", str(1 << 20), art / "prealloc"], check=True)
    assert os.stat(art / "prealloc").st_blocks * 512 >= (1 << 20)
    try:
        os.setxattr(art / "a", "user.k", b"v" * 10)
    except OSError:
        pytest.skip("this filesystem keeps no user xattrs")
    written = payload.scan(art)
    payload.replace_with_plain_copy(art, written)
    plain = payload.scan(art)
    assert plain.fingerprint() == written.fingerprint()
    assert os.getxattr(art / "a", "user.k") == b"v" * 10
    entries = [art / p for p in [*plain.files, *plain.folders]] + [art]
    assert {os.stat(p).st_mtime_ns for p in entries} == {payload.PLAIN_TIME_NS}
    assert {os.stat(p).st_mode & 0o7777 for p in entries} == {payload.PLAIN_FILE_MODE, payload.PLAIN_FOLDER_MODE}
    assert os.stat(art / "sparse").st_blocks * 512 >= (1 << 20)  # every block written
    assert os.stat(art / "prealloc").st_blocks * 512 < (1 << 20)
    inodes = [os.stat(art / name).st_ino for name in sorted(["z", "a", "m", "sparse", "prealloc"])]
    assert inodes == sorted(inodes)  # made in name order, whatever order the job made them in
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifact"]  # nothing left beside it


def test_staged_code_keeps_only_the_executable_bit(tmp_path):
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "train_gpt.py").write_text("x")
    (sub / "run.sh").write_text("x")
    os.chmod(sub / "run.sh", 0o700)
    os.utime(sub / "train_gpt.py", ns=(1, 2))
    code = tmp_path / "code"
    payload.stage_code(sub, code)
    assert os.stat(code / "run.sh").st_mode & 0o7777 == payload.PLAIN_RUNNABLE_MODE
    assert os.stat(code / "train_gpt.py").st_mode & 0o7777 == payload.PLAIN_FILE_MODE
    assert os.stat(code / "train_gpt.py").st_mtime_ns == payload.PLAIN_TIME_NS
