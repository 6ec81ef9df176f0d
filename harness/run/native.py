"""The native back end: one phase's job in a bubblewrap sandbox under a hard time limit, leaving nothing behind.

Why bubblewrap (Debian's `bubblewrap`, the sandbox Flatpak uses) rather than more namespace code of
our own: it builds the whole private world in one audited setuid-free program — user, PID, network,
IPC and UTS namespaces, a root of its own that holds only read-only system folders, the job's code
and data view read-only, its writable folders and fresh scratch folders (/tmp, /var/tmp, /dev/shm,
HOME), no capabilities, no_new_privs and no further user namespaces — with GPUs passed through as
device binds. Nothing else of the host is there: no dataset folder, no run records, no host sockets.
docs/sandbox.md compares it with the unshare-based runner it replaced.

Inside, harness.run.nsinit is PID 1 and reports what the sandbox looks like from the inside, so the
verdict's isolation states are what the job saw, not what was asked for. Folders the job must not
read get tripwire folders at their paths, watched from the host. torchrun starts every worker in
its own session, so killing torchrun orphans the ranks (docs/container.md §4.4); killing the init
takes every process of the namespace down. Deadline (harness.run.jobs.supervise): SIGTERM to every
process of the job (ranks can flush), `grace_s` later SIGKILL to all; afterwards /proc is scanned
for anything of the job still alive (by tree, remembered pids and an environment marker).

Where bubblewrap is missing or cannot make namespaces (an unprivileged container), the job runs in
its own session on the host, tracked through /proc, and every guarantee it lacks is reported as
observed or not enforced (harness.run.isolation).
"""
from __future__ import annotations

import functools
import glob
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from harness.run.isolation import ENFORCED, NOT_ENFORCED, OBSERVED
from harness.run.jobs import InterruptGate, Output, PhaseProcess, PhaseStartError, stat_fields, supervise
from harness.run.nsinit import out_no_routes, plant_tripwire, tripwire_read

NSINIT = Path(__file__).with_name("nsinit.py")  # run as a file: stdlib only, isolated mode
INIT_INSIDE = "/.pgolf/nsinit.py"
MARKER = "PGOLF_JOB"  # env var carrying a per-job token, so /proc scans find the job's processes
TICK_S = 0.25  # how often the process tree is re-scanned while the job runs
KILL_WAIT_S = 10.0  # how long SIGKILLed processes may take to disappear (GPU teardown is slow)
JOB_UID = 65534  # the job's uid and gid inside its user namespace: nobody
SYSTEM = ("/usr", "/etc", "/opt/conda", "/usr/local")  # read-only system folders, where they exist
SCRATCH = {"tmp": "/tmp", "var_tmp": "/var/tmp", "dev_shm": "/dev/shm", "home": "/home/pgolf"}


@dataclass(frozen=True)
class Sandbox:
    """What the job may see besides the system and its fresh scratch folders; host paths, at the same path."""
    read_only: tuple[Path, ...] = ()  # e.g. the code, the data view, the event client
    writable: tuple[Path, ...] = ()  # e.g. the artifact folder in train
    hide: tuple[tuple[Path, tuple[str, ...]], ...] = ()  # folders to plant tripwires at, with the names
    absent: tuple[Path, ...] = ()  # paths the job must not see (the run records): checked from inside
    unwritable: tuple[tuple[str, Path], ...] = ()  # (guarantee, path) the init must find read-only
    network: bool = False
    hostname: str = "pgolf-phase"


def run_phase(cmd: list[str], *, env: dict[str, str], cwd: Path, log_path: Path, limit_s: float,
              grace_s: float = 10.0, prefix: str = "", echo: bool = True,
              sandbox: Sandbox | None = Sandbox(), enough: threading.Event | None = None) -> PhaseProcess:
    """Run `cmd` to completion or to `limit_s` (+`grace_s`); a crash is data, never an exception.

    `sandbox=None` runs the job on the host in its own session (tests, debugging). Ctrl-C or SIGTERM
    to the harness stops the job the same way as the deadline, then raises KeyboardInterrupt.
    """
    _check_command(cmd, env, Path(cwd))
    boxed = sandbox is not None and bwrap_works()
    in_container, offline = _engine_isolation()
    counted_here = not boxed and offline  # the engine gave us no network: count here
    sent_before = (out_no_routes() or 0) if counted_here else 0
    with tempfile.TemporaryDirectory(prefix="pgolf-sandbox-") as root, InterruptGate() as gate:
        # no Ctrl-C between spawn and try, nor during the cleanup
        job = _Job(cmd, env, Path(cwd), Path(log_path), prefix if echo else None,
                   sandbox if boxed else None, Path(root))
        try:
            gate.open()
            timed_out = supervise(job, limit_s, grace_s, TICK_S, enough)
        except BaseException:  # Ctrl-C / SIGTERM to the harness: stop the job like at the deadline
            job.stop(grace_s)
            raise
        finally:
            gate.close()
            survivors = job.close()
        tripped = [str(Path(place) / name) for place, (folder, names) in job.tripwires.items() for name in names
                   if tripwire_read(folder / name)]
        scratch = {inside: _size(Path(root) / name) for name, inside in SCRATCH.items() if (Path(root) / name).exists()}
    rc, report = job.returncode, job.report
    if counted_here:
        report["net_attempts"] = (out_no_routes() or 0) - sent_before
    if boxed:
        isolation = _sandbox_states(sandbox, report.get("inside"))
    else:
        isolation = {"pid_namespace": ENFORCED if in_container else OBSERVED,
                     "network": ENFORCED if offline else NOT_ENFORCED if sandbox is None or sandbox.network
                     else OBSERVED}
        if in_container and os.path.ismount(env.get("DATA_PATH", "/")) and env.get("DATA_PATH") != "/":
            isolation["data_view"] = ENFORCED  # the engine mounted only this phase's view there
        elif sandbox is not None and sandbox.hide:
            isolation["data_view"] = OBSERVED
    return PhaseProcess(returncode=rc, started=job.started, ended=job.ended,
                        wall_s=job.ended - job.started, timed_out=timed_out,
                        signal=signal.Signals(-rc).name if rc < 0 else None,
                        sigterm_at=job.sigterm_at, isolation=isolation, survivors=survivors,
                        hidden_reads=tripped, network_attempts=report.get("net_attempts"), scratch=scratch)


def _sandbox_states(sandbox: Sandbox, inside: dict | None) -> dict[str, str]:
    """Each guarantee as the init saw the sandbox from inside; nothing reported means nothing verified."""
    if inside is None:  # the job never started inside (or the init was killed before it reported)
        return {"pid_namespace": ENFORCED, "network": OBSERVED if not sandbox.network else NOT_ENFORCED}
    def state(ok: bool) -> str:
        return ENFORCED if ok else NOT_ENFORCED

    writable = set(inside["writable"])
    out = {"pid_namespace": ENFORCED,
           "network": NOT_ENFORCED if sandbox.network else ENFORCED,
           "non_root_user": state(inside["uid"] != 0),
           "all_capabilities_dropped": state(inside["cap_eff"] == 0 and inside["cap_prm"] == 0),
           "no_new_privileges": state(inside["no_new_privs"]),
           "pid_limit": NOT_ENFORCED,
           "records_private": state(not inside["exists"]),
           "root_filesystem_read_only": state("/" not in writable)}
    if sandbox.hide:
        out["data_view"] = ENFORCED
    for guarantee, path in sandbox.unwritable:
        out[guarantee] = state(str(path) not in writable)
    return out


def _size(folder: Path) -> int:
    """Bytes a job left in a scratch folder (it is discarded with the sandbox)."""
    total = 0
    for base, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(base, name)).st_size
            except OSError:
                pass
    return total


@functools.cache
def bwrap_works() -> bool:
    """Can bubblewrap make this harness's sandboxes here? Probed once, with the namespaces a job gets."""
    if not shutil.which("bwrap"):
        return False
    argv = ["bwrap", "--unshare-user", "--uid", str(JOB_UID), "--gid", str(JOB_UID), "--unshare-pid",
            "--unshare-net", "--unshare-ipc", "--disable-userns", "--cap-drop", "ALL",
            *_system_binds(), "--proc", "/proc", "--dev", "/dev", "--", "/bin/true"]
    try:
        return subprocess.run(argv, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _system_binds(env: dict[str, str] | None = None) -> list[str]:
    """The host's system folders, read-only: /usr and its merged-/usr links, /etc, Python's own prefixes, and
    the installation of each C/C++ compiler the job's environment names (torch.compile and Triton build with
    one; a toolchain outside /usr, such as /opt/gcc, needs its lib/ and libexec/ as well as bin/)."""
    out: list[str] = []
    for link in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(link):
            out += ["--symlink", os.readlink(link), link]
        elif os.path.isdir(link):
            out += ["--ro-bind", link, link]
    prefixes = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, os.path.dirname(os.path.dirname(
        os.path.realpath(sys.executable))))} | _toolchain_folders(env or {})
    for path in sorted({*SYSTEM, *prefixes, "/sys"}):
        if os.path.isdir(path) and not any(path.startswith(p + "/") for p in SYSTEM if p != path and os.path.isdir(p)):
            out += ["--ro-bind", path, path]
    return out


def _toolchain_folders(env: dict[str, str]) -> set[str]:
    """The installation of each compiler in CC and CXX, or of gcc/g++/cc/c++ on the job's PATH: the folders a
    GNU toolchain keeps beside its bin/ (lib, libexec, include, <triple>), never the folder that holds them,
    which may be someone's home."""
    path = env.get("PATH", os.defpath)
    out = set()
    named = [words[0] for words in (env.get("CC", "").split(), env.get("CXX", "").split()) if words]  # "gcc -m64"
    for exe in named + ["gcc", "g++", "cc", "c++"]:
        found = exe if "/" in exe else shutil.which(exe, path=path)
        if found and os.path.isfile(found):
            prefix = Path(os.path.realpath(found)).parent.parent
            out |= {str(d) for d in prefix.glob("*") if d.is_dir() and
                    (d.name in ("bin", "lib", "lib64", "libexec", "include") or d.name.endswith("-linux-gnu"))}
    return out


def _bwrap_argv(sandbox: Sandbox, cwd: Path, root: Path, link_fd: int, hosts_fd: int, cmd: list[str],
                tripwires: dict[str, tuple[Path, tuple[str, ...]]], env: dict[str, str]) -> list[str]:
    argv = ["bwrap", "--die-with-parent", "--new-session", "--as-pid-1", "--unshare-user", "--uid", str(JOB_UID),
            "--gid", str(JOB_UID), "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
            "--hostname", sandbox.hostname, "--disable-userns", "--cap-drop", "ALL",
            *([] if sandbox.network else ["--unshare-net"]), "--proc", "/proc", "--dev", "/dev"]
    for device in sorted(glob.glob("/dev/nvidia*")):  # the GPUs, their control and UVM devices
        argv += ["--dev-bind", device, device]
    for name, inside in SCRATCH.items():
        (root / name).mkdir(mode=0o777)
        (root / name).chmod(0o1777)
        argv += ["--bind", str(root / name), inside]
    argv += _system_binds(env)  # after the scratch folders: a venv or checkout under /tmp stays visible
    argv += ["--ro-bind-data", str(hosts_fd), "/etc/hosts", "--ro-bind", str(NSINIT), INIT_INSIDE]
    for path in [*sandbox.read_only, cwd]:
        argv += ["--ro-bind", str(path), str(path)]
    for path in sandbox.writable:
        argv += ["--bind", str(path), str(path)]
    for place, (folder, _) in tripwires.items():  # rw: a read must be able to move the access time
        argv += ["--bind", str(folder), place]
    checks = {"absent": [str(p) for p in sandbox.absent],
              "read_only": ["/", *(str(p) for _, p in sandbox.unwritable)]}
    return argv + ["--remount-ro", "/", "--chdir", str(cwd), "--", sys.executable, "-I", "-S", INIT_INSIDE,
                   "--init", str(link_fd), json.dumps(checks), "--", *cmd]


def _plant(root: Path, sandbox: Sandbox) -> dict[str, tuple[Path, tuple[str, ...]]]:
    """A tripwire folder for each hidden folder, to be bound at its path: place -> (host folder, names)."""
    out = {}
    for i, (place, names) in enumerate(sandbox.hide):
        folder = root / f"tripwires{i}"
        folder.mkdir()
        for name in names:
            plant_tripwire(folder / name)
        out[str(place)] = (folder, names)
    return out


def _hosts(hostname: str) -> bytes:
    """/etc/hosts for the sandbox: the loopback names and the sandbox's own hostname, as container
    engines give; torchrun's lookups of its own sockets then never reach for a DNS server, so every
    packet counted as unroutable was the job's own attempt to leave (c10d sees peers as IPv4-mapped)."""
    return (f"127.0.0.1 localhost {hostname}\n::1 localhost ip6-localhost ip6-loopback {hostname}\n"
            f"::ffff:127.0.0.1 {hostname}\n").encode()


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


class _Job:
    """One running job: its main process, its output reader and everything it spawned."""

    def __init__(self, cmd: list[str], env: dict[str, str], cwd: Path, log_path: Path,
                 prefix: str | None, sandbox: Sandbox | None, root: Path):
        self.token = uuid.uuid4().hex
        env = {**env, MARKER: self.token}
        self.link = None  # socket to the sandbox's init: lifeline out, exit status and report back
        self.report: dict = {}
        self.tripwires: dict[str, tuple[Path, tuple[str, ...]]] = {}
        fds: tuple[int, ...] = ()
        if sandbox is not None:
            self.tripwires = _plant(root, sandbox)
            self.link, init_end = socket.socketpair()
            hosts_read, hosts_write = os.pipe()
            os.write(hosts_write, _hosts(sandbox.hostname))
            os.close(hosts_write)
            argv = _bwrap_argv(sandbox, cwd, root, init_end.fileno(), hosts_read, cmd, self.tripwires, env)
            env = {**env, "HOME": SCRATCH["home"], "TMPDIR": SCRATCH["tmp"]}
            fds = (init_end.fileno(), hosts_read)
        else:
            argv = cmd
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
            raise PhaseStartError(f"cannot start {argv[0]}: {exc.strerror}") from None
        finally:
            if sandbox is not None:
                init_end.close()
                os.close(hosts_read)
        self.started = time.monotonic()
        self.ended = self.sigterm_at = self.status = None
        self.wrapper = self.proc.pid if sandbox is not None else None  # bwrap: SIGTERM would kill it at once
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
