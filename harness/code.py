"""The code a submission ships: one model of it, read by size, the requirements rule and lint.

The artifact is code bytes plus compressed model bytes. Code bytes are never
taken from submission.json: they are recomputed from the files in the folder —
train_gpt.py plus every local file it imports, execs, opens, compiles or names
(helper modules, a decoder script, a C++ kernel built with load_inline or a
compiler) — followed transitively through plain code and through the code a
self-extracting wrapper (`exec(lzma.decompress(base64.b85decode("...")))`)
unpacks, because a wrapper that imports a shipped helper runs that helper too.
When the log says the run counted the compressed self-extracting form, the entry
is counted as that wrapper rebuilt the way the records build it: python-minifier
(pinned in pyproject.toml) with the flags in rules.yaml, then lzma.compress at
its default preset, base85, and the two-line `exec` wrapper.

Hostile input is bounded: how deep the chain of references goes, how many files
are followed, how many bytes are parsed or unpacked and how many syntax nodes are
walked. A bound that is hit is recorded in `CodeScan.limits` (a finding), never
a crash or a hang.
"""
from __future__ import annotations

import ast
import base64
import bz2
import lzma
import re
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import python_minifier

from harness.rules import Rules

ENTRY = "train_gpt.py"
_NOT_CODE = {".md", ".json", ".log", ".txt", ".model", ".bin", ".pt", ".ptz", ".vocab", ".tsv", ".csv", ".png"}

MAX_DEPTH = 8                # references from the entry to the furthest file followed
MAX_FILES = 200              # files counted
MAX_SOURCE_BYTES = 2 << 20   # bytes of one Python file, or of what its wrapper unpacks, that are parsed
                             # (records are under 200 KB; the cap also stops decompression bombs)
MAX_WRAPPER_DEPTH = 4        # a wrapper that unpacks to another wrapper, and so on
MAX_NODES = 3_000_000        # syntax nodes walked over the whole folder
MAX_NAME = 300               # longer string constants are data, not file names

WRAPPER = re.compile(r"^exec\(\s*(?:\w+\.)*decompress\(", re.M)  # a statement, not the text a script writes
_PATH_JOIN = {"join", "Path", "PurePath", "joinpath"}


@dataclass(frozen=True)
class PySource:
    """One Python file as it runs: its text, or the code its exec wrapper unpacks. `exec_line`
    is the wrapper's exec line when unpacked (evidence then points there)."""

    rel: str
    text: str
    exec_line: int | None = None
MAX_MINIFIED_BYTES = 256 << 10  # an entry larger than this is counted as shipped, not through the minifier,
                                # which takes ~6 s for 256 KiB and ~55 s for 1 MiB (the largest record: 158 KB)


@dataclass
class CodeScan:
    """The folder's code model: what the entry script pulls in, why, and what it imports."""

    counted: list[Path] = field(default_factory=list)  # entries first
    entries: list[str] = field(default_factory=list)  # where the following starts (see `entry_scripts`)
    reasons: dict[str, str] = field(default_factory=dict)  # relative path -> why it counts
    sources: dict[str, PySource] = field(default_factory=dict)  # relative path -> the Python that runs
    third_party: dict[str, tuple[str, int]] = field(default_factory=dict)  # top-level module -> (file, line)
    unparsed: dict[str, str] = field(default_factory=dict)  # relative path -> why it could not be read or parsed
    outside: list[tuple[str, int, str]] = field(default_factory=list)  # (file, line, '../x') paths leaving the folder
    limits: list[str] = field(default_factory=list)  # bounds hit: what was not followed


def entry_scripts(folder: Path) -> list[str]:
    """train_gpt.py; a folder without it (some real records ship train_gpt_<name>.py) is followed from each
    train_gpt*.py at its top, so its code still counts while the missing name is its own finding."""
    if (folder / ENTRY).is_file():
        return [ENTRY]
    return sorted(p.name for p in folder.glob("train_gpt*.py") if p.is_file() and not p.is_symlink())


def scan_code(folder: Path, rules: Rules) -> CodeScan:
    """Follow the entry scripts' imports, execs, opens and file names, through plain and unpacked
    code, to every file they need; breadth first, so each file's reason is its shortest chain."""
    scan = CodeScan(entries=entry_scripts(folder))
    if not scan.entries:
        return scan
    candidates = {p.relative_to(folder).as_posix(): p for p in folder.rglob("*")
                  if p.is_file() and not p.is_symlink() and p.suffix.lower() not in _NOT_CODE
                  and "__pycache__" not in p.parts}
    modules = {rel[:-3].replace("/", "."): rel for rel in candidates if rel.endswith(".py")}
    modules.update({rel[:-len("/__init__.py")].replace("/", "."): rel for rel in candidates
                    if rel.endswith("/__init__.py")})
    by_name: dict[str, list[str]] = {}
    for rel in candidates:
        by_name.setdefault(rel.rsplit("/", 1)[-1], []).append(rel)
    budget = [MAX_NODES]
    queue, depth = list(scan.entries), dict.fromkeys(scan.entries, 0)
    too_deep = full = False  # each bound is reported once
    scan.reasons.update(dict.fromkeys(scan.entries, "entry script"))
    while queue:
        rel = queue.pop(0)
        scan.counted.append(candidates.get(rel, folder / rel))
        if not rel.endswith(".py"):
            continue
        source = read_python(folder / rel, rel, scan)
        if source is None:
            continue
        scan.sources[rel] = source
        refs = _Refs(source, candidates, modules, by_name, rules, scan, budget)
        for target, reason in refs.found():
            if target in depth:
                continue
            if depth[rel] + 1 > MAX_DEPTH:
                if not too_deep:
                    scan.limits.append(f"{target} ({reason}) is more than {MAX_DEPTH} references from {scan.entries[0]}; "
                                       "it and any other file that deep are not followed")
                too_deep = True
                continue
            if len(depth) >= MAX_FILES:
                if not full:
                    scan.limits.append(f"more than {MAX_FILES} files are referenced; {target} and later ones "
                                       "are not followed")
                full = True
                continue
            depth[target] = depth[rel] + 1
            scan.reasons[target] = reason
            queue.append(target)
    return scan


def read_python(path: Path, rel: str, scan: CodeScan | None = None) -> PySource | None:
    """The Python that a file runs: its text, or what its exec wrapper(s) unpack. None (and the
    reason in `scan.unparsed`) when it cannot be read or is too large to parse."""
    def failed(why: str) -> None:
        if scan is not None:
            scan.unparsed[rel] = why
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_SOURCE_BYTES + 1)
    except OSError as exc:
        return failed(f"cannot be read ({exc.strerror or exc})")
    if len(data) > MAX_SOURCE_BYTES:
        return failed(f"is over {MAX_SOURCE_BYTES >> 20} MiB, too large to read as code")
    text, exec_line = data.decode("utf-8", errors="replace"), None
    for level in range(MAX_WRAPPER_DEPTH + 1):
        unpacked = _unpack(text)
        if unpacked is None:
            break
        if level == MAX_WRAPPER_DEPTH:
            if scan is not None:
                scan.limits.append(f"{rel} nests more than {MAX_WRAPPER_DEPTH} exec wrappers; the innermost "
                                   "code is not read")
            break
        line, text = unpacked
        exec_line = exec_line or line
        if len(text) > MAX_SOURCE_BYTES:
            return failed(f"unpacks to over {MAX_SOURCE_BYTES >> 20} MiB of code, too large to read")
    return PySource(rel, text, exec_line)


def _unpack(text: str) -> tuple[int, str] | None:
    """(exec line, code) of an `exec(<decompress>(<b85/b64 decode>("...")))` wrapper."""
    if len(text) > MAX_SOURCE_BYTES or not WRAPPER.search(text):
        return None
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _callee(node) == "exec" and node.args:
            inner = list(ast.walk(node.args[0]))
            blob = next((c.value for c in inner if isinstance(c, ast.Constant) and isinstance(c.value, (str, bytes))
                         and len(c.value) > 64), None)
            decode = next((getattr(base64, _callee(c)) for c in inner if isinstance(c, ast.Call)
                           and _callee(c) in ("b85decode", "b64decode", "a85decode")), None)
            if blob is not None and decode is not None:
                try:
                    code = _decompress(decode(blob))
                except ValueError:
                    continue
                if code is not None:
                    return node.lineno, code.decode("utf-8", errors="replace")
    return None


def _decompress(data: bytes) -> bytes | None:
    """The formats wrappers use (xz, raw LZMA2, zlib/gzip, bz2); never more than the parse cap and a byte."""
    makers = (lambda: lzma.LZMADecompressor(),
              lambda: lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA2}]),
              lambda: zlib.decompressobj(47),
              lambda: bz2.BZ2Decompressor())
    for make in makers:
        try:
            return make().decompress(data, MAX_SOURCE_BYTES + 1)
        except (lzma.LZMAError, zlib.error, OSError, ValueError, EOFError, MemoryError):
            continue
    return None


def _callee(call: ast.Call) -> str:
    """Last name of what is called: `torch.utils.cpp_extension.load_inline(...)` -> 'load_inline'."""
    f = call.func
    return f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""


def parse_python(text: str) -> ast.Module:
    """ast.parse, retrying with f-string bodies blanked: records written for Python 3.12 nest
    same-kind quotes inside f-strings (PEP 701), which older parsers reject."""
    if "\0" in text:
        raise SyntaxError("source contains NUL bytes (binary file?)", ("", 1, 0, ""))
    try:
        return ast.parse(text)
    except SyntaxError as err:
        masked = _mask_fstrings(text)
        if masked == text:
            raise
        try:
            return ast.parse(masked)
        except SyntaxError:
            raise err from None


_STRING_START = re.compile(r"""#|(?<![\w])([rRbBuUfF]{0,2})('''|\"\"\"|'|")""")


def _mask_fstrings(text: str) -> str:
    """Replace every f-string's body with spaces (newlines kept), leaving other code intact."""
    pieces, pos, copied = [], 0, 0
    while m := _STRING_START.search(text, pos):
        if m.group() == "#":
            newline = text.find("\n", m.end())
            pos = newline if newline >= 0 else len(text)
            continue
        body_end, pos = _string_end(text, m.end(), m.group(2), "f" in m.group(1).lower())
        if "f" in m.group(1).lower():
            pieces += [text[copied:m.end()], re.sub(r"[^\n]", " ", text[m.end():body_end])]
            copied = body_end
    return "".join(pieces) + text[copied:]


def _string_end(text: str, i: int, quote: str, fmt: bool) -> tuple[int, int]:
    """(end of body, index past the closing quote) of the literal whose body starts at `i`."""
    n = len(text)
    while i < n:
        if text[i] == "\\":
            i += 2
        elif text.startswith(quote, i):
            return i, i + len(quote)
        elif fmt and text.startswith("{{", i):
            i += 2
        elif fmt and text[i] == "{":
            i = _field_end(text, i + 1)
        else:
            i += 1
    return n, n


def _field_end(text: str, i: int) -> int:
    """Index past the `}` closing an f-string replacement field that starts at `i`; the field
    may hold strings quoted like the f-string itself (PEP 701)."""
    depth, n = 1, len(text)
    while i < n and depth:
        m = _STRING_START.match(text, i)
        if m and m.group(2):
            i = _string_end(text, m.end(), m.group(2), "f" in m.group(1).lower())[1]
            continue
        depth += (text[i] in "{[(") - (text[i] in "}])")
        i += 1
    return i


class _Refs:
    """The local files and third-party modules one Python source refers to."""

    def __init__(self, source: PySource, candidates: dict[str, Path], modules: dict[str, str],
                 by_name: dict[str, list[str]], rules: Rules, scan: CodeScan, budget: list[int]):
        self.source, self.candidates, self.modules, self.by_name = source, candidates, modules, by_name
        self.rules, self.scan, self.budget = rules, scan, budget
        self.package = source.rel.rsplit("/", 1)[0].replace("/", ".") if "/" in source.rel else ""

    def found(self):
        """(relative path, reason) of each local file referred to, in source order."""
        src = self.source
        try:
            tree = parse_python(src.text)
        except SyntaxError as exc:
            what = "the code its exec wrapper unpacks does" if src.exec_line else "does"
            self.scan.unparsed[src.rel] = f"{what} not parse as Python (line {exc.lineno}: {exc.msg})"
            return
        except (ValueError, RecursionError, MemoryError) as exc:
            self.scan.unparsed[src.rel] = f"cannot be parsed ({type(exc).__name__})"
            return
        for node in ast.walk(tree):
            self.budget[0] -= 1
            if self.budget[0] < 0:
                self.scan.limits.append(f"the code has more than {MAX_NODES:,} syntax nodes; {src.rel} and any "
                                        "later file were not read to the end")
                return
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                yield from self._imports(node)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and len(node.value) < MAX_NAME:
                yield from self._named(node.value, node.lineno)
            elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div) or \
                    isinstance(node, ast.Call) and _callee(node) in _PATH_JOIN:
                joined = "/".join(_path_parts(node))
                if "/" in joined:
                    yield from self._named(joined, node.lineno)

    def _at(self, line: int) -> str:
        return f"{self.source.rel}:{line}" if self.source.exec_line is None else \
            f"{self.source.rel}:{self.source.exec_line} (line {line} of the code its exec wrapper unpacks)"

    def _imports(self, node: ast.Import | ast.ImportFrom):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            base = node.module or ""
            if node.level:
                parts = self.package.split(".") if self.package else []
                parts = parts[:len(parts) - (node.level - 1)] if node.level > 1 else parts
                base = ".".join([*parts, *([base] if base else [])])
            names = [base] + [f"{base}.{a.name}" if base else a.name for a in node.names]
        for name in names:
            if name in self.modules:
                yield self.modules[name], f"imported by {self._at(node.lineno)}"
                continue
            top = name.split(".")[0]
            if isinstance(node, ast.ImportFrom) and (node.level or name != names[0]):
                continue  # `from x import y` names attributes of x; relative imports are local
            if top and top not in sys.stdlib_module_names and top not in self.rules.baseline_packages \
                    and not any(m.split(".")[0] == top for m in self.modules) and top not in self.scan.third_party:
                self.scan.third_party[top] = (self.source.rel, self.source.exec_line or node.lineno)

    def _named(self, text: str, line: int):
        """A string naming a file of the folder: its path, a path ending in it, or its file name."""
        name = text.strip().removeprefix("./")
        if name.startswith("../"):
            self.scan.outside.append((self.source.rel, self.source.exec_line or line, text))
            return
        if not name or name == self.source.rel:
            return
        if name in self.candidates:
            yield name, f"named in {self._at(line)}"
            return
        tail = name.rsplit("/", 1)[-1]
        for rel in self.by_name.get(tail, ()):
            if rel != self.source.rel and ("/" not in name or rel.endswith(name) or name.endswith("/" + rel)):
                yield rel, f"named in {self._at(line)}"


def _path_parts(node: ast.AST, depth: int = 0) -> list[str]:
    """The constant trailing parts of a path built with `/`, os.path.join or Path(...):
    `HERE / "ngram" / "kernel.cpp"` -> ['ngram', 'kernel.cpp']. Only 16 levels deep, so a hostile
    chain of a million `/` costs no more than a short one."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and len(node.value) < MAX_NAME:
        return [node.value.strip("/")]
    if depth >= 16:
        return []
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
        right = _path_parts(node.right, depth + 1)
        return _path_parts(node.left, depth + 1) + right if right else []
    if isinstance(node, ast.Call) and _callee(node) in _PATH_JOIN:
        parts: list[str] = []
        for arg in node.args[:16]:
            got = _path_parts(arg, depth + 1)
            parts = parts + got if got else []
        return parts
    return []


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
    """Bytes of every counted file; each entry script as its regenerated wrapper when `compressed`."""
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
        if rel in scan.entries and compressed and not is_wrapper(data) and len(data) > MAX_MINIFIED_BYTES:
            error = (f"{rel} is {len(data):,} bytes, over the {MAX_MINIFIED_BYTES:,} bytes pgolf minifies; "
                     "counting it as shipped")
        elif rel in scan.entries and compressed and not is_wrapper(data):
            try:
                data = wrapper(data, rules)
                method = "regenerated wrapper"
            except Exception as exc:  # minifier rejects the source: count it as shipped, say why
                error = f"cannot regenerate the compressed wrapper of {rel}: {type(exc).__name__}: {exc}"
        per_file[rel] = len(data)
    return CodeBytes(sum(per_file.values()), method, per_file, error)
