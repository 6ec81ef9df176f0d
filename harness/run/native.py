"""The native back end: one phase's process tree under a hard time limit, leaving nothing behind.

torchrun starts every worker in its own session, so killing torchrun or its process group orphans
the ranks (docs/container.md §4.4). Where the OS allows, the job therefore runs as the child of a
small init process (harness.run.nsinit) in a fresh PID namespace (`unshare --pid --fork
--kill-child`): killing that init takes every process of the job down, and the init hides the
data the phase may not see and counts network attempts. Elsewhere the job runs in its own session
and the harness tracks every descendant through /proc (isolation is then only "observed").

Deadline (harness.run.jobs.supervise): SIGTERM to every process of the job (ranks can flush),
`grace_s` later SIGKILL to all. Afterwards /proc is scanned for anything of the job still alive
(by tree, remembered pids and an environment marker); stragglers are killed and whatever still
lives is reported as a survivor.
"""
from __future__ import annotations

import functools
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

from harness.run.isolation import ENFORCED, NOT_ENFORCED, OBSERVED
from harness.run.jobs import InterruptGate, Output, PhaseProcess, PhaseStartError, stat_fields, supervise
from harness.run.nsinit import out_no_routes

NSINIT = Path(__file__).with_name("nsinit.py")  # run as a file: stdlib only, isolated mode
MARKER = "PGOLF_JOB"  # env var carrying a per-job token, so /proc scans find the job's processes
TICK_S = 0.25  # how often the process tree is re-scanned while the job runs
KILL_WAIT_S = 10.0  # how long SIGKILLed processes may take to disappear (GPU teardown is slow)


def run_phase(cmd: list[str], *, env: dict[str, str], cwd: Path, log_path: Path, limit_s: float,
              grace_s: float = 10.0, network: bool = True, prefix: str = "", echo: bool = True,
              isolate: bool = True, hide: dict[Path, list[str]] | None = None) -> PhaseProcess:
    """Run `cmd` to completion or to `limit_s` (+`grace_s`); a crash is data, never an exception.

    `isolate=False` skips the PID/network namespace (tests, debugging). `hide` maps folders the
    job must not read to the file names to plant as tripwires there. Ctrl-C or SIGTERM to the
    harness stops the job the same way as the deadline, then raises KeyboardInterrupt.
    """
    _check_command(cmd, env, Path(cwd))
    pid_ns = isolate and _unshare_works(net=False)
    net_ns = pid_ns and not network and _unshare_works(net=True)
    wanted = {str(folder): names for folder, names in (hide or {}).items()}
    hide = {folder: names for folder, names in wanted.items()
            if Path(folder).is_dir() and not Path(cwd).resolve().is_relative_to(Path(folder).resolve())}
    in_container, offline = _engine_isolation()
    counted_here = not network and not net_ns and offline  # the engine gave us no network: count here
    sent_before = (out_no_routes() or 0) if counted_here else 0
    with InterruptGate() as gate:  # no Ctrl-C between spawn and try, nor during the cleanup
        job = _Job(cmd, env, Path(cwd), Path(log_path), prefix if echo else None, pid_ns, net_ns,
                   hide if pid_ns else {})
        try:
            gate.open()
            timed_out = supervise(job, limit_s, grace_s, TICK_S)
        except BaseException:  # Ctrl-C / SIGTERM to the harness: stop the job like at the deadline
            job.stop(grace_s)
            raise
        finally:
            gate.close()
            survivors = job.close()
    rc, report = job.returncode, job.report
    if counted_here:
        report["net_attempts"] = (out_no_routes() or 0) - sent_before
    isolation = {"pid_namespace": ENFORCED if pid_ns or in_container else OBSERVED,
                 "network": NOT_ENFORCED if network else ENFORCED if net_ns or offline else OBSERVED}
    if wanted:  # enforced only when every folder asked for was hidden
        isolation["data_view"] = ENFORCED if hide == wanted and report.get("hidden") else OBSERVED
    elif in_container and os.path.ismount(env.get("DATA_PATH", "/")) and env.get("DATA_PATH") != "/":
        isolation["data_view"] = ENFORCED  # the engine mounted only this phase's view there
    return PhaseProcess(returncode=rc, started=job.started, ended=job.ended,
                        wall_s=job.ended - job.started, timed_out=timed_out,
                        signal=signal.Signals(-rc).name if rc < 0 else None,
                        sigterm_at=job.sigterm_at, isolation=isolation, survivors=survivors,
                        hidden_reads=report.get("tripped", []), network_attempts=report.get("net_attempts"))

def _check_command(cmd: list[str], env: dict[str, str], cwd: Path) -> None:
    if not cmd:
        raise PhaseStartError("empty command")
    if not cwd.is_dir():
        raise PhaseStartError(f"working directory not found: {cwd}")
    exe = cmd[0]
    found = (os.access(cwd / exe, os.X_OK) and (cwd / exe).is_file() if "/" in exe
             else shutil.which(exe, path=env.get("PATH", os.defpath)))
    if not found:
        raise PhaseStartError(f"command not found or not executable: {exe}")

@functools.cache
def _unshare_works(net: bool) -> bool:
    """Can this process create PID (and network) namespaces? Probed once per flag set."""
    if not shutil.which("unshare"):
        return False
    try:
        return subprocess.run(_unshare_argv(net) + ["true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False

def _unshare_argv(net: bool) -> list[str]:
    return ["unshare", "--pid", "--fork", "--kill-child", "--mount-proc"] + (["--net"] if net else [])

class _Job:
    """One running job: its main process, its output reader and everything it spawned."""

    def __init__(self, cmd: list[str], env: dict[str, str], cwd: Path, log_path: Path,
                 prefix: str | None, pid_ns: bool, net_ns: bool, hide: dict[str, list[str]]):
        self.token = uuid.uuid4().hex
        env = {**env, MARKER: self.token}
        self.link = None  # socket to the namespace init: lifeline out, exit status and report back
        self.report: dict = {}
        if pid_ns:
            self.link, init_end = socket.socketpair()
            argv = _unshare_argv(net_ns) + [sys.executable, "-I", "-S", str(NSINIT),
                                           "--init", str(init_end.fileno()), str(int(net_ns)), json.dumps(hide),
                                           "--", *cmd]
            fds = (init_end.fileno(),)
        else:
            argv, fds = cmd, ()
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log = open(log_path, "ab")
        try:
            self.proc = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                         start_new_session=True, pass_fds=fds)
        except OSError as exc:
            self.log.close()
            if self.link:
                self.link.close()
            raise PhaseStartError(f"cannot start {cmd[0]}: {exc.strerror}") from None
        finally:
            if pid_ns:
                init_end.close()
        self.started = time.monotonic()
        self.ended = self.sigterm_at = self.status = None
        self.wrapper = self.proc.pid if pid_ns else None  # unshare: SIGTERM would kill it at once
        self.known: dict[int, str] = {}  # pid -> start time, of every job process ever seen
        self.pidfd = os.pidfd_open(self.proc.pid)
        self.output = Output(self.log, prefix is not None)
        self.reader = threading.Thread(target=self._pump, args=(prefix or "",), daemon=True)
        self.reader.start()

    def _pump(self, prefix: str) -> None:
        for line in self.proc.stdout:
            self.output.line(line, prefix)

    def wait(self, timeout: float | None) -> bool:
        """Wait up to `timeout` s for the main process; True once it is reaped (time recorded)."""
        if self.ended is None:
            if not select.select([self.pidfd], [], [], timeout)[0]:
                return False
            self.proc.wait()
            self.ended = time.monotonic()
        return True

    def members(self, thorough: bool = False) -> dict[int, str]:
        """Live processes of the job: descendants of the main process, remembered pids and (when
        thorough) anything carrying the job's marker. Zombies are dead and not counted."""
        procs = _processes()
        found = {pid: start for pid, start in self.known.items() if procs.get(pid, (0, ""))[1] == start}
        children: dict[int, list[int]] = {}
        for pid, (ppid, _) in procs.items():
            children.setdefault(ppid, []).append(pid)
        stack = [self.proc.pid] if self.proc.pid in procs else []
        while stack:
            pid = stack.pop()
            found[pid] = procs[pid][1]
            stack += children.get(pid, [])
        if thorough:
            needle = f"{MARKER}={self.token}".encode()
            for pid in procs.keys() - found.keys():
                try:
                    if needle in Path(f"/proc/{pid}/environ").read_bytes():
                        found[pid] = procs[pid][1]
                except OSError:
                    pass
        return found

    def tick(self) -> None:
        """Remember every process seen in the tree, so one that is orphaned later is still found."""
        self.known.update(self.members())

    def terminate(self) -> None:
        """SIGTERM every process of the job but unshare (the init, as PID 1, ignores it)."""
        self.sigterm_at = self.sigterm_at or time.monotonic()
        for pid in self.members().keys() - {self.wrapper}:
            _kill(pid, signal.SIGTERM)

    def kill(self) -> list[int]:
        """SIGKILL the job until nothing of it is left (or KILL_WAIT_S passes); return survivors."""
        deadline = time.monotonic() + KILL_WAIT_S
        while True:
            if self.ended is None and self.proc.poll() is not None:
                self.ended = time.monotonic()
            alive = self.members(thorough=True)
            if not alive or time.monotonic() > deadline:
                return sorted(alive)
            for pid in alive:
                _kill(pid, signal.SIGKILL)
            time.sleep(0.02)

    def stop(self, grace_s: float) -> None:
        """SIGTERM, up to `grace_s` for the job to exit, then (in close) SIGKILL. A second Ctrl-C
        skips the grace."""
        try:
            self.terminate()
            self.wait(grace_s)
        except KeyboardInterrupt:
            pass

    def close(self) -> list[int]:
        """Kill whatever is left, reap, drain the output; return survivors."""
        survivors = self.kill()
        self.wait(None)
        self.reader.join(timeout=5)
        if not self.reader.is_alive():
            self.proc.stdout.close()
        os.close(self.pidfd)
        self.log.close()
        self.report = self._init_report()
        return survivors

    def _init_report(self) -> dict:
        """What the init sent before it exited: the job's wait status, tripwires, network attempts."""
        if self.link is None:
            return {}
        self.link.setblocking(False)
        data = b""
        try:
            while chunk := self.link.recv(65536):
                data += chunk
        except OSError:
            pass
        self.link.close()
        try:
            return json.loads(data) if data else {}
        except ValueError:
            return {}

    @property
    def returncode(self) -> int:
        """The job's own exit code; the init relays it exactly (signals included)."""
        if "status" in self.report:
            return os.waitstatus_to_exitcode(self.report["status"])
        return self.proc.returncode

def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (ppid, start time) of every live (non-zombie) process, from /proc."""
    out = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and (fields := stat_fields(entry.name)) and fields[0] not in "ZX":
            out[int(entry.name)] = (int(fields[1]), fields[19])
    return out

def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass

def _engine_isolation() -> tuple[bool, bool]:
    """(inside a container's own PID namespace, only loopback present): what a container engine
    already enforces when this harness runs a phase inside it and cannot make namespaces itself.
    In the host's PID namespace PID 2 is the kernel's kthreadd; in a container it is not."""
    try:
        in_container = Path("/proc/2/comm").read_text().strip() != "kthreadd"
    except OSError:
        in_container = True
    try:
        offline = sorted(os.listdir("/sys/class/net")) == ["lo"]
    except OSError:
        offline = False
    return in_container, offline
