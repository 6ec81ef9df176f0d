"""What every back end's phase job shares: its result, the deadline, the output, Ctrl-C.

A back end (harness.run.native, harness.run.container) starts the job its own way and hands this
module a handle; `supervise` applies the one deadline rule (SIGTERM at the limit so ranks can
flush, SIGKILL after the grace), `Output` copies the job's lines to the phase log and the
terminal, and `InterruptGate` turns the harness's own Ctrl-C into the same stop.
"""
from __future__ import annotations

import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from harness.findings import Finding, UsageError


class PhaseStartError(UsageError):
    """The phase could not be started (usage error): bad command, missing folder."""


@dataclass(frozen=True)
class PhaseProcess:
    returncode: int  # negative: killed by that signal (as in subprocess)
    started: float  # time.monotonic() at spawn
    ended: float  # time.monotonic() at reap
    wall_s: float
    timed_out: bool  # the harness sent SIGTERM at the limit
    signal: str | None  # e.g. "SIGKILL" when a signal ended the job's main process
    sigterm_at: float | None  # monotonic time of the harness's SIGTERM, if one was sent
    isolation: dict[str, str]  # guarantee -> state, as harness.run.isolation names both
    survivors: list[int]  # pids of the job alive after cleanup; anything here is a harness failure
    hidden_reads: list[str]  # tripwires the job read or removed: files it was not allowed to see
    network_attempts: int | None  # packets the job tried to send off the host (None: not counted)
    scratch: dict[str, int] = field(default_factory=dict)  # bytes left in each fresh scratch folder (discarded)

    def backend_facts(self) -> dict[str, Any]:
        """What only this job's back end knows, for the phase record."""
        return {}

    def backend_findings(self, phase: str) -> list[Finding]:
        """Findings only this job's back end can make."""
        return []


class Supervised(Protocol):
    """A running job as `supervise` sees it."""
    started: float  # time.monotonic() at spawn

    def wait(self, timeout: float | None) -> bool: ...  # True once the job has exited
    def terminate(self) -> None: ...  # SIGTERM, at the limit
    def kill(self) -> object: ...  # SIGKILL, after the grace
    def tick(self) -> None: ...  # between waits: what the back end watches while the job runs


def supervise(job: Supervised, limit_s: float, grace_s: float, tick_s: float,
              enough: threading.Event | None = None) -> bool:
    """Wait for the job; at the limit SIGTERM it, after the grace SIGKILL it. True if it timed out. Once
    `enough` is set (a probe run that has sent every score the harness needs) it is stopped the same way,
    which is not a time-out."""
    kill_at, deadline = None, False
    while True:
        now = time.monotonic()
        if kill_at is None and (now >= job.started + limit_s or (enough is not None and enough.is_set())):
            deadline = now >= job.started + limit_s
            job.terminate()
            kill_at = now + grace_s
        elif kill_at is not None and now >= kill_at:
            job.kill()
            job.wait(None)
            return deadline
        wake = kill_at if kill_at is not None else job.started + limit_s
        if job.wait(min(tick_s, max(0.0, wake - now))):
            return deadline
        job.tick()


class Output:
    """The job's output as it comes: every line into the phase log at once (so a killed job's last
    words are kept) and, when echoing, to the terminal behind a prefix naming the phase (and rank)."""

    def __init__(self, log: BinaryIO, echo: bool):
        self.log, self.echo, self.lines = log, echo, 0

    def line(self, body: bytes, prefix: str) -> None:
        self.log.write(body)
        self.log.flush()
        self.lines += 1
        if self.echo:
            text = body.decode("utf-8", "replace")
            sys.stdout.write(prefix + text + ("" if text.endswith("\n") else "\n"))
            sys.stdout.flush()


def stat_fields(pid: int | str) -> list[str] | None:
    """/proc/<pid>/stat after the command name: state, ppid, ..., start time at index 19; None when gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2:].split()


def start_ticks(pid: int) -> str | None:
    """The process's start time in clock ticks since boot: with the pid, it names one process (pids are reused)."""
    fields = stat_fields(pid)
    return fields[19] if fields else None


class InterruptGate:
    """SIGINT and SIGTERM to the harness raise KeyboardInterrupt while the gate is open; while it
    is closed they are held and raised on opening or on leaving. Only the main thread gets signals,
    so elsewhere this does nothing."""

    def __init__(self):
        self.active = threading.current_thread() is threading.main_thread()
        self.is_open, self.pending = False, False

    def __enter__(self) -> InterruptGate:
        if self.active:
            self.old = {sig: signal.signal(sig, self._handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _handler(self, signum, frame) -> None:
        self.pending = True
        if self.is_open:
            self.open()

    def open(self) -> None:
        self.is_open = True
        if self.pending:
            self.pending = False
            raise KeyboardInterrupt

    def close(self) -> None:
        self.is_open = False

    def __exit__(self, *exc) -> None:
        if self.active:
            for sig, previous in self.old.items():
                signal.signal(sig, previous)
        if exc[0] is None:
            self.open()
