"""The container back end of `pgolf run --container`: each phase of each seed as its own container,
started, watched, timed, stopped and removed through the Docker Engine API (the `docker` SDK 7.x).

Why a container: the engine enforces what the native runner can only partly do. The job gets no
network (`network_mode="none"`, so the inspected configuration says `none`), sees only its phase's
data view (bind mounts: nothing else of the dataset exists in its filesystem), gets the artifact
read-only in eval on a read-only root, runs as a non-root user without capabilities or new
privileges, under a PID limit, and lives in a PID namespace whose teardown takes every torchrun
worker with it (killing torchrun alone orphans them: shared docs/container.md §4.4).

The job speaks the same protocol as natively: the harness's event server listens on a Unix socket
in a host folder that is bind-mounted at /events, and stamps marks with its own clock. The
container is timed twice: by the harness's monotonic clock (start call to the engine reporting
the exit) and by the engine's own State.StartedAt/FinishedAt; the verdict shows both. At the hard
limit the harness sends SIGTERM (the container's init forwards it to torchrun, whose ranks can
flush), after the grace it kills the container. What the verdict says about isolation is read back
from the engine (the inspected container), not from what was asked for.

Reads of data a phase may not see are caught as natively: folders the job must not read (the
dataset, the other phase's view, the sibling view beside its own DATA_PATH) exist in the container
only as "tripwire" folders, bind-mounted from the host, holding files named like the hidden shards
whose access time moves when read. Network attempts are counted from the container's own IP
statistics (OutNoRoutes), read from the host while it runs.

Every container carries labels naming the run, seed and phase and the harness process that owns
it, so containers of a harness that was killed are found and removed by the next
`pgolf run --container` or by `pgolf clean`; a backstop `timeout` inside the container also ends a
phase whose harness died. Artifacts are host folders, never engine volumes: a seed counts as done
only through the phase records and verdict the harness writes atomically, so nothing a killed run
left behind looks finished.
"""
from __future__ import annotations

import os
import re
import signal
import socket
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

from harness.client import CLIENT_DIR
from harness.findings import FAIL, INFO, Evidence, Finding, UsageError
from harness.run.backend import PhaseJob, job_environment, torchrun
from harness.run.isolation import ENFORCED, NOT_ENFORCED
from harness.run.jobs import InterruptGate, Output, PhaseProcess, start_ticks, supervise
from harness.run.nsinit import out_no_routes, plant_tripwire, tripwire_read

# where the job finds its folders inside the container
CODE, DATA, ARTIFACT, EVENTS, CLIENT, SCRATCH = "/code", "/data", "/artifact", "/events", "/pgolf/client", "/tmp"
DEFAULT_IMAGE = "pgolf:cpu"  # tools/build-image cpu: the demo image, like run's other defaults
LABEL = "org.pgolf"  # label prefix; a container is pgolf's when it carries LABEL.run
NOBODY = "65534:65534"  # the job's user when the harness runs as root
PIDS_LIMIT = 16384  # 8 ranks with compile workers and their threads stay far below; a fork bomb does not
SHM_SIZE = "16g"  # NCCL's shared-memory transport between ranks (Docker's default is 64 MB)
ULIMITS = [{"name": "memlock", "soft": -1, "hard": -1},  # what NCCL's container guidance asks for
           {"name": "stack", "soft": 67108864, "hard": 67108864}]
TICK_S = 0.25  # how often the harness looks at the clock and the container's network counters
BACKSTOP_S = 60  # the in-container `timeout` ends the phase this long after limit + grace
# how a refused write reads in a log: the read-only mount itself (EROFS), or a permission error on a
# path of one (Python's "[Errno 13] Permission denied: '/artifact/model.pt'"; the files are read-only too)
_READ_ONLY_FS = re.compile(rb"Read-only file system")
_DENIED = re.compile(rb"Permission denied: '(/[^']*)'")
_TEE = re.compile(rb"^\[default(\d+)\]:")  # torchrun --tee's per-rank prefix
# host variables that describe the host, not the submission: never passed into the container
HOST_ONLY = frozenset({"PATH", "HOME", "PWD", "OLDPWD", "SHELL", "SHLVL", "USER", "LOGNAME", "HOSTNAME", "TERM",
                       "LANG", "LANGUAGE", "MAIL", "DISPLAY", "TMPDIR", "_", "PYTHONPATH", "PYTHONHOME",
                       "PYTHONSTARTUP", "PYTHONUSERBASE", "VIRTUAL_ENV", "LD_LIBRARY_PATH", "LD_PRELOAD",
                       "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "MASTER_ADDR", "MASTER_PORT",
                       "WORLD_SIZE", "RANK", "LOCAL_RANK"})
HOST_ONLY_PREFIXES = ("PGOLF_", "DOCKER_", "SSH_", "XDG_", "LC_", "CONDA_", "PIP_", "PYTEST_")


@dataclass(frozen=True)
class ContainerJob:
    """One phase's job as the engine runs it: host folders, and the job's view of them."""
    image: str
    phase: str  # train | eval | legacy: names the container and sets what it may write
    command: list[str]  # run from CODE
    env: dict[str, str]  # the job's environment, with the in-container paths
    code: Path  # host folders: mounted at CODE, data_dir(data), ARTIFACT, EVENTS
    data: Path
    artifact: Path
    events: Path | None  # the folder holding the event server's socket; None: no event channel
    log_path: Path
    limit_s: float
    grace_s: float
    labels: dict[str, str]  # run and seed (phase and owner are added)
    gpus: int | None = None  # None: every GPU on a GPU image, none on the CPU image
    memory: str | None = None  # the engine's memory limit, e.g. "8g"; None: none
    echo: bool = True
    hide: tuple[tuple[Path, tuple[str, ...]], ...] = ()  # folders the job must not read, with file names
    enough: threading.Event | None = None  # set once the harness has every score it needs: stop the job


@dataclass(frozen=True)
class ContainerProcess(PhaseProcess):
    """A phase that ran in a container: the native facts plus the engine's evidence."""
    engine: dict[str, Any] = field(default_factory=dict)

    def backend_facts(self) -> dict[str, Any]:
        return {"container": self.engine}  # the engine's clocks, image and inspected configuration

    def backend_findings(self, phase: str) -> list[Finding]:
        return engine_findings(phase, self)


@dataclass(frozen=True)
class Container:
    """The back end of `--container`: every phase's job as its own container of `image`."""
    image: str = DEFAULT_IMAGE
    gpus: int | None = None  # GPUs per container: None all (none on the CPU image)
    memory: str | None = None  # the container's memory limit, e.g. "8g"

    def prepare(self, echo: bool) -> Container:
        """The engine answers and the image exists; every phase of the seed then runs this very image (its ID)."""
        return replace(self, image=prepare(self.image, self.gpus, echo))

    def run_job(self, job: PhaseJob) -> ContainerProcess:
        """The job told the paths it sees in the container; torchrun's --tee labels each line with its rank."""
        inside = PurePosixPath(EVENTS) / job.events.name if job.events else None
        env = job_environment(job, PurePosixPath(data_dir(job.data)), PurePosixPath(ARTIFACT), inside,
                              PurePosixPath(CLIENT), passed_environment(dict(os.environ)))
        return run_job(ContainerJob(
            self.image, job.phase, torchrun(job.nproc, "python3", "--tee", "3"), env, job.code, job.data,
            job.artifact, job.events.parent if job.events else None, job.log, job.limit_s, job.grace_s,
            {"run": job.run, "seed": str(job.seed)}, self.gpus, self.memory, job.echo, job.hide, job.enough))

    def settings(self) -> dict[str, Any]:
        return {"image": self.image, "gpus": self.gpus, "memory": self.memory}


def data_dir(view: Path) -> str:
    """Where a data view appears inside the container: /data/<view folder name>."""
    return f"{DATA}/{view.name}"


def passed_environment(environ: dict[str, str]) -> dict[str, str]:
    """The host's variables a job may see (a submission's hyperparameters travel this way)."""
    return {k: v for k, v in environ.items() if k not in HOST_ONLY and not k.startswith(HOST_ONLY_PREFIXES)}


def connect():
    """A client of the local engine (DOCKER_HOST or the default socket), or a UsageError that says
    how to get one."""
    import docker

    try:
        return docker.from_env(version="auto")
    except docker.errors.DockerException as exc:
        chain, cause = [], exc
        while cause is not None:  # the socket's own error sits at the bottom of the SDK's wrappers
            chain.append(cause)
            cause = cause.__cause__ or cause.__context__
        where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        if any(isinstance(c, PermissionError) for c in chain):
            raise UsageError(f"the Docker engine at {where} refused this user: add it to the docker group "
                             "(sudo usermod -aG docker $USER, then log in again) or run as root") from None
        if any(isinstance(c, (FileNotFoundError, ConnectionRefusedError)) for c in chain):
            raise UsageError(f"the Docker engine is not running (nothing answers at {where}): start it "
                             "(sudo systemctl start docker), or install and start it with tools/setup-host "
                             "(as root)") from None
        raise UsageError(f"cannot reach the Docker engine at {where}: {exc}") from None


def _image(client, tag: str):
    import docker

    try:
        return client.images.get(tag)
    except docker.errors.ImageNotFound:
        hint = ("tools/build-image cpu" if tag.endswith(":cpu") else
                "tools/build-image cuda --fa3-wheel FILE --fa3-sha256 HEX (or --no-fa3)")
        raise UsageError(f"image {tag} not found in the Docker engine: build it with {hint}") from None


def _gpus(asked: int | None, image) -> int:
    """The GPU count to request: -1 for all. The CPU image gets none."""
    cpu = (image.labels or {}).get(f"{LABEL}.variant") == "cpu"
    if cpu and asked:
        raise UsageError(f"--gpus {asked}: image {image.tags[0] if image.tags else image.id} is pgolf's CPU "
                         f"variant ({LABEL}.variant=cpu); use the cuda image for GPUs")
    if asked is None:
        return 0 if cpu else -1
    return asked


def prepare(image: str, gpus: int | None, echo: bool = True) -> str:
    """Before a seed: the engine answers, the image exists, the GPU request fits it, and containers
    that a killed harness left behind are removed. Returns the image's ID, so that every phase of
    the seed runs the same image even if the tag is rebuilt meanwhile."""
    client = connect()
    try:
        found = _image(client, image)
        _gpus(gpus, found)
        removed, _ = clean(client)
    finally:
        client.close()
    if removed and echo:
        print(f"pgolf: removed {len(removed)} container(s) left by a pgolf run that was killed: "
              f"{', '.join(removed)}", file=sys.stderr)
    return found.id


def _owner() -> str:
    """This harness process, as a label: host, pid and start time (a reused pid is another process)."""
    return f"{socket.gethostname()}/{os.getpid()}/{start_ticks(os.getpid())}"


def _owner_alive(owner: str) -> bool:
    host, _, rest = owner.partition("/")
    pid, _, ticks = rest.partition("/")
    if host != socket.gethostname():
        return True  # another machine's harness on a shared engine: not ours to judge
    return pid.isdigit() and start_ticks(int(pid)) == ticks


def containers(client, filters: dict[str, str]) -> list:
    """The containers the engine lists for `filters`, each inspected; one removed between the listing and its
    inspection (by another pgolf run, its `clean`, or the engine) is left out instead of raising NotFound."""
    import docker

    found = []
    for summary in client.api.containers(all=True, filters=filters):
        try:
            found.append(client.containers.get(summary["Id"]))
        except docker.errors.NotFound:
            pass
    return found


def clean(client=None) -> tuple[list[str], list[str]]:
    """Remove every pgolf container whose harness is gone; return (removed, still in use) names."""
    client = client or connect()
    removed, in_use = [], []
    import docker

    for container in containers(client, {"label": f"{LABEL}.run"}):
        if _owner_alive(container.labels.get(f"{LABEL}.owner", "")):
            in_use.append(container.name)
            continue
        try:
            container.remove(force=True, v=True)
        except docker.errors.NotFound:  # gone meanwhile
            continue
        except docker.errors.APIError as exc:
            raise UsageError(f"cannot remove container {container.name}: {exc.explanation}") from None
        removed.append(container.name)
    return removed, in_use


def _user() -> str:
    """The job's user: the harness's own, or nobody when the harness is root."""
    return NOBODY if os.geteuid() == 0 else f"{os.getuid()}:{os.getgid()}"


def _hand_over(job: ContainerJob, user: str) -> None:
    """When the harness is root, give the job's user the folders it must write or connect in."""
    if os.geteuid() != 0:
        return
    uid, gid = (int(x) for x in user.split(":"))
    writable = [job.artifact] + ([job.events, *job.events.iterdir()] if job.events else [])
    if job.phase == "legacy":  # such scripts write logs and models into their working directory
        writable += [job.code, *job.code.rglob("*")]
    for path in writable:
        os.chown(path, uid, gid)


def _plant_tripwires(root: Path, job: ContainerJob, taken: set[str]) -> dict[str, tuple[Path, tuple[str, ...]]]:
    """Tripwire folders for every place a hidden folder could be looked for: its host path, and
    beside DATA_PATH when it is a sibling view. Returns in-container path -> (host folder, names)."""
    places: dict[str, tuple[str, ...]] = {}
    for folder, names in job.hide:
        for place in {str(folder), *([data_dir(folder)] if folder.parent == job.data.parent else [])}:
            if not any(place == t or t.startswith(place.rstrip("/") + "/") for t in taken):
                places[place] = names
    out = {}
    for i, (place, names) in enumerate(sorted(places.items())):
        folder = root / str(i)
        folder.mkdir()
        for name in names:
            plant_tripwire(folder / name)
            (folder / name).chmod(0o444)
        folder.chmod(0o555)
        out[place] = (folder, names)
    return out


def _tripped(tripwires: dict[str, tuple[Path, tuple[str, ...]]]) -> list[str]:
    """In-container paths of the tripwires the job read or removed."""
    return [f"{place}/{name}" for place, (folder, names) in tripwires.items() for name in names
            if tripwire_read(folder / name)]


def _bind(source: Path, target: str, writable: bool) -> dict[str, Any]:
    return {"Type": "bind", "Source": str(source), "Target": target, "ReadOnly": not writable}


def container_config(job: ContainerJob, *, gpus: int, user: str, name: str,
                     tripwires: dict[str, tuple[Path, tuple[str, ...]]] | None = None) -> dict[str, Any]:
    """The arguments of `containers.create` for `job`: everything the engine is asked to enforce."""
    host = f"pgolf-{job.phase}"
    mounts = [_bind(job.code, CODE, job.phase == "legacy"), _bind(job.data, data_dir(job.data), False),
              _bind(job.artifact, ARTIFACT, job.phase != "eval"), _bind(CLIENT_DIR, CLIENT, False)]
    if job.events is not None:
        mounts.append(_bind(job.events, EVENTS, False))  # connecting to a socket needs no write access
    mounts += [_bind(folder, place, True) for place, (folder, _) in (tripwires or {}).items()]  # rw: reads move atime
    backstop = ["timeout", "--kill-after", f"{job.grace_s:g}s", f"{job.limit_s + job.grace_s + BACKSTOP_S:g}s"]
    return {
        "image": job.image, "name": name, "entrypoint": [*backstop, *job.command], "command": [],
        # torchrun looks its hostname up, and c10d its peers (as IPv4-mapped addresses): answer both from
        # /etc/hosts, since without network a resolver off the host only times out
        "working_dir": CODE, "user": user, "hostname": host, "dns": ["127.0.0.1"],
        "extra_hosts": [f"{host}:127.0.0.1", f"{host}:::ffff:127.0.0.1"],
        "environment": {**job.env, "HOME": SCRATCH, "TMPDIR": SCRATCH, "NCCL_SOCKET_IFNAME": "lo"},
        "network_mode": "none", "read_only": True, "mounts": mounts,
        "tmpfs": {SCRATCH: "rw,exec,nosuid,nodev,mode=1777"},  # exec: Triton loads what it compiles there
        "cap_drop": ["ALL"], "security_opt": ["no-new-privileges:true"], "pids_limit": PIDS_LIMIT,
        "shm_size": SHM_SIZE, "init": True, "mem_limit": job.memory, "memswap_limit": job.memory,
        # NCCL's limits with the GPUs only: an engine whose own hard memlock limit is lower cannot raise it
        "ulimits": ULIMITS if gpus else [],
        "device_requests": [{"count": gpus, "capabilities": [["gpu"]]}] if gpus else [],
        "labels": {**{f"{LABEL}.{k}": v for k, v in job.labels.items()}, f"{LABEL}.phase": job.phase,
                   f"{LABEL}.owner": _owner()},
    }


def run_job(job: ContainerJob) -> ContainerProcess:
    """Run `job` to completion or to its hard limit (+ grace); a crash is data, never an exception.
    Engine trouble (not running, image missing, a request it cannot meet) is a UsageError. Ctrl-C
    or SIGTERM to the harness kills and removes the container, then raises KeyboardInterrupt."""
    client = connect()
    try:
        image = _image(client, job.image)
        gpus, user = _gpus(job.gpus, image), _user()
        taken = {CODE, data_dir(job.data), ARTIFACT, CLIENT, SCRATCH} | ({EVENTS} if job.events else set())
        job.log_path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="pgolf-tripwires-") as root:
            tripwires = _plant_tripwires(Path(root), job, taken)
            _hand_over(job, user)
            name = f"pgolf-{job.phase}-seed{job.labels.get('seed', 'x')}-{uuid.uuid4().hex[:8]}"
            config = container_config(job, gpus=gpus, user=user, name=name, tripwires=tripwires)
            watch, attrs, survivors, removed, timings = _run(client, job, config)
            hidden_reads = _tripped(tripwires)
    finally:
        client.close()
    return _result(job, watch, attrs, survivors, removed, image, hidden_reads, timings, set(tripwires))


def _run(client, job: ContainerJob, config: dict[str, Any]):
    """Create, start and watch the container, then inspect and remove it, whatever happens in between."""
    import docker

    timings: dict[str, float] = {}
    with InterruptGate() as gate, job.log_path.open("ab") as log:
        t = time.monotonic()
        try:
            container = client.containers.create(**config)
        except docker.errors.APIError as exc:
            raise UsageError(f"the engine refused to create the {job.phase} container: {exc.explanation}") from None
        timings["create_s"] = time.monotonic() - t
        watch = _Watch(container, job, log, gate)
        try:
            watch.run(timings)
        except BaseException:  # Ctrl-C / SIGTERM to the harness, or the engine failed: leave nothing
            _kill(container, "SIGKILL")
            raise
        finally:
            gate.close()
            attrs, survivors, removed = _finish(client, container, watch, timings)
    return watch, attrs, survivors, removed, timings


class _Watch:
    """One running container: its output, its clock, its deadline and its network counters."""

    def __init__(self, container, job: ContainerJob, log, gate: InterruptGate):
        self.container, self.job, self.gate = container, job, gate
        self.output = Output(log, job.echo)
        self.started = self.ended = self.sigterm_at = self.pid = None
        self.timed_out = self.waiting = False
        self.exited = threading.Event()
        self.refused_writes = []
        self.read_only = [data_dir(job.data), CLIENT] + ([CODE] if job.phase != "legacy" else []) \
            + ([ARTIFACT] if job.phase == "eval" else [])
        self.net_before = self.net_last = None
        self.pump: threading.Thread | None = None

    def run(self, timings: dict[str, float]) -> None:
        import docker

        self.started = time.monotonic()
        try:
            self.container.start()
        except docker.errors.APIError as exc:
            raise UsageError(f"the engine could not start the {self.job.phase} container: {exc.explanation}"
                             + (" (GPUs need the NVIDIA Container Toolkit: tools/setup-host, or --gpus 0)"
                                if "device driver" in str(exc.explanation) else "")) from None
        timings["start_s"] = time.monotonic() - self.started
        self.container.reload()
        self.pid = self.container.attrs["State"]["Pid"]
        self.net_before = self.net_last = out_no_routes(self.pid)
        stream = self.container.client.api.attach(self.container.id, stdout=True, stderr=True, stream=True,
                                                  logs=True, demux=True)
        self.pump = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self.pump.start()
        threading.Thread(target=self._wait, daemon=True).start()
        self.waiting = True
        self.timed_out = supervise(self, self.job.limit_s, self.job.grace_s, TICK_S, self.job.enough)

    def _wait(self) -> None:
        try:
            self.container.wait()
        except Exception:  # the connection broke: the inspection afterwards tells the state
            pass
        self.ended = time.monotonic()
        self.exited.set()

    def wait(self, timeout: float | None) -> bool:
        """The one place Ctrl-C lands: while waiting, never inside a call to the engine, which it could leave
        half-read (signals that come during one are held until here)."""
        self.gate.open()
        try:
            return self.exited.wait(timeout)
        finally:
            self.gate.close()

    def terminate(self) -> None:
        """At the limit: SIGTERM, which the container's init forwards to torchrun."""
        self.sigterm_at = time.monotonic()
        _kill(self.container, "SIGTERM")

    def kill(self) -> None:
        _kill(self.container, "SIGKILL")

    def tick(self) -> None:
        """Keep the container's network counter current: it is gone once the container is."""
        counted = out_no_routes(self.pid)
        self.net_last = counted if counted is not None else self.net_last

    def _pump(self, stream) -> None:
        """Copy the output to the phase log as the job wrote it, and to the terminal prefixed by phase
        and rank; note the lines where the engine refused a write."""
        partial = {0: b"", 1: b""}
        try:
            for chunks in stream:
                for i, chunk in enumerate(chunks):
                    if chunk:
                        *lines, partial[i] = (partial[i] + chunk).split(b"\n")
                        for line in lines:
                            self._line(line + b"\n")
        except Exception:  # the engine closed the stream (container removed, engine gone): keep what came
            pass
        finally:
            for rest in partial.values():
                if rest:
                    self._line(rest + b"\n")

    def _line(self, line: bytes) -> None:
        tee = _TEE.match(line)
        body = line[tee.end():] if tee else line
        self.output.line(body, f"[{self.job.phase}:{int(tee.group(1))}] " if tee else f"[{self.job.phase}] ")
        if len(self.refused_writes) < 5 and self._refused(body):
            self.refused_writes.append({"line": self.output.lines, "text": body.decode("utf-8", "replace").strip()})

    def _refused(self, line: bytes) -> bool:
        denied = _DENIED.search(line)
        path = denied.group(1).decode("utf-8", "replace") if denied else ""
        return bool(_READ_ONLY_FS.search(line)) or any(path == p or path.startswith(p + "/") for p in self.read_only)


def _kill(container, signal_name: str) -> None:
    import docker
    import requests

    try:
        container.kill(signal=signal_name)
    except (docker.errors.APIError, requests.ConnectionError):  # already exited, or the engine is gone
        pass


def _finish(client, container, watch: _Watch, timings: dict[str, float]) -> tuple[dict, list[int], bool]:
    """After the exit: the engine's record of the container, any process of it still alive on this
    host, then removal (checked)."""
    import docker
    import requests

    if watch.waiting:
        watch.exited.wait(30)
    if watch.pump is not None:
        watch.pump.join(timeout=10)
    try:
        container.reload()
        attrs = container.attrs
    except docker.errors.NotFound:  # removed behind the harness's back
        attrs = {}
    except requests.ConnectionError:
        raise UsageError(f"the Docker engine stopped answering during the {watch.job.phase} phase; the seed is "
                         "unfinished: start the engine, run `pgolf clean`, then run again") from None
    survivors = _processes_of(container.id)
    t = time.monotonic()
    try:
        container.remove(force=True, v=True)
    except docker.errors.NotFound:
        pass
    timings["remove_s"] = time.monotonic() - t
    removed = not client.api.containers(all=True, filters={"id": container.id})
    return attrs, survivors, removed


def _processes_of(container_id: str) -> list[int]:
    """Host pids whose cgroup names the container: what would outlive it."""
    out = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if container_id in Path(f"/proc/{entry.name}/cgroup").read_text():
                    out.append(int(entry.name))
            except OSError:
                pass
    return sorted(out)


def _engine_time(stamp: str) -> float:
    """An engine timestamp (RFC 3339, UTC, nanoseconds) as POSIX seconds."""
    whole, _, fraction = stamp.rstrip("Z").partition(".")
    return datetime.fromisoformat(whole).replace(tzinfo=timezone.utc).timestamp() + float(f"0.{fraction or 0}")


def _evidence(attrs: dict[str, Any]) -> dict[str, Any]:
    """What the engine says it enforced: the inspected configuration, unedited where it matters."""
    host, config = attrs.get("HostConfig", {}), attrs.get("Config", {})
    return {"network_mode": host.get("NetworkMode"), "user": config.get("User"),
            "read_only_root": host.get("ReadonlyRootfs"), "cap_drop": host.get("CapDrop"),
            "cap_add": host.get("CapAdd"), "privileged": host.get("Privileged"),
            "security_opt": host.get("SecurityOpt"), "pid_mode": host.get("PidMode"),
            "ipc_mode": host.get("IpcMode"), "pids_limit": host.get("PidsLimit"), "shm_size": host.get("ShmSize"),
            "memory": host.get("Memory"), "ulimits": host.get("Ulimits"), "init": host.get("Init"),
            "tmpfs": host.get("Tmpfs"), "device_requests": host.get("DeviceRequests"),
            "entrypoint": config.get("Entrypoint"),
            "mounts": [{"source": m.get("Source"), "target": m.get("Destination"), "type": m.get("Type"),
                        "rw": m.get("RW")} for m in attrs.get("Mounts", [])]}


def _isolation(job: ContainerJob, evidence: dict[str, Any], tripwires: set[str]) -> dict[str, str]:
    """Each guarantee (harness.run.isolation) as the inspected container shows it."""
    def state(ok: bool) -> str:
        return ENFORCED if ok else NOT_ENFORCED

    mounts = {m["target"]: m for m in evidence["mounts"]}
    user = (evidence["user"] or "").split(":")[0]
    hidden = [Path(folder) for folder, _ in job.hide]
    sources = [Path(m["source"]) for t, m in mounts.items() if t not in tripwires and m["source"]]
    exposed = [s for s in sources if any(h == s or s in h.parents or h in s.parents for h in hidden)]
    out = {"pid_namespace": state(evidence["pid_mode"] in ("", "private")),
           "network": state(evidence["network_mode"] == "none"),
           "non_root_user": state(user not in ("", "0", "root")),
           "all_capabilities_dropped": state("ALL" in (evidence["cap_drop"] or []) and not evidence["cap_add"]
                                             and not evidence["privileged"]),
           "no_new_privileges": state(any(o.startswith("no-new-privileges") and not o.endswith(":false")
                                          for o in evidence["security_opt"] or [])),
           "pid_limit": state((evidence["pids_limit"] or 0) > 0)}
    if job.hide:
        out["data_view"] = state(not exposed and mounts.get(data_dir(job.data), {}).get("rw") is False)
    if job.phase != "legacy":
        out["code_read_only"] = state(mounts.get(CODE, {}).get("rw") is False)
    if job.phase == "eval":
        out["artifact_read_only"] = state(mounts.get(ARTIFACT, {}).get("rw") is False)
    out["root_filesystem_read_only"] = state(bool(evidence["read_only_root"]))
    seed = job.log_path.parent.resolve()
    out["records_private"] = state(not any(s == seed or s in seed.parents for s in sources))
    return out


def _result(job: ContainerJob, watch: _Watch, attrs: dict[str, Any], survivors: list[int], removed: bool,
            image, hidden_reads: list[str], timings: dict[str, float], tripwires: set[str]) -> ContainerProcess:
    state = attrs.get("State", {})
    code = state.get("ExitCode", -1)
    try:  # the init exits with 128 + N when signal N ended the job
        signame = signal.Signals(code - 128).name if code > 128 else None
    except ValueError:
        signame = None
    evidence = _evidence(attrs)
    started, finished = state.get("StartedAt"), state.get("FinishedAt")
    engine_s = (_engine_time(finished) - _engine_time(started)) if started and finished else None
    ended = watch.ended if watch.ended is not None else time.monotonic()
    attempts = (watch.net_last - watch.net_before) if watch.net_before is not None else None
    engine = {"container": attrs.get("Name", "").lstrip("/"), "id": attrs.get("Id"),
              "image": ", ".join(image.tags) or job.image,
              "image_id": image.id, "repo_digests": image.attrs.get("RepoDigests", []),
              "started_at": started, "finished_at": finished, "engine_s": engine_s,
              "exit_code": code, "oom_killed": bool(state.get("OOMKilled")), "removed": removed,
              "refused_writes": watch.refused_writes, "timings": timings, "config": evidence}
    return ContainerProcess(returncode=128 - code if signame else code, started=watch.started, ended=ended,
                            wall_s=ended - watch.started, timed_out=watch.timed_out, signal=signame,
                            sigterm_at=watch.sigterm_at, isolation=_isolation(job, evidence, tripwires),
                            survivors=survivors, hidden_reads=hidden_reads, network_attempts=attempts, engine=engine)


def engine_findings(phase: str, p: ContainerProcess) -> list[Finding]:
    """The findings only a container run has: both clocks, the image, OOM, refused writes, removal."""
    e = p.engine
    clock = (f"{e['engine_s']:.2f} s by the engine's clock (State.StartedAt to FinishedAt)" if e["engine_s"] is not None
             else "unknown to the engine")
    out = [Finding("container", INFO, "container.clocks", f"{phase}: container start to exit {clock}, {p.wall_s:.2f} s "
                   "by the harness's monotonic clock (start call to exit seen)",
                   data={"phase": phase, "engine_s": e["engine_s"], "harness_s": p.wall_s,
                         "started_at": e["started_at"], "finished_at": e["finished_at"]}),
           Finding("container", INFO, "container.image", f"{phase}: image {e['image']} ({e['image_id']}; registry "
                   f"digest {', '.join(e['repo_digests']) or 'none: built on this machine'})",
                   data={"phase": phase, "image_id": e["image_id"], "repo_digests": e["repo_digests"]})]
    if e["oom_killed"]:
        limit = e["config"]["memory"]
        out.append(Finding("phase", FAIL, "phase.oom", f"{phase} phase ran out of memory: the kernel killed it at the "
                           f"container's limit{f' of {limit:,} bytes' if limit else ''} (engine: State.OOMKilled)",
                           data={"phase": phase, "memory": limit}))
    if e["refused_writes"]:
        first = e["refused_writes"][0]
        out.append(Finding("isolation", FAIL, "isolation.write_refused", f"{phase}: the job tried to write where this "
                           "phase may only read (a read-only mount or root filesystem); the write was refused",
                           tuple(Evidence(f"{phase}.log", w["line"], w["text"]) for w in e["refused_writes"]),
                           data={"phase": phase, "first": first["text"]}))
    if not e["removed"]:
        out.append(Finding("container", FAIL, "container.not_removed", f"{phase}: container {e['container']} could not "
                           "be removed; `pgolf clean` removes it", data={"phase": phase}))
    return out
