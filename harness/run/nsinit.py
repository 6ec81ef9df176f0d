"""PID 1 of a native job's sandbox, and the primitives both back ends share: stdlib only, run as a
file (`python -I -S nsinit.py --init FD CHECKS -- CMD...`) so that no site package can step in.

bubblewrap builds the sandbox (harness.run.native); this init runs inside it as PID 1: it starts
the job, reaps every orphan, and when the job ends reports to the harness, over the inherited
socket FD, what only the inside can see: the job's exact wait status, the packets the sandbox's
network namespace could not route (attempts to leave it, which a script that catches the error
cannot hide), and the answers to the harness's CHECKS, asked of the sandbox as the job sees it
(its uid, capabilities, no_new_privs, which paths exist and which are writable). When the harness
dies its end of the socket closes and the init exits, which takes the whole PID namespace down.

The tripwires live here too: files named like hidden shards, whose access time moves when read.
"""
from __future__ import annotations

import json
import os
import signal
import socket
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


def inside_facts(checks: dict[str, list[str]]) -> dict:
    """The sandbox as the job will see it: identity, capabilities, and the paths the harness asked about."""
    status = dict(line.split(":\t", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":\t" in line)
    return {"uid": os.getuid(), "gid": os.getgid(),
            "cap_eff": int(status.get("CapEff", "0"), 16), "cap_prm": int(status.get("CapPrm", "0"), 16),
            "no_new_privs": status.get("NoNewPrivs", "0").strip() == "1",
            "exists": [p for p in checks.get("absent", []) if os.path.lexists(p)],
            "writable": [p for p in checks.get("read_only", []) if os.access(p, os.W_OK)]}


def _init(link_fd: int, checks: dict[str, list[str]], cmd: list[str]) -> None:
    os.set_inheritable(link_fd, False)
    link = socket.socket(fileno=link_fd)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a job's killpg(0, SIGINT) must not end the init
    facts = inside_facts(checks)
    sent_before = out_no_routes() or 0
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
    report = {"status": status, "net_attempts": (out_no_routes() or 0) - sent_before, "inside": facts}
    link.sendall(json.dumps(report).encode())
    code = os.waitstatus_to_exitcode(status)
    os._exit(code if code >= 0 else 128 - code)


if __name__ == "__main__" and sys.argv[1:2] == ["--init"]:
    _init(int(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[5:])
