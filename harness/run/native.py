"""Run one phase's process tree under a hard time limit, stream its output, and leave nothing behind.

torchrun starts every worker in its own session, so killing torchrun or its process group orphans
the ranks (docs/container.md §4.4). Where the OS allows, the job therefore runs as the child of a
small init process in a fresh PID namespace (`unshare --pid --fork --kill-child`): killing that init
takes every process of the job down. Elsewhere the job runs in its own session and the harness
tracks every descendant through /proc (isolation is then only "observed").

Inside the namespace the init also enforces the phase's data view: each folder the job must not
read (the full dataset, the other phase's view) gets an empty tmpfs mounted over it, holding only
"tripwire" files named like the hidden shards; a tripwire read shows as its access time moving,
so the harness learns which hidden file the job tried to read. Network attempts from a namespace
without network are counted from its own IP statistics (OutNoRoutes), which a script that catches
the error cannot hide.

Deadline: SIGTERM to every process of the job (ranks can flush), `grace_s` later SIGKILL to all.
Afterwards /proc is scanned for anything of the job still alive (by tree, remembered pids and an
environment marker); stragglers are killed and whatever still lives is reported as a survivor.

This file is also the namespace's init: `python native.py --init FD NET HIDE -- CMD...` (stdlib only).
"""
from __future__ import annotations

import ctypes
import fcntl
import functools
import json
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

MARKER = "PGOLF_JOB"  # env var carrying a per-job token, so /proc scans find the job's processes
TICK_S = 0.25  # how often the process tree is re-scanned while the job runs
KILL_WAIT_S = 10.0  # how long SIGKILLed processes may take to disappear (GPU teardown is slow)
# what a tripwire holds: a valid challenge shard header announcing zero tokens
TRIPWIRE = (20240520).to_bytes(4, "little") + (1).to_bytes(4, "little") + bytes(1016)


class PhaseStartError(RuntimeError):
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
    isolation: dict[str, str]  # pid_namespace: enforced|observed; network: disabled|observed|enabled;
    #                            data_view (when folders were hidden): enforced|observed
    survivors: list[int]  # pids of the job alive after cleanup; anything here is a harness failure
    hidden_reads: list[str]  # tripwires the job read or removed: files it was not allowed to see
    network_attempts: int | None  # packets the job tried to send off the host (None: not counted)


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
            timed_out = _supervise(job, limit_s, grace_s)
        except BaseException:  # Ctrl-C / SIGTERM to the harness: stop the job like at the deadline
            job.stop(grace_s)
            raise
        finally:
            gate.close()
            survivors = job.close()
    rc, report = job.returncode, job.report
    if counted_here:
        report["net_attempts"] = (out_no_routes() or 0) - sent_before
    isolation = {"pid_namespace": "enforced" if pid_ns or in_container else "observed",
                 "network": "enabled" if network else "disabled" if net_ns or offline else "observed"}
    if wanted:  # enforced only when every folder asked for was hidden
        isolation["data_view"] = "enforced" if hide == wanted and report.get("hidden") else "observed"
    elif in_container and os.path.ismount(env.get("DATA_PATH", "/")) and env.get("DATA_PATH") != "/":
        isolation["data_view"] = "enforced"  # the engine mounted only this phase's view there
    return PhaseProcess(returncode=rc, started=job.started, ended=job.ended,
                        wall_s=job.ended - job.started, timed_out=timed_out,
                        signal=signal.Signals(-rc).name if rc < 0 else None,
                        sigterm_at=job.sigterm_at, isolation=isolation, survivors=survivors,
                        hidden_reads=report.get("tripped", []), network_attempts=report.get("net_attempts"))


def _supervise(job: _Job, limit_s: float, grace_s: float) -> bool:
    """Wait for the job; at the limit SIGTERM it, after the grace SIGKILL it. True if it timed out."""
    kill_at = None
    while True:
        now = time.monotonic()
        if kill_at is None and now >= job.started + limit_s:
            job.terminate()
            kill_at = now + grace_s
        elif kill_at is not None and now >= kill_at:
            job.kill()
            job.wait(None)
            return True
        wake = kill_at if kill_at is not None else job.started + limit_s
        if job.wait(min(TICK_S, max(0.0, wake - now))):
            return kill_at is not None
        job.track()


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
            argv = _unshare_argv(net_ns) + [sys.executable, "-I", "-S", os.path.abspath(__file__),
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
        self.reader = threading.Thread(target=self._pump, args=(prefix,), daemon=True)
        self.reader.start()

    def _pump(self, prefix: str | None) -> None:
        """Copy the job's output to the log (as it comes) and, with a prefix, to the terminal."""
        for line in self.proc.stdout:
            self.log.write(line)
            self.log.flush()
            if prefix is not None:
                text = line.decode("utf-8", "replace")
                sys.stdout.write(prefix + text + ("" if text.endswith("\n") else "\n"))
                sys.stdout.flush()

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

    def track(self) -> None:
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


def _stat_fields(pid: int | str) -> list[str] | None:
    """/proc/<pid>/stat after the command name: state, ppid, ..., start time at index 19; None when gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2:].split()


def start_ticks(pid: int) -> str | None:
    """The process's start time in clock ticks since boot: with the pid, it names one process (pids are reused)."""
    fields = _stat_fields(pid)
    return fields[19] if fields else None


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (ppid, start time) of every live (non-zombie) process, from /proc."""
    out = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and (fields := _stat_fields(entry.name)) and fields[0] not in "ZX":
            out[int(entry.name)] = (int(fields[1]), fields[19])
    return out


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


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


def _bring_loopback_up() -> None:
    """A new network namespace has only `lo`, and it is down: gloo/NCCL need it on localhost."""
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        flags = struct.unpack("16sh", fcntl.ioctl(sock, siocgifflags, struct.pack("16sh", b"lo", 0)))[1]
        fcntl.ioctl(sock, siocsifflags, struct.pack("16sh", b"lo", flags | iff_up))


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


def out_no_routes(pid: int | str = "self") -> int | None:
    """IPv4 + IPv6 packets the process's network namespace could not route: attempts to leave a
    namespace without network. None where /proc does not show them (the process is gone)."""
    try:
        head, values = Path(f"/proc/{pid}/net/snmp").read_text().splitlines()[:2]
        total = int(dict(zip(head.split(), values.split()))["OutNoRoutes"])
        for line in Path(f"/proc/{pid}/net/snmp6").read_text().splitlines():
            if line.startswith("Ip6OutNoRoutes"):
                total += int(line.split()[1])
        return total
    except (OSError, KeyError, ValueError):
        return None


def _resolve_loopback_locally() -> None:
    """Give the namespace an /etc/hosts that names the loopback addresses and this host, as container
    engines do: torchrun's reverse lookups of its own sockets then never reach for a DNS server, so
    every packet counted as unroutable was the job's own attempt to leave the host."""
    try:
        text = open("/etc/hosts").read()
    except OSError:
        text = ""
    host = socket.gethostname()
    text += (f"\n127.0.0.1 localhost {host}\n::1 localhost ip6-localhost ip6-loopback {host}\n"
             f"::ffff:127.0.0.1 {host}\n")  # c10d's dual-stack store sees its peers as IPv4-mapped
    staged = f"/dev/shm/pgolf-hosts-{os.getpid()}"
    try:
        with open(staged, "w") as f:
            f.write(text)
        ctypes.CDLL(None, use_errno=True).mount(staged.encode(), b"/etc/hosts", None, 0x1000, None)  # MS_BIND
    except OSError:
        pass
    finally:
        try:
            os.unlink(staged)
        except OSError:
            pass


def plant_tripwire(path: str | Path) -> None:
    """A file named like a hidden shard, dated 1970, so that any read moves its access time."""
    with open(path, "wb") as f:
        f.write(TRIPWIRE)
    os.utime(path, (0, 0))


def tripwire_read(path: str | Path) -> bool:
    """The job read this tripwire (its access time moved) or removed it."""
    try:
        return os.stat(path).st_atime > 0
    except OSError:
        return True


def _hide(folders: dict[str, list[str]]) -> bool:
    """Mount an empty tmpfs over each folder (this mount namespace only) and plant its tripwires."""
    libc = ctypes.CDLL(None, use_errno=True)
    flags = 0x2 | 0x4 | 0x8  # MS_NOSUID | MS_NODEV | MS_NOEXEC
    for folder, names in folders.items():
        if libc.mount(b"pgolf-hidden", folder.encode(), b"tmpfs", flags, b"size=4m,mode=0555") != 0:
            return False
        for name in names:
            plant_tripwire(os.path.join(folder, name))
    return True


def _tripped(folders: dict[str, list[str]]) -> list[str]:
    return [path for folder, names in folders.items() for name in names
            if tripwire_read(path := os.path.join(folder, name))]


def _init(link_fd: int, net: bool, hide: dict[str, list[str]], cmd: list[str]) -> None:
    """PID 1 of the job's namespace: hide the folders the job must not read, start the job, reap
    every orphan, then report the job's exact wait status, the tripwires it touched and its network
    attempts to the harness, and die with it when the harness dies (its end of the link closes).
    When this process exits the kernel kills everything left in the namespace."""
    os.set_inheritable(link_fd, False)
    link = socket.socket(fileno=link_fd)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a job's killpg(0, SIGINT) must not end the init
    if net:
        _bring_loopback_up()
        _resolve_loopback_locally()
    hidden = _hide(hide) if hide else False
    sent_before = (out_no_routes() or 0) if net else 0
    try:
        child = os.posix_spawnp(cmd[0], cmd, os.environ,
                                setsigdef=(signal.SIGINT, signal.SIGPIPE, signal.SIGXFSZ))
    except OSError as exc:
        print(f"pgolf init: cannot start {cmd[0]}: {exc.strerror}", file=sys.stderr, flush=True)
        os._exit(127)
    threading.Thread(target=lambda: (link.recv(1), os._exit(137)), daemon=True).start()
    while True:
        pid, status = os.wait()
        if pid == child:
            break
    report = {"status": status, "hidden": hidden, "tripped": _tripped(hide) if hidden else [],
              "net_attempts": (out_no_routes() or 0) - sent_before if net else None}
    link.sendall(json.dumps(report).encode())
    code = os.waitstatus_to_exitcode(status)
    os._exit(code if code >= 0 else 128 - code)


if __name__ == "__main__" and sys.argv[1:2] == ["--init"]:
    _init(int(sys.argv[2]), sys.argv[3] == "1", json.loads(sys.argv[4]), sys.argv[6:])
