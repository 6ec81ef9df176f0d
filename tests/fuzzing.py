"""The fuzzer's machinery: run one `pgolf` command line in a forked child under a memory and a time cap,
judge how it ended, and the raw material (hostile numbers, texts, JSON shapes) the families mutate real
inputs with.

A case runs `harness.cli.main(argv)` in a child forked from the test process, so thousands of cases
cost no interpreter start each; the child gets RLIMIT_AS (what the harness had at fork + MEMORY_CAP)
and an alarm, so a runaway input ends as a MemoryError traceback or a SIGALRM instead of taking the
machine. The oracle: the command ended by itself with exit 0 or 1 (a verdict) or 2 (a usage error:
one `pgolf: ...` line, or argparse's usage + `pgolf ...: error:` lines), printed no traceback, took
less than SLOW_S, and every JSON file it wrote is strict JSON (no NaN/Infinity).

PGOLF_FUZZ=all raises every family's example count (tests/test_fuzz.py); PGOLF_FUZZ_TALLY=FILE
appends one line per case (family, clean or the problem) so a run can be counted per family.
"""
from __future__ import annotations

import json
import os
import resource
import signal
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

MEMORY_CAP = 1 << 30  # bytes a case may add to the address space the test process had
TIME_CAP_S = 20  # the child is killed (SIGALRM) past this
SLOW_S = 8.0  # a case that takes longer is a finding ("never more than a few seconds"; the machine is shared)
EXHAUSTIVE = os.environ.get("PGOLF_FUZZ") == "all"


@dataclass
class Outcome:
    argv: list[str]
    rc: int | None  # None: killed by a signal
    signal: int | None
    stdout: str
    stderr: str
    seconds: float

    def problems(self, json_outputs: tuple[Path, ...] = ()) -> list[str]:
        """What breaks the oracle; empty when the case ended as a tool should."""
        found = []
        if self.signal is not None:
            found.append("hang (killed at the time cap)" if self.signal == signal.SIGALRM
                         else f"killed by signal {self.signal}")
        elif self.rc not in (0, 1, 2):
            found.append(f"exit {self.rc}")
        if "Traceback" in self.stderr or "Traceback" in self.stdout:
            last = self.stderr.strip().splitlines()[-1][:300] if self.stderr.strip() else ""
            found.append(f"traceback: {last}")
        if self.rc == 2 and not _usage_error(self.stderr):
            found.append(f"exit 2 without a one-line error: {self.stderr[-300:]!r}")
        if self.seconds > SLOW_S:
            found.append(f"slow: {self.seconds:.1f} s")
        for path in json_outputs:
            if path.is_file() and not path.is_symlink():
                try:
                    json.loads(path.read_text("utf-8"), parse_constant=_refuse_constant)
                except ValueError as exc:
                    found.append(f"{path.name} is not strict JSON: {exc}")
        return found


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _usage_error(stderr: str) -> bool:
    lines = stderr.strip().splitlines()
    if len(lines) == 1:
        return lines[0].startswith("pgolf: ") and len(lines[0]) < 2000
    return bool(lines) and lines[0].startswith("usage: pgolf") and ": error: " in lines[-1]


def _address_space() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    return 0


def run_case(argv: list[str], cwd: Path) -> Outcome:
    """`pgolf ARGV` in a forked child with cwd `cwd`, capped at MEMORY_CAP more bytes and TIME_CAP_S."""
    from harness.cli import main  # imported before the fork, so every child starts warm

    argv = [str(a) for a in argv]
    limit = _address_space() + MEMORY_CAP
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        sys.stdout.flush(), sys.stderr.flush()
        start = time.monotonic()
        pid = os.fork()
        if pid == 0:  # the child: never returns into pytest
            code = 70
            try:
                os.dup2(out.fileno(), 1), os.dup2(err.fileno(), 2)
                # pytest's capture replaced sys.stdout/stderr: the child writes to the real descriptors, strict
                # UTF-8 as a terminal's are
                sys.stdout = open(1, "w", encoding="utf-8", closefd=False)
                sys.stderr = open(2, "w", encoding="utf-8", closefd=False)
                sys.stdin = open(os.devnull)
                resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
                # the same recursion headroom as `pgolf` started from a shell, not less by pytest's own frames
                sys.setrecursionlimit(sys.getrecursionlimit() + len(traceback.extract_stack()))
                signal.signal(signal.SIGALRM, signal.SIG_DFL)
                signal.alarm(TIME_CAP_S)
                os.chdir(cwd)
                code = main(argv)
            except SystemExit as exc:  # argparse's usage errors and --help
                code = exc.code if isinstance(exc.code, int) else 2
            except BaseException:
                traceback.print_exc()
                code = 70
            finally:
                try:
                    sys.stdout.flush(), sys.stderr.flush()
                finally:
                    os._exit(code if isinstance(code, int) else 70)
        _, status = os.waitpid(pid, 0)
        seconds = time.monotonic() - start
        out.seek(0), err.seek(0)
        text = (out.read(1 << 20).decode("utf-8", "replace"), err.read(1 << 20).decode("utf-8", "replace"))
    signalled = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
    return Outcome(argv, None if signalled else os.WEXITSTATUS(status), signalled, *text, seconds)


def tally(family: str, problems: list[str]) -> None:
    """One line per case into $PGOLF_FUZZ_TALLY (when set): the family and clean or its first problem."""
    path = os.environ.get("PGOLF_FUZZ_TALLY")
    if path:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"family": family, "problem": problems[0] if problems else None}) + "\n")


def check_case(family: str, argv: list[str], cwd: Path, json_outputs: tuple[Path, ...] = ()) -> Outcome:
    """Run the case, count it, and fail the test with the argv and the problem when the oracle breaks."""
    outcome = run_case(argv, cwd)
    problems = outcome.problems(json_outputs)
    tally(family, problems)
    assert not problems, f"pgolf {' '.join(outcome.argv)}: {'; '.join(problems)}\n{outcome.stderr[-3000:]}"
    return outcome


# --- hostile material -------------------------------------------------------------------------------

# numbers as they appear in text (JSON, logs, YAML): overflow, underflow, not-a-number, absurd precision
NUMBER_TEXTS = ("1e400", "-1e400", "1e-400", "NaN", "Infinity", "-Infinity", "nan", "inf", "9" * 400,
                "0." + "1" * 400, "-0", "-1", "0", "1" * 40, "-" + "9" * 40, "1.5e308", "4.9e-324", "0x10", "1_000")
# texts that break encoders and parsers: a lone surrogate (as a JSON escape), control characters, right-to-left
# marks, superscript digits that str.isdigit() accepts and int() refuses, a very long word
TEXTS = ("\\ud800", "\\udfff", "\u00b2", "\u0663", "abc", "", " ", "\u202e", "\x00", "\u2581", "a" * 5000,
         "../../etc/passwd", "seed_1", "{}", "[]", "null")


def deep_json(depth: int) -> str:
    """A JSON document nested `depth` levels (lists in objects), past any recursion limit."""
    return '{"a":' * depth + "1" + "}" * depth


def deep_expression(depth: int) -> str:
    """A Python expression nested `depth` levels: ((((...1...)))) and 1+1+...+1."""
    return f"x = {'(' * depth}1{')' * depth}\ny = {'+'.join(['1'] * depth)}\n"


def summary(tally_path: Path) -> str:
    """The per-family table of a tally: inputs, clean, problems."""
    rows: dict[str, list[int]] = {}
    for line in tally_path.read_text("utf-8").splitlines():
        case = json.loads(line)
        counts = rows.setdefault(case["family"], [0, 0])
        counts[0] += 1
        counts[1] += case["problem"] is None
    lines = ["| family | inputs | clean | problems |", "|---|---|---|---|"]
    lines += [f"| {family} | {n:,} | {clean:,} | {n - clean:,} |" for family, (n, clean) in sorted(rows.items())]
    total, clean = sum(n for n, _ in rows.values()), sum(c for _, c in rows.values())
    return "\n".join([*lines, f"| all | {total:,} | {clean:,} | {total - clean:,} |"])


if __name__ == "__main__":  # python tests/fuzzing.py TALLY: the table docs/fuzzing.md records
    print(summary(Path(sys.argv[1])))
