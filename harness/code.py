"""The code a submission ships, and how many bytes of it count.

The artifact is code bytes plus compressed model bytes. Code bytes are never
taken from submission.json: they are recomputed here from the files in the
folder — train_gpt.py plus every local file it imports, execs or opens by name
(helper modules, a decoder script, a C++ kernel) — and, when the log says the
run counted the compressed self-extracting form, from that wrapper rebuilt the
way the records build it: python-minifier (pinned in pyproject.toml) with the
flags in rules.yaml, then lzma.compress at its default preset, base85, and the
two-line `exec` wrapper.
"""
from __future__ import annotations

import ast
import base64
import lzma
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import python_minifier

from harness.rules import Rules

ENTRY = "train_gpt.py"
# Bounds on the work a folder can demand (the largest train_gpt.py among the challenge's records is
# 158 KB): a Python file over MAX_PARSED_BYTES is not parsed (its imports are not followed, which the scan
# says), and an entry over MAX_MINIFIED_BYTES is counted as shipped instead of through the minifier, which
# takes ~6 s for 256 KiB, ~55 s for 1 MiB and grows faster than the input.
MAX_PARSED_BYTES = 1 << 20
MAX_MINIFIED_BYTES = 256 << 10
_NOT_CODE = {".md", ".json", ".log", ".txt", ".model", ".bin", ".pt", ".ptz"}


@dataclass
class CodeScan:
    """What the entry script pulls in, and the imports that need a requirements.txt."""

    counted: list[Path] = field(default_factory=list)  # entry first
    reasons: dict[str, str] = field(default_factory=dict)  # relative path -> why it counts
    third_party: dict[str, int] = field(default_factory=dict)  # top-level module -> first line
    unparsed: dict[str, str] = field(default_factory=dict)  # relative path -> why it could not be read or parsed
    outside: list[tuple[str, int, str]] = field(default_factory=list)  # (file, line, '../x') paths leaving the folder


def scan_code(folder: Path, rules: Rules) -> CodeScan:
    """Follow train_gpt.py's imports, execs and file names to every code file it needs."""
    scan = CodeScan()
    entry = folder / ENTRY
    if not entry.is_file():
        return scan
    candidates = {p.relative_to(folder).as_posix(): p for p in folder.rglob("*")
                  if p.is_file() and not p.is_symlink() and p.suffix not in _NOT_CODE}
    local_modules = {rel[:-3].replace("/", "."): rel for rel in candidates if rel.endswith(".py")}
    queue, seen = [ENTRY], {ENTRY}
    scan.reasons[ENTRY] = "entry script"
    while queue:
        rel = queue.pop(0)
        scan.counted.append(candidates.get(rel, folder / rel))
        if not rel.endswith(".py"):
            continue
        for target, reason in _references(folder / rel, rel, candidates, local_modules, scan, rules):
            if target not in seen:
                seen.add(target)
                scan.reasons[target] = reason
                queue.append(target)
    return scan


def _references(path: Path, rel: str, candidates: dict[str, Path], local_modules: dict[str, str],
                scan: CodeScan, rules: Rules):
    """(relative path, reason) of each local file this Python file imports or names."""
    try:
        size = path.stat().st_size
        if size > MAX_PARSED_BYTES:
            scan.unparsed[rel] = f"is {size:,} bytes, over the {MAX_PARSED_BYTES:,} bytes pgolf parses"
            return
        tree = ast.parse(path.read_bytes().decode("utf-8", errors="replace"))
    except SyntaxError as exc:
        scan.unparsed[rel] = f"does not parse as Python (line {exc.lineno}: {exc.msg})"
        return
    except OSError as exc:
        scan.unparsed[rel] = f"cannot be read ({exc.strerror or exc})"
        return
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for name in names:
                if isinstance(node, ast.ImportFrom) and node.level:
                    continue
                if name in local_modules:
                    yield local_modules[name], f"imported by {rel}:{node.lineno}"
                    continue
                top = name.split(".")[0]
                if top and top not in sys.stdlib_module_names and top not in rules.baseline_packages \
                        and top not in local_modules and top not in scan.third_party:
                    scan.third_party[top] = node.lineno
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and len(node.value) < 300:
            name = node.value.removeprefix("./")
            if name in candidates and name != rel:
                yield name, f"named in {rel}:{node.lineno}"
            elif name.startswith("../"):
                scan.outside.append((rel, node.lineno, node.value))


def wrapper(source: bytes, rules: Rules) -> bytes:
    """The self-extracting form records count: minify -> lzma -> base85 -> exec wrapper."""
    args = set(rules.code_wrapper["minifier_args"])
    minified = python_minifier.minify(
        source.decode("utf-8"),
        rename_locals="--no-rename-locals" not in args,
        hoist_literals="--no-hoist-literals" not in args,
        remove_literal_statements="--remove-literal-statements" in args,
    )
    payload = base64.b85encode(lzma.compress(minified.encode("utf-8")))
    return rules.code_wrapper["prefix"].encode() + payload + rules.code_wrapper["suffix"].encode()


def is_wrapper(source: bytes) -> bool:
    """True when the shipped file already is a compressed exec wrapper (counted as shipped)."""
    head = source[:200]
    return bool(re.search(rb"\bexec\(", head) and re.search(rb"(lzma|zlib|bz2|brotli)", head)) \
        and source.count(b"\n") <= 4


@dataclass(frozen=True)
class CodeBytes:
    """Counted code bytes, and how they were obtained."""

    total: int
    method: str  # "as shipped" or "regenerated wrapper"
    per_file: dict[str, int]
    error: str | None = None


def counted_bytes(folder: Path, scan: CodeScan, compressed: bool, rules: Rules) -> CodeBytes:
    """Bytes of every counted file; the entry as its regenerated wrapper when `compressed`."""
    per_file: dict[str, int] = {}
    method, error = "as shipped", None
    for path in scan.counted:
        rel = path.relative_to(folder).as_posix()
        try:
            data = path.read_bytes()
        except OSError as exc:
            error = f"cannot read {rel} ({exc.strerror or exc}); counting its size on disk"
            per_file[rel] = path.stat().st_size
            continue
        if rel == ENTRY and compressed and not is_wrapper(data) and len(data) > MAX_MINIFIED_BYTES:
            error = (f"{ENTRY} is {len(data):,} bytes, over the {MAX_MINIFIED_BYTES:,} bytes pgolf minifies; "
                     "counting it as shipped")
        elif rel == ENTRY and compressed and not is_wrapper(data):
            try:
                data = wrapper(data, rules)
                method = "regenerated wrapper"
            except Exception as exc:  # minifier rejects the source: count it as shipped, say why
                error = f"cannot regenerate the compressed wrapper of {ENTRY}: {type(exc).__name__}: {exc}"
        per_file[rel] = len(data)
    return CodeBytes(sum(per_file.values()), method, per_file, error)
