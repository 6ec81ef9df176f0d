"""Static lint of submission code for the patterns banned by rules.md §2 and §8.12-13.

Every rule is a heuristic that points a reviewer at one line. Rules WARN; they FAIL only where
the pattern is unambiguous (a SLOT/ETLB switch that is on by default). Code is read, never run.

Speed matters (a 150 KB script must lint in well under 100 ms), so a file is cut at its
column-0 `def`/`class` lines into blocks and only the blocks a rule's cheap regex selects are
parsed. Blocks that will not parse (syntax errors; Python 3.12 f-strings on an older interpreter
even after blanking them) fall back to line regexes. The code linted is harness.code's model of the
folder: self-extracting wrappers are linted as the code they unpack, and every shipped file the
entry reaches is linted.
"""
from __future__ import annotations

import ast
import bisect
import pathlib
import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable, Iterator, NamedTuple

from harness.code import PySource, parse_python, read_python
from harness.findings import FAIL, WARN, Evidence, Finding

MAX_TEXT = 160

_DATA = r"(?:tokens?|data|files?|shards?|loader|stream|docs|ids|u64|set|dataset|ds)"
VAL_DATA = re.compile(rf"^(?:val|valid|validation)_{_DATA}$|val_tokens|^fineweb_val")  # data, not val_loss/val_bpb
TRAIN_DATA = re.compile(r"^(?:train|training)_(?:tokens?|data|files?|shards?|loader|stream|ds|dataset|batch(?:es)?)$"
                        r"|fineweb_train")
TARGET = re.compile(r"^(?:y|ys|tgt\w*|\w+_tgt|targets?|\w+_targets?|targets?_\w+|y_(?:np|batch|ids|flat|t|u64|next)"
                    r"|next_tok\w*)$")
NGRAM = re.compile(r"ngram|n_gram|ppm|backoff|kneser|trigram|unigram|phrase|bigram_(?:p|prob|lp|logp|count)", re.I)

EPOCH = re.compile(r"epoch|^_?ep\d*$", re.I)
# Calls that reduce tokens to a number or a score: what they return is no longer validation data.
BARRIER = re.compile(r"^(?:len|int|float|bool|str|range|min|max|print|log|log0|numel|size|item|tolist|perf_counter)$"
                     r"|^(?:eval_val|evaluate|run_eval|timed_eval)|score|bpb", re.I)
JOIN = ("cat", "concatenate", "hstack", "vstack", "stack", "chain")
SERIALIZE = re.compile(r"(?<!de)(?:serializ|quantiz)|gptq|compress|^torch\.save$", re.I)
OPTIMIZER = re.compile(r"adam|sgd|lbfgs|rmsprop|lion|muon|optim", re.I)
SCORE_ACC = re.compile(r"loss|nll|bpb|bits|score", re.I)
NO_GRAD = re.compile(r"no_grad|inference_mode")

BLOCK_HEAD = re.compile(r"^(?:@|def |async def |class )", re.M)
# Block selection: which blocks a rule parses. re is several times faster on patterns that do
# not start with a character class or an anchor, hence the odd spellings.
SEL_VAL = re.compile(rf"val(?:id|idation)?_{_DATA}\b|fineweb_val")
SEL_TRAIN = re.compile(r"train_(?:tokens?|data|files?|shards?|loader|stream|ds|dataset|batch)|fineweb_train")
SEL_SINK = re.compile(r"essian|gptq|GPTQ|calib|save\(|serializ|compress")
SEL_JOIN = re.compile(r"cat\(|concatenate\(|stack\(|chain\(")
SEL_GRAD = re.compile(r"\.backward\s*\(|autograd\.grad\s*\(")
SEL_REQUIRES_GRAD = re.compile(r"requires_grad|Parameter\(")
SEL_OPTIMIZER = re.compile(r"optim\.|Adam|SGD|LBFGS|autograd\.grad")
SEL_XOR = re.compile(r"\^|bitwise_xor")
SEL_TARGET = re.compile(r"tgt|target|y_")
SEL_NGRAM = re.compile(r"ngram|Ngram|NGram|NGRAM|n_gram|trigram|bigram_|ppm|PPM|ackoff|ACKOFF|neser|hrase")
SEL_LOG2 = re.compile(r"log\(\s*2|LN2|ln2|_per_tok|_PER_TOK|_per_byte|_PER_BYTE")

NET_MODULES = r"urllib\d?|requests|httpx|aiohttp|http\.client|socket|ftplib|huggingface_hub|pycurl|wget"
NETWORK = (  # three simple regexes scan a large file several times faster than one alternation
    re.compile(rf"(?:from|import)[ \t]+(?:[\w.]+(?:[ \t]+as[ \t]+\w+)?[ \t]*,[ \t]*)*(?:{NET_MODULES})\b"),
    re.compile(r"(?:hf_hub_download|snapshot_download|urlopen|urlretrieve|load_state_dict_from_url|download_url_to_file"
               r"|torch\.hub\.\w+|requests\.(?:get|post|head|Session))\s*\("),
    re.compile(r"[\"'](?:wget|curl|huggingface-cli|git\s+clone|pip\s+install)\b"))
ENV_GET = re.compile(r"(?:environ\.get|getenv)\(\s*(?P<key>'[^']*'|\"[^\"]*\"|\w+)"
                     r"\s*(?:,\s*(?P<default>[^,()]+|\w+\([^()]*\)))?\)")
ALIAS = re.compile(r"^(\w+)\s*=\s*('[^'\n]*'|\"[^\"\n]*\"|True|False|None|-?[\d.]+(?:e-?\d+)?)\s*$", re.M)
# `train_files = ...fineweb_val...` up to the end of the statement (`;`) or the next keyword argument.
TRAIN_BOUND_TO_VAL = re.compile(r"train_(?:files?|pattern|glob|shards?|tokens?|data|loader|stream|dir|path)\w*"
                                r"(?:\s*:\s*[\w.\[\]| ]+)?\s*"
                                rf"=(?!=)(?:(?!;|,\s*\w+\s*=(?!=))[^\n])*?(?:fineweb_val|val_{_DATA}\b)")
SLOT_KEY = re.compile(r"^(?P<family>SLOT|ETLB)(?:_(?P<what>\w+))?$")
# Used only on lines of blocks that did not parse.
FALLBACK = {
    "val_in_training": (re.compile(r"\btrain\w*\s*=[^=].*(?:fineweb_val|val_files|val_tokens)"),
                        "validation data bound to a training input (README: no training on validation tokens)."),
    "prequant_ttt": (re.compile(r"\bpre_?quant_?ttt", re.I),
                     "pre-quantization TTT on validation tokens breaks score-before-update (C3)."),
    "slot_etlb": (re.compile(r"\b(?:delta|\w*bias)\w*\s*=.*requires_grad"),
                  "a requires_grad delta/bias fitted at eval is SLOT/ETLB (banned, C1/C3)."),
    "ngram_mix": (re.compile(r"\^\s*\(?\s*(?:tgt|targets?|y)\w*\s*\*"),
                  "a target-keyed hash lookup lets p_t depend on x_t (C1/C2)."),
    "hardcoded_bytes_per_token": (re.compile(r"log\(\s*2(?:\.0*)?\s*\)\s*[*/]\s*\(?\s*\d\.\d{2,}"
                                             r"|bytes?_per_tok\w*\s*=\s*\d", re.I),
                                  "BPB from a constant bytes-per-token instead of tokenizer byte counts."),
}


class Hit(NamedTuple):
    """What a rule reports: `rule` names the finding (lint.<rule>), `line`/`col` are 1-/0-based."""

    rule: str
    line: int
    col: int
    message: str
    status: str = WARN


# ---------------------------------------------------------------------------------------------
# Reading the code


@dataclass(eq=False)
class Unit:
    """A function (nested defs included) or a run of other top-level statements: the scope in
    which names are tracked. Its node list, validation names and parent map are computed once."""

    node: ast.AST
    source: Source

    @property
    def name(self) -> str:
        return getattr(self.node, "name", "")

    @cached_property
    def parents(self) -> dict[ast.AST, ast.AST]:
        """Child -> parent for every node below the unit (its keys double as the node list)."""
        parents, stack = {}, [self.node]
        while stack:
            node = stack.pop()
            for child in _children(node):
                parents[child] = node
                stack.append(child)
        return parents

    @property
    def nodes(self) -> Iterator[ast.AST]:
        yield self.node
        yield from self.parents

    @cached_property
    def bound(self) -> dict[ast.AST, set[str]]:
        """Assigned value -> target names, e.g. the Call in `loader = Loader(...)` -> {'loader'}."""
        return {n.value: _assigned(n) for n in self.nodes if isinstance(n, ast.Assign)}

    def reads(self, expr: ast.AST | None) -> set[str]:
        return _reads(expr, self.source.functions)

    @cached_property
    def val(self) -> set[str]:
        """Names holding validation data: val-named data, parameters so named, and (ignoring
        order) everything assigned from them, e.g. `x = val_tokens[a:b]`, then `loss = model(x)`."""
        flows = [(_target_names(t), self.reads(v)) for t, v in _flows(self.parents)]
        tainted = {n for _, reads in flows for n in reads if _is_val(n)}
        if isinstance(self.node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            tainted |= {a.arg for a in ast.walk(self.node.args) if isinstance(a, ast.arg) and _is_val(a.arg)}
        changed = True
        while changed:
            changed = False
            for targets, reads in flows:
                if reads & tainted and not targets <= tainted:
                    tainted |= targets
                    changed = True
        return tainted | {"<val>"}


@dataclass(eq=False)
class Block:
    """One top-level statement group: a def/class with its decorators, or the code between."""

    first_line: int
    text: str
    source: Source

    @cached_property
    def parsed(self) -> list[Unit] | SyntaxError:
        """The block's units (line numbers as in the file, by padding with newlines), or the error."""
        try:
            tree = parse_python("\n" * (self.first_line - 1) + self.text)
        except (SyntaxError, RecursionError, MemoryError) as err:
            if isinstance(err, SyntaxError):
                return err
            return SyntaxError(f"{type(err).__name__} while parsing", ("", self.first_line, 0, ""))
        return [Unit(node, self.source) for node in _units(tree.body)]


@dataclass(eq=False)
class Source:
    """One file's text as linted. `rel` names it in evidence; `exec_line` is set when the text
    was unpacked from a self-extracting wrapper (evidence then points at the exec line)."""

    rel: str
    text: str
    exec_line: int | None = None
    _where: dict[re.Pattern[str], set[int]] = field(default_factory=dict, repr=False)

    @cached_property
    def lines(self) -> list[str]:
        return self.text.split("\n")  # as ast counts lines; splitlines() would also cut at \f etc.

    @cached_property
    def line_starts(self) -> list[int]:
        return [0] + [m.end() for m in re.finditer("\n", self.text)]

    @cached_property
    def block_offsets(self) -> list[int]:
        return [self.line_starts[b.first_line - 1] for b in self.blocks]

    @cached_property
    def blocks(self) -> list[Block]:
        heads = (bisect.bisect_right(self.line_starts, m.start()) - 1 for m in BLOCK_HEAD.finditer(self.text))
        starts = [0] + [i for i in heads if not (i and self.lines[i - 1].startswith("@"))]
        bounds = sorted(set(starts)) + [len(self.lines)]
        return [Block(a + 1, "\n".join(self.lines[a:b]), self) for a, b in zip(bounds, bounds[1:]) if b > a]

    def select(self, *patterns: re.Pattern[str]) -> set[int]:
        """Indices of the blocks in which every pattern occurs (each pattern scans the text once)."""
        for rx in patterns:
            if rx not in self._where:
                self._where[rx] = self._blocks_matching(rx)
        return set.intersection(*(self._where[rx] for rx in patterns))

    def _blocks_matching(self, rx: re.Pattern[str]) -> set[int]:
        found, pos = set(), 0
        while m := rx.search(self.text, pos):
            i = bisect.bisect_right(self.block_offsets, m.start()) - 1
            found.add(i)
            pos = self.block_offsets[i + 1] if i + 1 < len(self.blocks) else len(self.text)
        return found

    def units(self, indices: set[int]) -> Iterator[Unit]:
        """Units of the selected blocks that parse."""
        for i in sorted(indices):
            if isinstance(self.blocks[i].parsed, list):
                yield from self.blocks[i].parsed

    def matches(self, rx: re.Pattern[str]) -> Iterator[tuple[int, int, re.Match[str]]]:
        """(line, column, match) of `rx` over the whole text, skipping comment lines."""
        for m in rx.finditer(self.text):
            line = bisect.bisect_right(self.line_starts, m.start())
            if not self.lines[line - 1].lstrip().startswith("#"):
                yield line, m.start() - self.line_starts[line - 1], m

    def failed(self) -> list[tuple[Block, SyntaxError]]:
        """Blocks some rule tried to parse and could not."""
        return [(b, b.parsed) for b in self.blocks if isinstance(b.__dict__.get("parsed"), SyntaxError)]

    @cached_property
    def aliases(self) -> dict[str, str]:
        """Module-level `_B=True` / `_d='WARMUP_STEPS'` constants that minified code refers to."""
        return dict(ALIAS.findall(self.text))

    @cached_property
    def functions(self) -> frozenset[str]:
        """Top-level function names: calling one (train_model, eval_val...) is a taint barrier."""
        return frozenset(re.findall(r"^(?:async )?def (\w+)", self.text, re.M))


def _units(body: list[ast.stmt]) -> Iterator[ast.AST]:
    """Functions and methods, then the remaining statements as one pseudo-function."""
    rest = []
    for stmt in body:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield stmt
        elif isinstance(stmt, ast.ClassDef):
            yield from _units(stmt.body)
        else:
            rest.append(stmt)
    if rest:
        yield ast.Module(body=rest, type_ignores=[])


# ---------------------------------------------------------------------------------------------
# AST helpers


def _children(node: ast.AST) -> Iterator[ast.AST]:
    """ast.iter_child_nodes without the iter_fields generator: walking is this module's hot path."""
    for name in node._fields:
        value = getattr(node, name, None)
        if isinstance(value, ast.AST):
            yield value
        elif isinstance(value, list):
            yield from (v for v in value if isinstance(v, ast.AST))


def _callee(call: ast.Call) -> str:
    """Last name of what is called: `torch.optim.AdamW(...)` -> 'AdamW'."""
    f = call.func
    return f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else ""


def _reads(expr: ast.AST | None, functions: frozenset[str] = frozenset()) -> set[str]:
    """Names and attribute names an expression reads. Calls that reduce data to a number or a
    score (BARRIER) or that go to a top-level function of the file are not looked into, nor
    .shape/.dtype; a string naming fineweb_val reads as '<val>'."""
    out, stack = set(), [expr] if expr is not None else []
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Call) and (BARRIER.search(_callee(node)) or
                                           isinstance(node.func, ast.Name) and node.func.id in functions):
            continue
        if isinstance(node, ast.Attribute):
            if node.attr in ("shape", "dtype", "device", "ndim"):
                continue
            out.add(node.attr)
        elif isinstance(node, ast.Name):
            out.add(node.id)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and "fineweb_val" in node.value:
            out.add("<val>")
        stack.extend(_children(node))
    return out


def _target_names(node: ast.AST) -> set[str]:
    if isinstance(node, ast.Name):
        return {node.id}
    if isinstance(node, ast.Attribute):
        return {node.attr}
    if isinstance(node, (ast.Subscript, ast.Starred)):
        return _target_names(node.value)
    if isinstance(node, (ast.Tuple, ast.List)):
        return set().union(*map(_target_names, node.elts))
    return set()


def _assigned(node: ast.Assign | ast.AnnAssign) -> set[str]:
    return set().union(*map(_target_names, node.targets if isinstance(node, ast.Assign) else [node.target]))


def _flows(nodes: list[ast.AST]) -> Iterator[tuple[ast.AST, ast.AST]]:
    """(target, value) of every binding: assignments, for-loops, comprehensions, with-as, walrus."""
    for node in nodes:
        if isinstance(node, ast.Assign):
            yield from ((t, node.value) for t in node.targets)
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign, ast.NamedExpr)) and node.value is not None:
            yield node.target, node.value
        elif isinstance(node, (ast.For, ast.AsyncFor, ast.comprehension)):
            yield node.target, node.iter
        elif isinstance(node, ast.withitem) and node.optional_vars is not None:
            yield node.optional_vars, node.context_expr


def _is_val(name: str) -> bool:
    return name == "<val>" or bool(VAL_DATA.search(name))


Siblings = tuple[ast.AST, list[ast.stmt], list[ast.stmt]]


def _siblings(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> Iterator[Siblings]:
    """For each enclosing statement list, innermost first: (owner, statements before, after)."""
    child, cur = node, parents.get(node)
    while cur is not None:
        for name in ("body", "orelse", "finalbody"):
            body = getattr(cur, name, None)
            if isinstance(body, list):
                i = next((i for i, s in enumerate(body) if s is child), None)
                if i is not None:
                    yield cur, body[:i], body[i + 1:]
        child, cur = cur, parents.get(cur)


def _scores(stmt: ast.stmt) -> bool:
    """Does this statement score tokens: a no_grad/inference_mode block, a loss accumulation,
    or a call to an eval/score function?"""
    for node in ast.walk(stmt):
        if isinstance(node, ast.With) and any(NO_GRAD.search(ast.unparse(i.context_expr)) for i in node.items):
            return True
        if isinstance(node, ast.AugAssign) and isinstance(node.op, ast.Add) and \
                any(SCORE_ACC.search(n) for n in _target_names(node.target)):
            return True
        if isinstance(node, ast.Call) and re.match(r"eval|score", _callee(node), re.I):
            return True
    return False


def _in_epoch_loop(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node is not None:
        if isinstance(node, (ast.For, ast.AsyncFor)) and \
                any(EPOCH.search(n) for n in _target_names(node.target) | _reads(node.iter)):
            return True
        node = parents.get(node)
    return False


def _scored_first(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """Score-first: in some enclosing loop a scoring statement precedes the one holding `node`
    in the same iteration, and no enclosing epoch loop repeats that scoring (adapt-then-rescore)."""
    return any(isinstance(owner, (ast.For, ast.AsyncFor, ast.While)) and any(map(_scores, before))
               and not _in_epoch_loop(owner, parents) for owner, before, _ in _siblings(node, parents))


def _runs_after(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> Iterator[ast.stmt]:
    """Statements of the enclosing function that run after `node` (up to a return/raise)."""
    for owner, _, after in _siblings(node, parents):
        for stmt in after:
            yield stmt
            if isinstance(stmt, (ast.Return, ast.Raise)):
                return
        if isinstance(owner, (ast.FunctionDef, ast.AsyncFunctionDef)):
            return


def _truthy(text: str | None, aliases: dict[str, str]) -> bool | None:
    """Truth of a default as written ('1', 1, True, an alias such as _B); None if unknown."""
    if text is None:
        return None
    text = aliases.get(text.strip(), text.strip())
    value = re.sub(r"^(?:int|float|bool|str)\((.*)\)$", r"\1", text).strip("'\" ")
    if value.lower() in ("true", "yes", "on"):
        return True
    if value.lower() in ("", "false", "no", "off", "none"):
        return False
    try:
        return float(value) != 0
    except ValueError:
        return None


# ---------------------------------------------------------------------------------------------
# Rules: each yields Hits for one Source.


def val_in_training(src: Source) -> Iterator[Hit]:
    """Validation data reaching a training input: a `train_*` name bound to val data (a line
    regex, which also covers Hyperparameters classes and keyword arguments), or a val-carrying
    call to GPTQ calibration, an artifact writer or a join with training data (_val_sink). Paths
    into a training loader or optimiser are val_data_flow's; gradient steps on val prequant_ttt's."""
    for line, col, _ in src.matches(TRAIN_BOUND_TO_VAL):
        yield Hit("val_in_training", line, col, "A training input (`train_*`) is bound to validation data; training "
                  "may read only fineweb_train_* (README: no training on validation tokens).")
    for unit in src.units(src.select(SEL_VAL, SEL_SINK) | src.select(SEL_VAL, SEL_TRAIN, SEL_JOIN)):
        for node in unit.nodes:
            if isinstance(node, ast.Call) and (hit := _val_sink(node, unit)):
                yield hit


SINKS = (("GPTQ/Hessian calibration", re.compile(r"hessian|gptq|quant\w*calib|calib\w*quant", re.I)),
         ("an artifact writer", re.compile(r"^save$|serializ|compress", re.I)))


def _val_sink(call: ast.Call, unit: Unit) -> Hit | None:
    """A call that joins val with training data, or hands val data (by name or assignment flow)
    to GPTQ/Hessian calibration or to an artifact writer ("paid prefix"). Training loaders and
    optimisers are val_data_flow's, which follows assignments in order. Eval calls stay silent."""
    name = _callee(call)
    if not (name in JOIN or any(rx.search(name) for _, rx in SINKS)):
        return None
    read = set().union(*(unit.reads(a) for a in [*call.args, *(k.value for k in call.keywords)]))
    if not read & unit.val:
        return None
    if name in JOIN:
        return Hit("val_in_training", call.lineno, call.col_offset, f"`{name}()` joins validation and training data, "
                   "so validation tokens enter training (README: no training on validation tokens).") \
            if any(TRAIN_DATA.search(n) for n in read) else None
    bound = " ".join(unit.bound.get(call, ()))
    for kind, callee_rx in SINKS:
        if callee_rx.search(name) and not re.search(r"val", bound, re.I):
            return Hit("val_in_training", call.lineno, call.col_offset,
                       f"Validation data is passed to `{name}()`, {kind}; validation tokens may only be scored, "
                       "never trained on, calibrated on or stored (README; issue #1017 C1).")
    return None


def prequant_ttt(src: Source) -> Iterator[Hit]:
    """Gradient updates on validation tokens that were not scored first. A `.backward()` (or
    autograd.grad) whose loss flows from val data must be preceded, in some enclosing loop or
    body, by a no_grad/inference_mode block, a loss accumulation or an eval call, and that
    scoring must not sit inside an epoch loop (re-scoring trained tokens). A helper that does not
    score is accepted when every call to it is score-first (phased TTT's global SGD). And any
    val-training function called before serialize/quantize/GPTQ bakes val into the artifact.
    Functions that fit a SLOT-style local delta are left to slot_etlb."""
    trainers = []
    for unit in src.units(src.select(SEL_GRAD, SEL_VAL)):
        sites = [n for n in unit.nodes if isinstance(n, ast.Call) and _loss_reads(n, unit) & unit.val]
        if not sites or any(_slot_tensors(unit, src.aliases)):
            continue  # a val-fitted local delta is SLOT/ETLB, reported by slot_etlb
        trainers.append(unit.name)
        unscored = [s for s in sites if not _scored_first(s, unit.parents)]
        if unscored and not _callers_score_first(src, unit.name):
            first = min(unscored, key=lambda n: (n.lineno, n.col_offset))
            yield Hit("prequant_ttt", first.lineno, first.col_offset,
                      "A gradient update is driven by validation tokens that were not scored first (no no_grad/"
                      "inference_mode scoring before it, or scoring repeated per epoch): adapt-then-score / "
                      "pre-quant TTT breaks score-before-update (issue #1017 C3).")
    for name in filter(None, trainers):
        for call, unit in _calls(src, name):
            later = next((c for s in _runs_after(call, unit.parents) for c in ast.walk(s)
                          if isinstance(c, ast.Call) and SERIALIZE.search(_callee(c) if _callee(c) != "save"
                                                                          else _dotted(c.func))), None)
            if later:
                yield Hit("prequant_ttt", call.lineno, call.col_offset,
                          f"`{name}()` trains on validation tokens before `{_callee(later)}()` (line {later.lineno}), "
                          "so the artifact is adapted to the tokens it is then scored on (pre-quant TTT, C3).")


def _loss_reads(call: ast.Call, unit: Unit) -> set[str]:
    """Names read by the loss of a `loss.backward()` / `autograd.grad(loss, ...)` call."""
    if isinstance(call.func, ast.Attribute) and call.func.attr == "backward":
        return unit.reads(call.func.value)
    if _dotted(call.func).endswith("autograd.grad") and call.args:
        return unit.reads(call.args[0])
    return set()


def _calls(src: Source, name: str) -> Iterator[tuple[ast.Call, Unit]]:
    for unit in src.units(src.select(re.compile(rf"{re.escape(name)}\s*\("))):
        for node in unit.nodes:
            if isinstance(node, ast.Call) and _callee(node) == name:
                yield node, unit


def _callers_score_first(src: Source, name: str) -> bool:
    calls = list(_calls(src, name)) if name else []
    return bool(calls) and all(_scored_first(call, unit.parents) for call, unit in calls)


def slot_etlb(src: Source) -> Iterator[Hit]:
    """SLOT/ETLB. Textually, SLOT_*/ETLB_* env switches: FAIL when an *_ENABLED switch defaults
    on (or, with no such switch, a *_STEPS default > 0), else WARN. Structurally, a local tensor
    created with requires_grad inside a function, handed to an optimizer or autograd.grad and
    added/multiplied into activations: a per-window delta or logit bias. Model weights (loop
    variables over .parameters()) and LoRA modules never match."""
    switches: dict[str, list[tuple[int, int, str, bool | None]]] = {}
    for line, col, m in src.matches(ENV_GET):
        key = src.aliases.get(m["key"], m["key"]).strip("'\"")
        if k := SLOT_KEY.match(key):
            on = _switch_on(k["what"], m["default"], src.aliases)
            switches.setdefault(k["family"], []).append((line, col, key, on))
    for family, found in switches.items():
        governing = [s for s in found if re.search(r"ENABLE|_USE|_ON$|^(?:SLOT|ETLB)$", s[2])] or \
                    [s for s in found if re.search(r"STEPS|ITERS", s[2])] or found
        line, col, key, on = next((s for s in governing if s[3]), governing[0])
        state = "is on by default" if on else "is present (off by default)"
        yield Hit("slot_etlb", line, col, f"{family} switch `{key}` {state}: {family} fits a delta or logit bias to "
                  "the targets of the window it then scores, which is banned (issue #1017 C1/C3).",
                  FAIL if on else WARN)
    for unit in src.units(src.select(SEL_REQUIRES_GRAD, SEL_OPTIMIZER)):
        for name, node in _slot_tensors(unit, src.aliases):
            yield Hit("slot_etlb", node.lineno, node.col_offset,
                      f"`{name}` is a requires_grad tensor optimised inside `{unit.name or '<module>'}` and added into "
                      "hidden states/logits; fitted on the scored window this is SLOT/ETLB (banned, C1/C3).")


def _switch_on(what: str | None, default: str | None, aliases: dict[str, str]) -> bool | None:
    if what and re.search(r"STEPS|ITERS", what):
        value = _truthy(default, aliases)
        return value and not (default or "").strip(" '\"").startswith("-")
    if what is None or re.search(r"ENABLE|USE|^ON$", what):
        return _truthy(default, aliases)
    return None


def _slot_tensors(unit: Unit, aliases: dict[str, str]) -> Iterator[tuple[str, ast.Assign]]:
    created = {}
    for node in unit.nodes:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name) \
                and isinstance(node.value, ast.Call) and _makes_grad_tensor(node.value, aliases):
            created.setdefault(node.targets[0].id, node)
    if not created:
        return
    optimised, mixed = set(), set()
    for node in unit.nodes:
        if isinstance(node, ast.Call) and (OPTIMIZER.search(_callee(node))
                                           or _dotted(node.func).endswith("autograd.grad")):
            optimised |= {n.id for a in node.args for n in ast.walk(a) if isinstance(n, ast.Name)}
        elif isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult)):
            mixed |= {n.id for n in (node.left, node.right) if isinstance(n, ast.Name)}
    for name, node in created.items():
        if name in optimised and name in mixed:
            yield name, node


def _makes_grad_tensor(call: ast.Call, aliases: dict[str, str]) -> bool:
    for c in ast.walk(call):
        if isinstance(c, ast.Call) and (
                any(k.arg == "requires_grad" and _truthy(ast.unparse(k.value), aliases) for k in c.keywords)
                or _callee(c) == "requires_grad_" and (not c.args or _truthy(ast.unparse(c.args[0]), aliases))):
            return True
    return _callee(call) == "Parameter"


def ngram_mix(src: Source) -> Iterator[Hit]:
    """Eval-time n-gram/cache mixtures. (a) A hash key XOR-ed with a target-named value
    (`ctx_hash ^ (tgt * prime)`): the lookup is keyed by the token being predicted. (b) A
    two-product interpolation `(1-a)*p + a*q` (or lerp/logaddexp) with an n-gram/PPM/backoff-named
    operand. BigramHash input embeddings hash input ids and add a single term: no match."""
    for unit in src.units(src.select(SEL_XOR, SEL_TARGET) | src.select(SEL_NGRAM)):
        for node in unit.nodes:
            if keyed := _target_keyed(node):
                yield Hit("ngram_mix", node.lineno, node.col_offset,
                          f"A hash key is combined with the target token `{keyed}`: a target-keyed n-gram lookup "
                          "lets p_t depend on x_t and is not normalized over the vocabulary (issue #1017 C1/C2; "
                          "PR #779 ruling).")
            if mixed := _ngram_interpolation(node):
                yield Hit("ngram_mix", node.lineno, node.col_offset,
                          f"N-gram/cache probabilities (`{mixed}`) are interpolated into the model's output; at eval "
                          "such a mixture must be causal and normalized over the vocabulary (C1/C2; hashed caches "
                          "are banned).")


def _target_keyed(node: ast.AST) -> str | None:
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitXor):
        sides = (node.left, node.right)
    elif isinstance(node, ast.Call) and _callee(node) == "bitwise_xor":
        sides = tuple(node.args)
    else:
        return None
    return next((n for side in sides for n in sorted(_reads(side)) if TARGET.match(n)), None)


def _ngram_interpolation(node: ast.AST) -> str | None:
    is_mix = (isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub))
              and all(isinstance(s, ast.BinOp) and isinstance(s.op, ast.Mult) for s in (node.left, node.right))) \
        or (isinstance(node, ast.Call) and _callee(node) in ("lerp", "lerp_", "logaddexp"))
    return next((n for n in sorted(_reads(node)) if NGRAM.search(n)), None) if is_mix else None


def network(src: Source) -> Iterator[Hit]:
    """Network modules imported (at the start of a statement), download helpers called, or
    wget/curl/pip/git named in a string. By regex on non-comment lines, so it also works on
    code that does not parse."""
    for line, col, m in (hit for rx in NETWORK for hit in src.matches(rx)):
        if m.group().startswith(("from", "import")) and src.lines[line - 1][:col].strip() not in ("", ";"):
            continue  # prose such as "data from requests" in a docstring
        what = m.group().strip(" (\"'")
        yield Hit("network", line, col, f"`{what}` means network access or a download; evaluation must run "
                  "offline with everything inside the artifact (README).")


def hardcoded_bytes_per_token(src: Source) -> Iterator[Hit]:
    """BPB from a constant: a bytes-per-token / tokens-per-byte name bound to a number (or a
    numeric env default), or a */ chain with log(2) and a non-round float such as 2.436."""
    for unit in src.units(src.select(SEL_LOG2)):
        for node in unit.nodes:
            if (const := _bpt_constant(node)) is not None:
                yield Hit("hardcoded_bytes_per_token", node.lineno, node.col_offset,
                          f"BPB uses the hard-coded constant {const} instead of byte counts from the tokenizer's piece "
                          "table, so val_bpb is not bits per byte of this validation set (issue #1017 BPB rules).")


def _bpt_constant(node: ast.AST) -> float | None:
    if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
        if any(re.search(r"bytes?_per_tok|tokens?_per_byte|^bpt$|avg_bytes", n, re.I) for n in _assigned(node)):
            inner = list(ast.walk(node.value))
            computed = any(isinstance(n, ast.Name) and n.id not in ("float", "int", "os") for n in inner)
            nums = [c.value for c in inner if isinstance(c, ast.Constant) and type(c.value) in (int, float, str)
                    and re.fullmatch(r"\d*\.\d+|\d+", str(c.value)) and float(c.value) not in (0, 1)]
            return float(nums[-1]) if nums and not computed else None
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Mult, ast.Div)) and _has_log2(node):
        return next((v for v in _chain_constants(node) if 0.1 < v < 10 and round(v, 1) != v), None)
    return None


def _has_log2(node: ast.AST) -> bool:
    if isinstance(node, ast.Call):
        return _callee(node) == "log" and bool(node.args) and isinstance(node.args[0], ast.Constant) \
            and node.args[0].value == 2
    if isinstance(node, ast.Name):
        return node.id.lower() in ("ln2", "log2", "ln_2", "log_2")
    return isinstance(node, ast.BinOp) and (_has_log2(node.left) or _has_log2(node.right))


def _chain_constants(node: ast.AST) -> Iterator[float]:
    """Float literals that are direct operands of a */ chain (not arguments of calls)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, float):
        yield node.value
    elif isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Mult, ast.Div)):
        yield from _chain_constants(node.left)
        yield from _chain_constants(node.right)


# ---------------------------------------------------------------------------------------------
# Data flow: validation data followed through assignments to a training loader or an optimiser


_VAL_NAME = r"val(?:id|idation)?_(?:files?|pattern|glob|shards?|paths?|dir|tokens?|data|docs|ids|set|dataset|ds|stream)"
VAL_SOURCE = re.compile(rf"^{_VAL_NAME}$|^fineweb_val", re.I)  # a name or attribute that holds validation data
FLOW_OPS = ("append", "extend", "insert", "add", "update")  # container methods that take a value in
SEL_FLOW = re.compile(rf"{_VAL_NAME}|fineweb_val", re.I)
SEL_FLOW_SINK = re.compile(r"oader\(|tream\(|batches\(|optim\.|Adam|SGD|Muon|Lion")
MAX_PATH = 12  # steps kept in a reported path


@dataclass
class _Flow:
    """Which names hold validation data, and the path each value took to get there. Plain names are
    local to a function; attribute names (`args.val_files`, `self.files`, a config class's fields)
    are one module-wide namespace, tracked by name whatever object they hang on."""

    functions: frozenset[str]
    attrs: dict[str, list[str]] = field(default_factory=dict)
    params: dict[tuple[str, str], list[str]] = field(default_factory=dict)  # (function, parameter) -> path
    hits: dict[int, Hit] = field(default_factory=dict)


def val_data_flow(src: Source) -> Iterator[Hit]:
    """Validation data reaching a training loader or an optimiser, with the path it took:
    'fineweb_val_*.bin' → val_files → args.val_files → glob → files → DistributedTokenLoader.
    Sources: a string naming fineweb_val, a val_files/val_tokens-style name or attribute. A
    loader counts as training when it, the name its result is bound to, the enclosing function
    or a step of the path says train; one bound to a val/eval name never does.
    One module, statements in source order; then once more the functions that were handed
    validation data, so a function defined before its caller sees its tainted parameters.
    Followed: assignments (plain, augmented, annotated, tuple targets), attributes by name,
    f-strings, calls that are not reductions (glob, sorted, os.path.join, .float(), ...), `+`,
    list literals and comprehensions, for-loop and with targets, .append/.extend/.insert, and
    arguments of the module's own functions into their parameters. Not followed: return values
    of the module's own functions, other modules, aliasing (`b = a; a.append(v)` does not taint
    b), branches (an assignment in one branch overwrites the other's), and code in top-level
    blocks that name neither validation data nor a loader/optimiser (for speed)."""
    indices = src.select(SEL_FLOW) | src.select(SEL_FLOW_SINK)
    units = sorted(src.units(indices), key=lambda u: getattr(u.node, "lineno", 0) or
                   min((getattr(s, "lineno", 0) for s in getattr(u.node, "body", [])), default=0))
    flow = _Flow(src.functions)
    for round_ in range(2):
        if round_:  # again, only the functions that were handed validation data
            units = [u for u in units if any(f == u.name for f, _ in flow.params)]
        for unit in units:
            params = {}
            if isinstance(unit.node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                params = {a.arg: path for a in ast.walk(unit.node.args) if isinstance(a, ast.arg)
                          and (path := flow.params.get((unit.name, a.arg)))}
            local: dict[str, list[str]] = dict(params)
            _flow_body(unit.node.body, local, flow, unit, top=not isinstance(unit.node, (ast.FunctionDef,
                                                                                       ast.AsyncFunctionDef)))
    yield from flow.hits.values()


def _flow_body(body: list[ast.stmt], local: dict[str, list[str]], flow: _Flow, unit: Unit, top: bool) -> None:
    for stmt in body:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            continue  # nested definitions run later, with their own names
        for call in _calls_in_order(stmt):
            _flow_call(call, stmt, local, flow, unit)
        if isinstance(stmt, ast.Assign):
            path = _taint(stmt.value, local, flow)
            for target in stmt.targets:
                _bind(target, path, local, flow, top)
        elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
            _bind(stmt.target, _taint(stmt.value, local, flow), local, flow, top)
        elif isinstance(stmt, ast.AugAssign):
            path = _taint(stmt.value, local, flow)
            if path:
                _bind(stmt.target, path, local, flow, top)
        elif isinstance(stmt, (ast.For, ast.AsyncFor)):
            _bind(stmt.target, _taint(stmt.iter, local, flow), local, flow, top)
        elif isinstance(stmt, (ast.With, ast.AsyncWith)):
            for item in stmt.items:
                if item.optional_vars is not None:
                    _bind(item.optional_vars, _taint(item.context_expr, local, flow), local, flow, top)
        for name in ("body", "orelse", "finalbody"):
            inner = getattr(stmt, name, None)
            if isinstance(inner, list) and inner and isinstance(inner[0], ast.stmt):
                _flow_body(inner, local, flow, unit, top)
        for handler in getattr(stmt, "handlers", []):
            _flow_body(handler.body, local, flow, unit, top)


def _calls_in_order(stmt: ast.stmt) -> Iterator[ast.Call]:
    """Calls in the statement's own expressions (not its nested statements or lambdas), outermost
    and leftmost first."""
    stack = [c for c in _children(stmt) if not isinstance(c, (ast.stmt, ast.excepthandler))][::-1]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Lambda, ast.Constant, ast.Name)):
            continue
        if isinstance(node, ast.Call):
            yield node
        stack.extend(list(_children(node))[::-1])


def _bind(target: ast.AST, path: list[str] | None, local: dict[str, list[str]], flow: _Flow, top: bool) -> None:
    """Bind (or, with path None, clear) every name a target assigns."""
    if isinstance(target, (ast.Tuple, ast.List)):
        for elt in target.elts:
            _bind(elt, path, local, flow, top)
        return
    if isinstance(target, ast.Starred):
        return _bind(target.value, path, local, flow, top)
    if isinstance(target, ast.Subscript):  # x[i] = v taints x, never clears it
        if path:
            _bind(target.value, path, local, flow, top)
        return
    label = _dotted(target)
    if isinstance(target, ast.Attribute):
        space, key = flow.attrs, target.attr
    elif isinstance(target, ast.Name):
        space, key = (flow.attrs if top else local), target.id
    else:
        return
    if path:
        space[key] = _step(path, label)
    else:
        space.pop(key, None)


def _step(path: list[str], step: str) -> list[str]:
    if not step or (path and path[-1] == step):
        return path
    out = path + [step]
    return out if len(out) <= MAX_PATH else out[:2] + ["…"] + out[-(MAX_PATH - 3):]


def _taint(expr: ast.AST | None, local: dict[str, list[str]], flow: _Flow) -> list[str] | None:
    """The path by which `expr` carries validation data, or None."""
    if expr is None:
        return None
    if isinstance(expr, ast.Constant):
        if isinstance(expr.value, str) and "fineweb_val" in expr.value:
            return [repr(expr.value) if len(expr.value) < 60 else "'…fineweb_val…'"]
        return None
    if isinstance(expr, ast.Name):
        if expr.id in local:
            return local[expr.id]
        if expr.id in flow.attrs:
            return flow.attrs[expr.id]
        return [expr.id] if VAL_SOURCE.search(expr.id) else None
    if isinstance(expr, ast.Attribute):
        if expr.attr in ("shape", "dtype", "device", "ndim"):
            return None
        label = _dotted(expr) or expr.attr
        if expr.attr in flow.attrs:
            return _step(flow.attrs[expr.attr], label)
        if VAL_SOURCE.search(expr.attr):
            return [label]
        return _taint(expr.value, local, flow) if isinstance(expr.value, ast.Call) else None
    if isinstance(expr, ast.Call):
        name = _callee(expr)
        cast = isinstance(expr.func, ast.Attribute) and name in ("float", "int", "bool", "str")  # tensor.float()
        if BARRIER.search(name) and not cast or isinstance(expr.func, ast.Name) and name in flow.functions:
            return None
        parts = [*expr.args, *(k.value for k in expr.keywords)]
        if isinstance(expr.func, ast.Attribute):
            parts.append(expr.func.value)
        path = next(filter(None, (_taint(p, local, flow) for p in parts)), None)
        return _step(path, name) if path else None
    if isinstance(expr, (ast.ListComp, ast.SetComp, ast.GeneratorExp)):
        return next(filter(None, (_taint(g.iter, local, flow) for g in expr.generators)), None) \
            or _taint(expr.elt, local, flow)
    if isinstance(expr, ast.Lambda):
        return None
    return next(filter(None, (_taint(c, local, flow) for c in _children(expr)
                              if isinstance(c, ast.expr))), None)


def _flow_call(call: ast.Call, stmt: ast.stmt, local: dict[str, list[str]], flow: _Flow, unit: Unit) -> None:
    """A call moves validation data: into a container (.append), into a parameter of one of the
    module's functions, or into a training loader or optimiser (a hit)."""
    name = _callee(call)
    args = [*call.args, *(k.value for k in call.keywords)]
    path = next(filter(None, (_taint(a, local, flow) for a in args)), None)
    if path is None:
        return
    if isinstance(call.func, ast.Attribute) and name in FLOW_OPS:
        _bind(call.func.value, _step(path, f"{_dotted(call.func.value) or name}.{name}"), local, flow,
              top=not isinstance(unit.node, (ast.FunctionDef, ast.AsyncFunctionDef)))
        return
    bound = " ".join(sorted(_assigned(stmt))) if isinstance(stmt, ast.Assign) and stmt.value is call else ""
    if isinstance(call.func, ast.Name) and name in flow.functions:
        params = _parameters(unit.source, name)
        into = f"{bound} = " if bound else ""
        for i, arg in enumerate(call.args):
            if i < len(params) and (p := _taint(arg, local, flow)):
                flow.params.setdefault((name, params[i]), _step(p, f"{into}{name}({params[i]})"))
        for kw in call.keywords:
            if kw.arg and (p := _taint(kw.value, local, flow)):
                flow.params.setdefault((name, kw.arg), _step(p, f"{into}{name}({kw.arg})"))
        return
    # Training context: the loader, what its result is bound to, the enclosing function, or a
    # train-named step of the path (`train_files += val_shards`, `train_loader = make(...)`).
    context = f"{name} {bound} {unit.name} {' '.join(path)}"
    if re.search(r"val|eval|test", bound, re.I):
        return
    if re.search(r"loader|stream|batches", name, re.I) and re.search(r"train", context, re.I):
        kind = "a training loader"
    elif OPTIMIZER.search(name) and name[:1].isupper():
        kind = "an optimiser"
    else:
        return
    flow.hits.setdefault(call.lineno, Hit(
        "val_in_training", call.lineno, call.col_offset,
        f"Validation data reaches `{name}()`, {kind}: {' → '.join(_step(path, name))}; validation tokens may "
        "only be scored, never trained on (README: no training on validation tokens)."))


def _parameters(src: Source, name: str) -> list[str]:
    """Positional parameter names of the module's function `name` (methods' self dropped)."""
    for unit in src.units(src.select(re.compile(rf"def {re.escape(name)}\s*\("))):
        if unit.name == name and isinstance(unit.node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            return [a.arg for a in [*unit.node.args.posonlyargs, *unit.node.args.args]]
    return []


RULES: tuple[Callable[[Source], Iterator[Hit]], ...] = (
    val_data_flow, val_in_training, prequant_ttt, slot_etlb, ngram_mix, network, hardcoded_bytes_per_token)


# ---------------------------------------------------------------------------------------------
# Driver


def lint_files(folder: pathlib.Path, code_files: list[pathlib.Path]) -> list[Finding]:
    """Lint each code file as it runs (an exec wrapper's unpacked code); a file that cannot be
    read is one lint.unparsed WARN."""
    sources, findings = [], []
    for path in code_files:
        rel = _relative(folder, path)
        source = read_python(pathlib.Path(path), rel)
        if source is None:
            findings.append(Finding("lint", WARN, "lint.unparsed", f"{rel} could not be read.", (Evidence(rel),)))
        else:
            sources.append(source)
    return findings + lint_sources(sources)


def lint_sources(sources: list[PySource]) -> list[Finding]:
    """Lint the code model's Python sources. Never raises: a source that cannot be analysed
    becomes a lint.unparsed WARN rather than taking the harness down."""
    findings: list[Finding] = []
    for source in sources:
        try:
            findings += lint_source(Source(source.rel, source.text, source.exec_line))
        except Exception as err:  # noqa: BLE001 -- the one place a linter bug must not escape
            findings.append(Finding("lint", WARN, "lint.unparsed",
                                    f"{source.rel} could not be linted ({type(err).__name__}: {err}).",
                                    (Evidence(source.rel),)))
    return findings


def lint_source(src: Source) -> list[Finding]:
    """All rules over one Source, line-regex fallbacks over the blocks that did not parse, and a
    single lint.unparsed naming the first syntax error; one finding per rule and line, by line."""
    hits = [hit for rule in RULES for hit in rule(src)]
    failed = src.failed()
    for block, _ in failed:
        for offset, line in enumerate(block.text.splitlines()):
            for rule, (rx, why) in FALLBACK.items():
                if m := rx.search(line):
                    hits.append(Hit(rule, block.first_line + offset, m.start(),
                                    f"Line-based match in code that did not parse: {why}"))
    if failed:
        err = failed[0][1]
        hits.append(Hit("unparsed", err.lineno or failed[0][0].first_line, 0,
                        f"Python could not parse this code ({err.msg}, line {err.lineno}); {len(failed)} block(s) were "
                        "checked with line regexes only."))
    seen, out = set(), []
    for hit in sorted(hits, key=lambda h: (h.line, h.col)):
        if (hit.rule, hit.line) not in seen:
            seen.add((hit.rule, hit.line))
            out.append(_finding(src, hit))
    return out


def _finding(src: Source, hit: Hit) -> Finding:
    text = _snippet(src.lines[hit.line - 1] if 0 < hit.line <= len(src.lines) else "", hit.col)
    message, line = hit.message, hit.line
    if src.exec_line is not None:
        message = f"{message[:-1]} (line {line} of the code this file's exec wrapper unpacks)."
        line = src.exec_line
    return Finding("lint", hit.status, f"lint.{hit.rule}", message, (Evidence(src.rel, line, text),))


def _snippet(line: str, col: int) -> str:
    """The stripped line, or for a long (minified) line the 160 characters around `col`."""
    text = line.strip()
    if len(text) <= MAX_TEXT:
        return text
    start = max(0, col - (len(line) - len(line.lstrip())) - 20)
    return text[start:start + MAX_TEXT]


def _relative(folder: pathlib.Path, path: pathlib.Path) -> str:
    try:
        return pathlib.Path(path).resolve().relative_to(pathlib.Path(folder).resolve()).as_posix()
    except (ValueError, OSError):
        return pathlib.Path(path).name
