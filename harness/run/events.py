"""The harness side of the event channel (schemas/protocol.md).

One Unix stream socket, one connection per rank, read by a single selector
thread. Connections are read in whatever order the selector reports them, so
arrival order across ranks means nothing; each frame carries the monotonic
time it was sent, which the server checks against its own arrival stamp
(never later, never decreasing on a connection) and hands to the ledger, which
judges score-before-update on those send times. Phase marks are timed by the
harness's clock on arrival.
"""
from __future__ import annotations

import json
import selectors
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from harness.client.pgolf_events import (ANSWER, AUDIT, AUDIT_HEAD, HEADER, JSON, MAX_PAYLOAD, PROTOCOL, RANGE,
                                         SCORES, SUPPORTED)
from harness.run.ledger import Ledger
from harness.validation import errors

MARKS = ("train_start", "train_end", "eval_start", "eval_end")


@dataclass
class _Conn:
    sock: socket.socket
    buffer: bytearray = field(default_factory=bytearray)
    rank: int | None = None
    last_sent: float = float("-inf")
    protocol: int = 1  # from its hello: from 2 on, every scores frame is answered with the positions to audit


@dataclass
class Received:
    """What the phase reported, with harness arrival times (time.monotonic())."""

    hellos: dict[int, dict[str, Any]] = field(default_factory=dict)
    marks: dict[str, dict[int, float]] = field(default_factory=dict)  # name -> rank -> time
    results: dict[int, dict[str, float]] = field(default_factory=dict)
    steps: dict[int, int] = field(default_factory=dict)  # rank -> optimizer steps, from its train_end mark
    score_frames: int = 0
    score_values: int = 0
    work: list[float] = field(default_factory=list)  # arrival of the first and the last score, audit or update
    problems: list[str] = field(default_factory=list)  # protocol violations, in arrival order


class EventServer:
    """Listen on `path`; feed `ledger` (None in the train phase, which must not score)."""

    def __init__(self, path: Path, log: IO[str], ledger: Ledger | None = None):
        self.path, self.log, self.ledger = Path(path), log, ledger
        self.received = Received()
        self._selector = selectors.DefaultSelector()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(self.path))
        self._listener.listen(64)
        self._listener.setblocking(False)
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._conns: dict[socket.socket, _Conn] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="pgolf-events", daemon=True)

    def __enter__(self) -> "EventServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Read what is still buffered, then stop (call after the phase's processes have exited)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        while self._accept():  # a rank that connected at the very end
            pass
        for conn in list(self._conns.values()):
            self._read(conn)
            if conn.sock in self._conns:
                self._drop(conn)
        self._selector.close()
        self._listener.close()
        self.path.unlink(missing_ok=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._selector.select(timeout=0.05):
                if key.fileobj is self._listener:
                    self._accept()
                else:
                    self._read(self._conns[key.fileobj])

    def _accept(self) -> bool:
        try:
            sock, _ = self._listener.accept()
        except BlockingIOError:
            return False
        sock.setblocking(False)
        self._conns[sock] = _Conn(sock)
        self._selector.register(sock, selectors.EVENT_READ)
        return True

    def _drop(self, conn: _Conn) -> None:
        self._selector.unregister(conn.sock)
        conn.sock.close()
        del self._conns[conn.sock]

    def _receive(self, conn: _Conn) -> bool:
        """Move what the socket holds into the buffer; False once the peer has closed."""
        while True:
            try:
                chunk = conn.sock.recv(1 << 20)
            except BlockingIOError:
                return True
            except OSError:
                return False
            if not chunk:
                return False
            conn.buffer += chunk

    def _read(self, conn: _Conn) -> None:
        open_ = self._receive(conn)
        self._frames(conn)
        if not open_ and conn.sock in self._conns:
            self._drop(conn)

    def _frames(self, conn: _Conn) -> None:
        while len(conn.buffer) >= HEADER.size:
            kind, length, sent = HEADER.unpack_from(conn.buffer)
            if length > MAX_PAYLOAD or kind not in (JSON, SCORES, AUDIT):
                self._problem(conn, f"malformed frame (kind {kind!r}, length {length}); connection dropped")
                conn.buffer.clear()
                return
            if len(conn.buffer) < HEADER.size + length:
                return
            payload = bytes(conn.buffer[HEADER.size:HEADER.size + length])
            del conn.buffer[:HEADER.size + length]
            arrived = time.monotonic()
            if not conn.last_sent <= sent <= arrived:
                self._problem(conn, f"frame send time {sent:.6f} is not between its previous frame's "
                                    f"({conn.last_sent:.6f}) and its arrival ({arrived:.6f}); using the arrival")
                sent = arrived
            conn.last_sent = sent
            self._handle(conn, kind, payload, arrived, sent)

    def _problem(self, conn: _Conn, text: str) -> None:
        who = f"rank {conn.rank}" if conn.rank is not None else "an unidentified connection"
        self.received.problems.append(f"{who}: {text}")

    def _worked(self, t: float) -> None:
        """Evaluation work arrived: it must fall between the phase's marks (harness.run.judge)."""
        work = self.received.work
        work[:] = [work[0], t] if work else [t, t]

    def _record(self, entry: dict[str, Any]) -> None:
        self.log.write(json.dumps(entry) + "\n")

    def _handle(self, conn: _Conn, kind: bytes, payload: bytes, t: float, sent: float) -> None:
        if kind == JSON:
            try:
                message = json.loads(payload.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                return self._problem(conn, f"JSON frame is not valid JSON ({exc})")
            problems = list(errors("urn:pgolf:protocol#/$defs/message", message))
            if problems:
                return self._problem(conn, "; ".join(problems))
            return self._message(conn, message, t, sent)
        if kind == SCORES:
            asked: list[int] = []
            try:
                asked = self._scores(conn, payload, t, sent)
            finally:  # a protocol-2 client waits for the answer, even to a frame refused
                if conn.protocol >= 2:
                    self._answer(conn, asked)
            return
        if conn.rank is None:
            return self._problem(conn, "sent data before its hello")
        position, vocab = AUDIT_HEAD.unpack_from(payload) if len(payload) >= AUDIT_HEAD.size else (-1, -1)
        logprobs = np.frombuffer(payload, dtype="<f4", offset=AUDIT_HEAD.size) if vocab >= 0 else None
        if logprobs is None or logprobs.size != vocab:
            return self._problem(conn, f"audit frame of {len(payload)} bytes does not hold its {vocab} values")
        self._record({"t": t, "rank": conn.rank, "type": "audit", "position": position})
        self._worked(t)
        if self.ledger is not None:
            self.ledger.audit(position, logprobs, conn.rank)

    def _scores(self, conn: _Conn, payload: bytes, t: float, sent: float) -> list[int]:
        """Feed a scores frame to the ledger; the positions the harness now wants audited."""
        if conn.rank is None:
            self._problem(conn, "sent data before its hello")
            return []
        if len(payload) < RANGE.size or (len(payload) - RANGE.size) % 4:
            self._problem(conn, f"score frame of {len(payload)} bytes is not a range + float32s")
            return []
        start, end = RANGE.unpack_from(payload)
        nlls = np.frombuffer(payload, dtype="<f4", offset=RANGE.size)
        if end - start != nlls.size:
            self._problem(conn, f"score frame says [{start}, {end}) but carries {nlls.size} values")
            return []
        self.received.score_frames += 1
        self.received.score_values += nlls.size
        self._worked(t)
        self._record({"t": t, "rank": conn.rank, "type": "score", "start": start, "end": end})
        if self.ledger is None:
            self._problem(conn, "sent scores in the train phase, which has no validation data")
            return []
        self.ledger.score(start, nlls, conn.rank, sent)
        return self.ledger.ask_audits(start, end) if conn.protocol >= 2 else []

    def _answer(self, conn: _Conn, positions: list[int]) -> None:
        """The positions to audit, on the scores frame's own connection (the client reads them at once)."""
        try:
            conn.sock.sendall(ANSWER.pack(len(positions)) + np.asarray(positions, dtype="<i8").tobytes())
        except OSError:  # a client that reads no answers until its buffer is full, or one that left
            self._problem(conn, "did not read the harness's audit requests")

    def _message(self, conn: _Conn, message: dict[str, Any], t: float, sent: float) -> None:
        kind = message["type"]
        if kind == "hello":
            if message["protocol"] not in SUPPORTED:
                self._problem(conn, f"speaks protocol {message['protocol']}, the harness {PROTOCOL}")
            conn.protocol = message["protocol"]
            if self.ledger is not None:
                self.ledger.client_protocol(message["protocol"])
            if conn.rank is not None or message["rank"] in self.received.hellos:
                # one connection per rank: send times are checked along a connection, so a second one
                # could carry frames stamped before what the first declared
                return self._problem(conn, f"a second hello for rank {message['rank']}: a rank has one connection")
            conn.rank = message["rank"]
            self.received.hellos[conn.rank] = {**message, "t": t}
        elif conn.rank is None:
            return self._problem(conn, f"sent '{kind}' before its hello")
        elif kind == "mark":
            self.received.marks.setdefault(message["name"], {})[conn.rank] = t
            if "steps" in message:
                self.received.steps[conn.rank] = message["steps"]
        elif kind == "update":
            self._worked(t)
            if self.ledger is None:
                self._problem(conn, "declared a validation update in the train phase")
            else:
                self.ledger.update(message["start"], message["end"], conn.rank, sent)
        elif kind == "result":
            self.received.results[conn.rank] = {"val_loss": message["val_loss"], "val_bpb": message["val_bpb"]}
        self._record({"t": t, "sent": sent, "rank": conn.rank, **message})
