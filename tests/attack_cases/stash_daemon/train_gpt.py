"""Train leaves a daemon (double fork, own session) serving the model on an abstract Unix socket;
eval fetches it from there."""
import os
import socket

import cheat
import tiny

ADDRESS = "\0pgolf-stash"

if cheat.PHASE == "train":
    cheat.via("/tmp/stash")
    with open("/tmp/stash/model.pt", "rb") as f:
        data = f.read()
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            server = socket.socket(socket.AF_UNIX)
            server.bind(ADDRESS)
            server.listen()
            while True:
                conn, _ = server.accept()
                conn.sendall(data)
                conn.close()
        os._exit(0)
else:
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(ADDRESS)
            chunks = iter(lambda: s.recv(1 << 20), b"")
            data = b"".join(chunks)
    except OSError as exc:
        cheat.blocked(f"the daemon is gone: {exc}")
    os.makedirs("/tmp/stash", exist_ok=True)
    with open("/tmp/stash/model.pt", "wb") as f:
        f.write(data)
    cheat.via("/tmp/stash")
