"""Read a training log of any generation into facts with line numbers.

Record logs drifted through many formats (rules.md §4): `step:N/M` vs `N/M`,
`val_loss:` vs `val_loss=`, unix-timestamp prefixes, the script's own source
code echoed into the log (whose f-string templates look like metric lines),
several runs concatenated in one file. Every pattern here is anchored at the
start of a line and demands digits, and source sections are skipped, so a
template or a progress line is never mistaken for a result. Each fact keeps the
line it came from, so findings can cite it.

pgolf's own logs (`pgolf export`'s seed logs) are written with the functions at the end, so the
lines pgolf writes are the lines this module reads, in one place.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from harness.rules import Rules

MAX_LOG_BYTES = 64 * 1024 * 1024
_TS = re.compile(r"^\d{10}\.\d+ ")
_SEPARATOR = re.compile(r"^={20,}\s*$")
_RUN_START = re.compile(r"^(?:val_bpb:enabled|Hyperparameters:)")
_METRIC = re.compile(
    r"^(?P<label>[A-Za-z_][\w :\-]*?)\s+(?:sliding )?val_loss[:=]\s*(?P<loss>\d+\.\d+)"
    r"\s+(?:sliding )?val_bpb[:=]\s*(?P<bpb>\d+\.(?P<frac>\d+))(?P<rest>.*)$"
)
_EVAL_MS = re.compile(r"eval_time: ?(\d+(?:\.\d+)?)ms")
_ELAPSED_S = re.compile(r"elapsed=(\d+(?:\.\d+)?)s")

# name -> (pattern, group converters); the first capture group is the value.
_SCALARS: dict[str, re.Pattern[str]] = {
    "total_bytes": re.compile(r"^Total submission size(?: [\w+\-]+)?: (\d+) bytes"),
    "model_bytes": re.compile(r"^Serialized model [\w+\-]+: (\d+) bytes"),
    "code_bytes_compressed": re.compile(r"^Code size \(compressed\): (\d+) bytes"),
    "code_bytes_uncompressed": re.compile(r"^Code size \(uncompressed\): (\d+) bytes"),
    "code_bytes_plain": re.compile(r"^Code size: (\d+) bytes"),
    "gptq_reserve_s": re.compile(r"^gptq:reserving (\d+(?:\.\d+)?)s, effective=\d+ms"),
    "hessian_s": re.compile(r"^GPTQ:collected \d+ Hessians in (\d+(?:\.\d+)?)s"),
    "total_eval_time_s": re.compile(r"^total_eval_time: ?(\d+(?:\.\d+)?)s"),
    "ttt_warmup_s": re.compile(r"^ttt_lora:compile warmup done \((\d+(?:\.\d+)?)s\)"),
    "artifact_production_s": re.compile(r"^artifact_production_wallclock: (\d+(?:\.\d+)?)s"),
    "val_tokens": re.compile(r"^(?:val_loader:shards pattern=\S+ tokens:|val_tokens: ?)(\d+)"),
    "train_shards": re.compile(r"^(?:train_loader:dataset:\S+ train_shards:|train_shards: ?)(\d+)"),
    "seed": re.compile(r"^\s*seed: ?(\d+)\s*$"),
    "world_size": re.compile(r"^(?:world_size:(\d+) grad_accum_steps:\d+|\s+world_size: (\d+))\s*$"),
    "grad_accum_steps": re.compile(r"^(?:world_size:\d+ grad_accum_steps:(\d+)|\s+grad_accum_steps: (\d+))\s*$"),
    "vocab_size": re.compile(r"^\s+vocab_size: (\d+)\s*$"),
    "max_wallclock_s": re.compile(r"(?:^|\s)max_wallclock_seconds: ?(\d+(?:\.\d+)?)"),
    "tokenizer_path": re.compile(r"tokenizer_path[=:] ?(\S+)"),
    "pytorch": re.compile(r"^Running PyTorch (\S+)"),
    "caseops": re.compile(r"^(?:\s+caseops_enabled: (True)|val_bpb:byte_(sidecar):enabled)"),
}
# Facts where the last occurrence wins (sizes are printed raw first, compressed last).
_LAST_WINS = {"total_bytes", "model_bytes"}
_STOP = re.compile(r"^stopping_early: wallclock_cap train_time: ?(\d+)ms step: ?(\d+)/\d+")
_STEP_MS = re.compile(r"^step:(\d+)/\d+ (?:val_loss|train_loss):\S+ .*?train_time:(\d+)ms")
_STEP_MIN = re.compile(r"^(\d+)/\d+ train_loss: \S+ train_time: (\d+(?:\.\d+)?)m")
_GPU_ROW = re.compile(r"^\|\s+\d+\s+NVIDIA ([^|]+?)\s{2,}")
_QUOTE = "[{}] "  # starts every line of another program's output that pgolf quotes in a log it writes
# A training-loss line of any log generation, also as quoted from a train phase's output.
_LOSS_LINE = re.compile(rf"^(?:{re.escape(_QUOTE.format('train'))})?(?:\d{{10}}\.\d+ )?(?:step:)?(\d+)/\d+ "
                        r"train_loss[:=] ?(\d+(?:\.\d+)?)")
MAX_CURVE_POINTS = 400  # enough for a plot; a log that prints every step is thinned evenly


@dataclass(frozen=True)
class Seen:
    """A value and the 1-based line it was read from."""

    value: float | int | str
    line: int
    text: str


@dataclass(frozen=True)
class MetricLine:
    label: str
    stage: str | None  # None: never a score (progress, pre-quant, diagnostic)
    val_loss: float
    val_bpb: float
    decimals: int
    eval_time_s: float | None
    line: int
    text: str


@dataclass
class LogEvidence:
    """Everything read from one log file. `name` is relative to the submission folder."""

    name: str
    facts: dict[str, Seen] = field(default_factory=dict)
    metrics: list[MetricLine] = field(default_factory=list)
    gpus: list[Seen] = field(default_factory=list)
    train_stop: Seen | None = None  # value = train_time ms, exact when from stopping_early
    train_stop_exact: bool = False
    steps: int | None = None
    runs: int = 1
    problems: list[str] = field(default_factory=list)  # why the file could not be read fully
    unreadable: bool = False

    def get(self, name: str) -> Seen | None:
        return self.facts.get(name)

    @property
    def seed(self) -> int | None:
        seen = self.facts.get("seed")
        return int(seen.value) if seen else None

    @property
    def scores(self) -> list[MetricLine]:
        return [m for m in self.metrics if m.stage is not None]


def read_log(path: Path, folder: Path, rules: Rules) -> LogEvidence:
    """Parse one log. Never raises for content problems: they land in `problems`."""
    ev = LogEvidence(name=str(path.relative_to(folder)))
    try:
        size = path.stat().st_size
        if size > MAX_LOG_BYTES:
            ev.problems.append(f"log is {size:,} bytes, over the {MAX_LOG_BYTES:,}-byte reading limit")
            ev.unreadable = True
            return ev
        raw = path.read_bytes()
    except OSError as exc:
        ev.problems.append(f"cannot read: {exc.strerror or exc}")
        ev.unreadable = True
        return ev
    if not raw.strip():
        ev.problems.append("log is empty")
        ev.unreadable = True
        return ev
    if b"\x00" in raw[:65536]:
        ev.problems.append("log is a binary file (contains NUL bytes), not a text log")
        ev.unreadable = True
        return ev
    text = raw.decode("utf-8", errors="replace")
    if "\ufffd" in text and "\ufffd".encode() not in raw:
        ev.problems.append(f"log is not valid UTF-8 ({text.count(chr(0xFFFD))} undecodable bytes replaced)")
    _parse_lines(text.splitlines(), ev, rules)
    return ev


def _run_lines(lines: list[str]) -> tuple[int, int]:
    """(runs found, index where the last run starts): multi-run logs are judged on the last run."""
    starts = [i for i, line in enumerate(lines) if _RUN_START.match(_TS.sub("", line, count=1))]
    return max(len(starts), 1), (starts[-1] if starts else 0)


def _source_spans(lines: list[str]) -> set[int]:
    """Indexes of lines that are the script's own source echoed into the log.

    Root-style logfiles open with the source and end it at the first separator;
    later ones print `Source code:` then a separator, the source, a separator.
    """
    skip: set[int] = set()
    first = next((l for l in lines if l.strip()), "")
    state = "source" if re.match(r'^(?:import |from |"""|#!|#)', first) else "log"
    for i, line in enumerate(lines):
        if state == "log":
            if line.strip() == "Source code:":
                state = "opening"
            continue
        if state == "opening" and _SEPARATOR.match(line):
            state = "source"
            continue
        if _SEPARATOR.match(line):
            state = "log"
            continue
        state = "source"
        skip.add(i)
    return skip


def _parse_lines(lines: list[str], ev: LogEvidence, rules: Rules) -> None:
    ev.runs, first = _run_lines(lines)
    if ev.runs > 1:
        ev.problems.append(f"log holds {ev.runs} runs; judging the last one (from line {first + 1})")
    skip = _source_spans(lines)
    last_step: Seen | None = None
    for index in range(first, len(lines)):
        if index in skip:
            continue
        line = _TS.sub("", lines[index], count=1)
        number = index + 1
        shown = line.strip()[:200]
        metric = _METRIC.match(line)
        if metric:
            label = metric["label"].strip()
            rest = metric["rest"]
            ms = _EVAL_MS.search(rest)
            el = _ELAPSED_S.search(rest)
            eval_s = float(ms[1]) / 1000 if ms else (float(el[1]) if el else None)
            ev.metrics.append(MetricLine(label, rules.score_stage(label), float(metric["loss"]),
                                         float(metric["bpb"]), len(metric["frac"]), eval_s, number, shown))
            continue
        stop = _STOP.match(line)
        if stop:
            ev.train_stop, ev.train_stop_exact, ev.steps = Seen(int(stop[1]), number, shown), True, int(stop[2])
            continue
        step = _STEP_MS.match(line) or _STEP_MIN.match(line)
        if step:
            ms = float(step[2]) if step.re is _STEP_MS else float(step[2]) * 60_000
            last_step = Seen(ms, number, shown)
            if not ev.train_stop_exact:
                ev.steps = int(step[1])
            continue
        gpu = _GPU_ROW.match(line)
        if gpu:
            ev.gpus.append(Seen("NVIDIA " + gpu[1].strip(), number, shown))
            continue
        for name, pattern in _SCALARS.items():
            found = pattern.search(line) if name in ("max_wallclock_s", "tokenizer_path") else pattern.match(line)
            if found and (name in _LAST_WINS or name not in ev.facts):
                value = next(g for g in found.groups() if g is not None)
                ev.facts[name] = Seen(_number(value), number, shown)
    if ev.train_stop is None and last_step is not None:
        ev.train_stop = last_step


def _number(text: str) -> int | float | str:
    if re.fullmatch(r"\d+", text):
        return int(text)
    if re.fullmatch(r"\d+\.\d+", text):
        return float(text)
    return text


def tokenizer_of(logs: list[LogEvidence], rules: Rules) -> tuple[str | None, str]:
    """Which tokenizer the runs used, and the evidence that says so."""
    for ev in logs:
        if ev.get("caseops"):
            return "caseops_sp8192", f"{ev.name}:{ev.facts['caseops'].line}"
        path = ev.get("tokenizer_path")
        if path:
            m = re.search(r"fineweb_(\d+)_bpe", str(path.value))
            if m and f"sp{m[1]}" in rules.tokenizers:
                return f"sp{m[1]}", f"{ev.name}:{path.line}"
            if "byte260" in str(path.value):
                return "byte260", f"{ev.name}:{path.line}"
        vocab = ev.get("vocab_size")
        if vocab and f"sp{vocab.value}" in rules.tokenizers:
            return f"sp{vocab.value}", f"{ev.name}:{vocab.line}"
        tokens = ev.get("val_tokens")
        if tokens:
            for name, spec in rules.tokenizers.items():
                if spec["val_tokens"] == tokens.value:
                    return name, f"{ev.name}:{tokens.line}"
    return None, "no tokenizer path, vocab size or canonical val token count in the logs"


def loss_curve(path: Path) -> list[tuple[int, float]]:
    """(step, train_loss) of the log's last run, thinned to MAX_CURVE_POINTS; [] when it prints none."""
    try:
        text = path.read_text("utf-8", errors="replace")
    except OSError:
        return []
    points: list[tuple[int, float]] = []
    for line in text.splitlines():
        found = _LOSS_LINE.match(line)
        if not found:
            continue
        step, loss = found[1], float(found[2])
        if len(step) > 15 or not math.isfinite(loss):
            continue  # no real run counts 10^15 steps; a loss past float's range: no point a plot can place
        step = int(step)
        if points and step < points[-1][0]:
            points = []  # the step count went back: a later run in the same log starts here
        if not points or step > points[-1][0]:
            points.append((step, loss))
    stride = math.ceil(len(points) / MAX_CURVE_POINTS) if points else 1
    return points[::-1][::stride][::-1]  # counted from the end, so the last step is always kept


# --- the lines pgolf writes, each in a format read above -------------------------------------------

SEPARATOR = "=" * 80
_FACT_LINES = {  # fact name (as in _SCALARS) -> the line that states it
    "seed": "seed: {}",
    "world_size": "  world_size: {}",
    "model_bytes": "Serialized model pgolf-artifact: {} bytes",
    "code_bytes_plain": "Code size: {} bytes",
    "total_bytes": "Total submission size: {} bytes",
}


def fact_line(name: str, value: int) -> str:
    """The line that read_log reads back as fact `name` with this value."""
    return _FACT_LINES[name].format(value)


def train_stop_line(train_ms: int, steps: int) -> str:
    """An exact training stop (read as train_stop and steps)."""
    return f"stopping_early: wallclock_cap train_time: {train_ms}ms step: {steps}/{steps}"


def metric_line(label: str, val_loss: float, val_bpb: float, eval_ms: int) -> str:
    """A score line at 8 decimals, as the records' `_exact` lines print, with its own eval time."""
    return f"{label} val_loss:{val_loss:.8f} val_bpb:{val_bpb:.8f} eval_time:{eval_ms}ms"


def quoted(source: str, text: str) -> list[str]:
    """Another program's output inside a pgolf log, each line prefixed so that no pattern above, all
    anchored at the line's start, reads it as evidence (only the loss curve reads a quoted train phase)."""
    return [_QUOTE.format(source) + line for line in text.splitlines()]
