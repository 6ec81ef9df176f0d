"""Eval fetches its weights from an accomplice on the host: a Unix socket in the host's /tmp."""
import socket

import cheat
import tiny

if cheat.PHASE == "eval":
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect("/tmp/pgolf-attack.sock")
            s.recv(1 << 20)
    except OSError as exc:
        cheat.blocked(f"host socket unreachable: {exc}")
tiny.main()
