"""Counted code: which files count, and the regenerated self-extracting wrapper."""
from __future__ import annotations

import base64
import lzma
import subprocess
import sys
from pathlib import Path

from harness import code
from harness.check.checker import check_folder
from harness.check.folder import folder_findings
from harness.code import counted_bytes, is_wrapper, scan_code, wrapper
from harness.findings import FAIL, WARN

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


def test_a_folder_without_train_gpt_py_is_followed_from_its_named_scripts(tmp_path, rules):
    """A real record ships train_gpt_v5.py: its code still counts (the missing name is a `files` finding)."""
    (tmp_path / "train_gpt_v5.py").write_text("import helper\n")
    (tmp_path / "helper.py").write_text("x = 1\n")
    (tmp_path / "notes.py").write_text("y = 2\n")
    scan = scan_code(tmp_path, rules)
    assert scan.entries == ["train_gpt_v5.py"]
    assert [p.name for p in scan.counted] == ["train_gpt_v5.py", "helper.py"]
    (tmp_path / "train_gpt.py").write_text("z = 3\n")  # with train_gpt.py only it is the entry
    assert [p.name for p in scan_code(tmp_path, rules).counted] == ["train_gpt.py"]


def test_shipped_wrapper_is_counted_as_shipped(tmp_path, rules):
    (tmp_path / "train_gpt.py").write_bytes(wrapper(SCRIPT.encode(), rules))
    scan = scan_code(tmp_path, rules)
    sizes = counted_bytes(tmp_path, scan, compressed=True, rules=rules)
    assert sizes.method == "as shipped" and sizes.total == (tmp_path / "train_gpt.py").stat().st_size


# --- the code model: plain and unpacked code, followed transitively --------------------------

GOLDEN = Path(__file__).parent / "golden"
A2 = GOLDEN / "real_wrapper_imports_helper_with_cpp" / "submission"


def test_real_wrapper_helper_and_kernel_are_counted(rules):
    """2026-04-09_A2: the lzma wrapper imports ngram_tilt.py, which names ngram/fused_expert_kernel.cpp."""
    scan = scan_code(A2, rules)
    assert [p.relative_to(A2).as_posix() for p in scan.counted] == \
        ["train_gpt.py", "ngram_tilt.py", "ngram/fused_expert_kernel.cpp"]
    assert scan.reasons["ngram_tilt.py"].startswith("imported by train_gpt.py:2 (line ")
    assert scan.reasons["ngram/fused_expert_kernel.cpp"].startswith("named in ngram_tilt.py:")
    assert scan.sources["train_gpt.py"].exec_line == 2 and "def main" in scan.sources["train_gpt.py"].text
    assert {"brotli", "flash_attn_interface"} <= set(scan.third_party)
    sizes = counted_bytes(A2, scan, compressed=False, rules=rules)
    assert sizes.per_file == {"train_gpt.py": 19387, "ngram_tilt.py": 8624, "ngram/fused_expert_kernel.cpp": 18406}


def test_real_wrapper_record_is_over_the_cap(rules):
    v = check_folder(A2, rules, profile="historic")
    over = [f for f in v.findings if f.code == "size.over_limit"]
    assert len(over) == 3 and all(f.status == FAIL and f.data["code_bytes"] == 46417 for f in over)
    mismatch = next(f for f in v.findings if f.code == "size.code_mismatch")
    assert "ngram_tilt.py 8,624" in mismatch.message and "ngram/fused_expert_kernel.cpp 18,406" in mismatch.message


HELPER = '''import os
from pathlib import Path
import zstandard
HERE = Path(__file__).parent
KERNEL = HERE / "csrc" / "tilt.cpp"
def build():
    from torch.utils.cpp_extension import load_inline
    return load_inline("tilt", cpp_sources=KERNEL.read_text())
'''


def _plant(folder: Path, entry: str, rules, wrap: bool) -> None:
    (folder / "csrc").mkdir(parents=True, exist_ok=True)
    (folder / "csrc" / "tilt.cpp").write_text("int tilt() { return 1; }\n")
    (folder / "tilt_helper.py").write_text(HELPER)
    (folder / "unused.cpp").write_text("int unused() { return 0; }\n")
    (folder / "train_gpt.py").write_bytes(wrapper(entry.encode(), rules) if wrap else entry.encode())


def test_wrapped_import_of_a_helper_that_builds_cpp_is_followed(tmp_path, rules):
    _plant(tmp_path, "import brotli\nfrom tilt_helper import build\nbuild()\n", rules, wrap=True)
    scan = scan_code(tmp_path, rules)
    assert sorted(scan.reasons) == ["csrc/tilt.cpp", "tilt_helper.py", "train_gpt.py"]
    assert "exec wrapper unpacks" in scan.reasons["tilt_helper.py"]
    assert scan.reasons["csrc/tilt.cpp"] == "named in tilt_helper.py:5"
    assert scan.third_party == {"brotli": ("train_gpt.py", 2), "zstandard": ("tilt_helper.py", 3)}


def test_plain_and_wrapped_imports_are_judged_the_same(tmp_path, rules):
    """The requirements rule reads the model, so hiding imports in a wrapper changes nothing."""
    entry = "import brotli\nfrom tilt_helper import build\nbuild()\n"
    verdicts = {}
    for wrap in (False, True):
        folder = tmp_path / str(wrap)
        _plant(folder, entry, rules, wrap)
        scan = scan_code(folder, rules)
        verdicts[wrap] = (sorted(scan.reasons), sorted(scan.third_party),
                          [f.status for f in folder_findings(folder, scan, rules, "strict")
                           if f.code == "files.requirements_missing"],
                          [f.status for f in folder_findings(folder, scan, rules, "historic")
                           if f.code == "files.requirements_missing"])
    assert verdicts[False] == verdicts[True]
    assert verdicts[True][1:] == (["brotli", "zstandard"], [FAIL], [WARN])


def test_exec_open_subprocess_and_joined_paths_are_followed(tmp_path, rules):
    (tmp_path / "train_gpt.py").write_text(
        "import os, subprocess\n"
        "exec(compile(open('decode.py').read(), 'decode.py', 'exec'))\n"
        "subprocess.run(['g++', os.path.join(os.path.dirname(__file__), 'kernels', 'fused.cu')])\n"
        "from pkg import mod\n")
    (tmp_path / "decode.py").write_text("from . import nothing_here\n")
    (tmp_path / "kernels").mkdir()
    (tmp_path / "kernels" / "fused.cu").write_text("__global__ void k() {}\n")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "mod.py").write_text("from .sibling import f\n")
    (tmp_path / "pkg" / "sibling.py").write_text("def f(): pass\n")
    scan = scan_code(tmp_path, rules)
    assert sorted(scan.reasons) == ["decode.py", "kernels/fused.cu", "pkg/__init__.py", "pkg/mod.py",
                                    "pkg/sibling.py", "train_gpt.py"]
    assert scan.third_party == {} and scan.limits == []


def test_a_chain_deeper_than_the_bound_is_a_finding(tmp_path, rules):
    for i in range(code.MAX_DEPTH + 3):
        name = "train_gpt.py" if i == 0 else f"m{i}.py"
        (tmp_path / name).write_text(f"import m{i + 1}\n" + (f"import m{i + 2}\n" if i == code.MAX_DEPTH else ""))
    scan = scan_code(tmp_path, rules)
    assert len(scan.counted) == code.MAX_DEPTH + 1
    assert len(scan.limits) == 1 and f"more than {code.MAX_DEPTH} references" in scan.limits[0]
    found = [f for f in folder_findings(tmp_path, scan, rules) if f.code == "files.code_model_limit"]
    assert [f.status for f in found] == [WARN]


def test_too_many_files_and_nested_wrappers_are_bounded(tmp_path, rules):
    (tmp_path / "train_gpt.py").write_text("".join(f"import m{i}\n" for i in range(code.MAX_FILES + 5)))
    for i in range(code.MAX_FILES + 5):
        (tmp_path / f"m{i}.py").write_text("")
    scan = scan_code(tmp_path, rules)
    assert len(scan.counted) == code.MAX_FILES and "more than 200 files" in scan.limits[0]

    nested = tmp_path / "nested"
    nested.mkdir()
    source = b"import brotli\n"
    for _ in range(code.MAX_WRAPPER_DEPTH + 1):
        source = wrapper(source, rules)
    (nested / "train_gpt.py").write_bytes(source)
    scan = scan_code(nested, rules)
    assert "nests more than 4 exec wrappers" in scan.limits[0] and scan.third_party == {}


def test_decompression_bomb_is_capped(tmp_path, rules):
    blob = base64.b85encode(lzma.compress(b"#" * (code.MAX_SOURCE_BYTES * 4))).decode()  # 8 MiB in ~1 KB
    (tmp_path / "train_gpt.py").write_text(f'import lzma as L,base64 as B\nexec(L.decompress(B.b85decode("{blob}")))\n')
    scan = scan_code(tmp_path, rules)
    assert scan.unparsed == {"train_gpt.py": "unpacks to over 2 MiB of code, too large to read"}
    assert "train_gpt.py" not in scan.sources
    found = [f for f in folder_findings(tmp_path, scan, rules) if f.code == "files.syntax_error"]
    assert [f.status for f in found] == [WARN]


def test_syntax_node_budget_is_a_finding(tmp_path, rules, monkeypatch):
    monkeypatch.setattr(code, "MAX_NODES", 50)
    (tmp_path / "train_gpt.py").write_text("x = [" + ", ".join(map(str, range(100))) + "]\nimport helper\n")
    (tmp_path / "helper.py").write_text("")
    scan = scan_code(tmp_path, rules)
    assert "more than 50 syntax nodes" in scan.limits[0]


def test_long_path_chains_cost_little_and_deeper_ones_are_a_finding(tmp_path, rules):
    """`a / b / c ...`: each `/` looks at most 16 levels down; a chain Python cannot parse is reported."""
    (tmp_path / "kernel.cpp").write_text("int k;\n")
    (tmp_path / "train_gpt.py").write_text("p = HERE" + ' / "x"' * 900 + ' / "kernel.cpp"\n')
    scan = scan_code(tmp_path, rules)
    assert sorted(scan.reasons) == ["kernel.cpp", "train_gpt.py"] and scan.limits == [] and scan.unparsed == {}
    (tmp_path / "train_gpt.py").write_text("p = HERE" + ' / "x"' * 50_000 + "\n")
    assert scan_code(tmp_path, rules).unparsed == {"train_gpt.py": "cannot be parsed (RecursionError)"}


def test_unpacked_code_that_does_not_parse_says_so(tmp_path, rules):
    packed = base64.b85encode(lzma.compress(b"x = 1\ndef broken(:\n")).decode()
    (tmp_path / "train_gpt.py").write_text(f'import lzma as L,base64 as B\nexec(L.decompress(B.b85decode("{packed}")))\n')
    scan = scan_code(tmp_path, rules)
    assert scan.unparsed == {"train_gpt.py": "the code its exec wrapper unpacks does not parse as Python "
                                             "(line 2: invalid syntax)"}
