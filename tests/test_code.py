"""Counted code: which files count, and the regenerated self-extracting wrapper."""
from __future__ import annotations

import subprocess
import sys

from harness.code import counted_bytes, is_wrapper, scan_code, wrapper

SCRIPT = '''"""A tiny training script."""
import math
import os

def lr(step, total):
    """Cosine schedule."""
    return 0.5 * (1 + math.cos(math.pi * step / total))

if __name__ == "__main__":
    print(os.environ.get("SEED", "1"), round(lr(3, 10), 6))
'''


def test_wrapper_runs_the_same_program(tmp_path, rules):
    (tmp_path / "train_gpt.py").write_text(SCRIPT)
    wrapped = wrapper(SCRIPT.encode(), rules)
    (tmp_path / "wrapped.py").write_bytes(wrapped)
    assert wrapped.startswith(b'import lzma as L,base64 as B\nexec(L.decompress(B.b85decode("')
    assert wrapped.endswith(b'")))\n') and wrapped.count(b"\n") == 2
    run = lambda name: subprocess.run([sys.executable, name], cwd=tmp_path, capture_output=True, text=True,  # noqa: E731
                                      env={"SEED": "7"}, check=True).stdout
    assert run("wrapped.py") == run("train_gpt.py") == "7 0.793893\n"
    assert is_wrapper(wrapped) and not is_wrapper(SCRIPT.encode())


def test_wrapper_is_deterministic_and_drops_docstrings(rules):
    once, twice = wrapper(SCRIPT.encode(), rules), wrapper(SCRIPT.encode(), rules)
    assert once == twice
    import base64
    import lzma
    inner = lzma.decompress(base64.b85decode(once.split(b'"')[1])).decode()
    assert "Cosine schedule" not in inner and "def lr(step,total)" in inner


def test_files_imported_execd_or_named_are_counted(tmp_path, rules):
    (tmp_path / "train_gpt.py").write_text(
        "import helpers.tilt\nexec(open('decode.py').read())\nKERNEL = './kernels/fused.cpp'\n"
        "import numpy, brotli\nfrom flash_attn_interface import flash_attn_func\n")
    (tmp_path / "helpers").mkdir()
    (tmp_path / "helpers" / "tilt.py").write_text("import zstandard\n")
    (tmp_path / "decode.py").write_text("x = 1\n")
    (tmp_path / "kernels").mkdir()
    (tmp_path / "kernels" / "fused.cpp").write_text("int main() { return 0; }\n")
    (tmp_path / "unused.py").write_text("y = 2\n")
    scan = scan_code(tmp_path, rules)
    counted = [p.relative_to(tmp_path).as_posix() for p in scan.counted]
    assert counted[0] == "train_gpt.py"
    assert sorted(counted[1:]) == ["decode.py", "helpers/tilt.py", "kernels/fused.cpp"]
    assert scan.reasons["helpers/tilt.py"] == "imported by train_gpt.py:1"
    assert set(scan.third_party) == {"brotli", "flash_attn_interface", "zstandard"}
    sizes = counted_bytes(tmp_path, scan, compressed=False, rules=rules)
    assert sizes.total == sum(p.stat().st_size for p in scan.counted) and sizes.method == "as shipped"


def test_shipped_wrapper_is_counted_as_shipped(tmp_path, rules):
    (tmp_path / "train_gpt.py").write_bytes(wrapper(SCRIPT.encode(), rules))
    scan = scan_code(tmp_path, rules)
    sizes = counted_bytes(tmp_path, scan, compressed=True, rules=rules)
    assert sizes.method == "as shipped" and sizes.total == (tmp_path / "train_gpt.py").stat().st_size
