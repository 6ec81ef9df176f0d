"""Eval talks to the Docker API socket: with it, any host file (the validation shards) is a container away."""
import socket

import cheat
import tiny

if cheat.PHASE == "eval":
    answers = []
    for path in ("/var/run/docker.sock", "/run/docker.sock"):
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(path)
                s.sendall(b"GET /version HTTP/1.0\r\n\r\n")
                answers.append(s.recv(4096))
        except OSError:
            pass
    if not answers:
        cheat.blocked("no Docker API socket")
tiny.main()
