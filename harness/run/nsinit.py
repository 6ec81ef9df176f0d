"""PID 1 of a native job's namespace, and what it needs: stdlib only, run as a file
(`python -I -S nsinit.py --init FD NET HIDE -- CMD...`) so no site package can step in.

Inside the namespace the init enforces the phase's data view: each folder the job must not read
(the full dataset, the other phase's view) gets an empty tmpfs mounted over it, holding only
"tripwire" files named like the hidden shards; a tripwire read shows as its access time moving,
so the harness learns which hidden file the job tried to read. Network attempts from a namespace
without network are counted from its own IP statistics (OutNoRoutes), which a script that catches
the error cannot hide. The container back end uses the same tripwires and counter from the host.
"""
from __future__ import annotations

import ctypes
import fcntl
import json
import os
import signal
import socket
import struct
import sys
import threading
from pathlib import Path

# what a tripwire holds: a valid challenge shard header announcing zero tokens
TRIPWIRE = (20240520).to_bytes(4, "little") + (1).to_bytes(4, "little") + bytes(1016)


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

def _bring_loopback_up() -> None:
    """A new network namespace has only `lo`, and it is down: gloo/NCCL need it on localhost."""
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        flags = struct.unpack("16sh", fcntl.ioctl(sock, siocgifflags, struct.pack("16sh", b"lo", 0)))[1]
        fcntl.ioctl(sock, siocsifflags, struct.pack("16sh", b"lo", flags | iff_up))

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
