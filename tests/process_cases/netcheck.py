"""Print whether the internet and localhost TCP are reachable from here (run under network=False)."""
import os
import socket


def say(text: str) -> None:
    os.write(1, f"{text}\n".encode())  # one write per line: ranks share the pipe


def check(tag: str) -> None:
    try:
        socket.create_connection(("1.1.1.1", 53), timeout=2).close()
        say(f"{tag} internet: reachable")
    except OSError as exc:
        say(f"{tag} internet: {exc.__class__.__name__}: {exc.strerror or exc}")
    with socket.create_server(("127.0.0.1", 0)) as server:
        with socket.create_connection(server.getsockname(), timeout=2) as client:
            peer, _ = server.accept()
            client.sendall(b"ping")
            say(f"{tag} localhost: {peer.recv(4).decode()}")
            peer.close()


if __name__ == "__main__":
    check("solo")
