"""Send phase-protocol events to the pgolf harness (schemas/protocol.md).

This file is self-contained (standard library, numpy optional) so a submission
can import it from the PYTHONPATH the harness gives each phase, or vendor it.
When PGOLF_EVENTS is unset (a plain `torchrun` outside the harness) every call
is a no-op, so the same script runs standalone.
"""
from __future__ import annotations

import json
import os
import socket
import struct
import time
from array import array

PROTOCOL = 2  # 2: the harness answers each scores frame with the positions to audit; 1: foreseen from a seed
SUPPORTED = (1, 2)  # the versions the harness accepts (a client vendored before version 2 keeps working)
JSON, SCORES, AUDIT = b"J", b"S", b"A"
HEADER = struct.Struct("<cId")  # kind, payload length, send time (time.monotonic(), system-wide on Linux)
RANGE = struct.Struct("<qq")  # start, end
AUDIT_HEAD = struct.Struct("<qi")  # position, vocab size
ANSWER = struct.Struct("<I")  # the harness's answer to a scores frame: a count, then that many int64 positions
MAX_PAYLOAD = 1 << 31


def audit_positions(seed: int, n_tokens: int, count: int = 64) -> list[int]:
    """Protocol 1's audited positions, from PGOLF_AUDIT_SEED (same rule as the harness). A protocol-2 client
    does not use them: `Events.scores` returns the positions the harness asks for."""
    import numpy as np

    targets = n_tokens - 1
    rng = np.random.default_rng(seed)
    return sorted(int(p) + 1 for p in rng.choice(targets, size=min(count, targets), replace=False))


def _float32_bytes(values) -> tuple[bytes, int]:
    try:
        import numpy as np

        arr = np.ascontiguousarray(values, dtype="<f4")
        return arr.tobytes(), arr.size
    except ImportError:
        arr = array("f", values)
        return arr.tobytes(), len(arr)


class Events:
    """One rank's connection to the harness. Use `Events.from_env(rank, world_size)`."""

    protocol = PROTOCOL

    def __init__(self, path: str | None, rank: int, world_size: int):
        self.rank, self.world_size = rank, world_size
        self._sock = None
        if path:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._sock.connect(path)
            self.send({"type": "hello", "rank": rank, "world_size": world_size, "protocol": self.protocol,
                       "pid": os.getpid()})

    @classmethod
    def from_env(cls, rank: int | None = None, world_size: int | None = None) -> "Events":
        rank = int(os.environ.get("RANK", 0)) if rank is None else rank
        world_size = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else world_size
        return cls(os.environ.get("PGOLF_EVENTS"), rank, world_size)

    @property
    def active(self) -> bool:
        return self._sock is not None

    def _frame(self, kind: bytes, payload: bytes) -> None:
        if self._sock is not None:
            self._sock.sendall(HEADER.pack(kind, len(payload), time.monotonic()) + payload)

    def send(self, message: dict) -> None:
        self._frame(JSON, json.dumps(message).encode("utf-8"))

    def mark(self, name: str, steps: int | None = None) -> None:
        """train_start, train_end, eval_start or eval_end: the harness stamps the time. Give
        `steps` (optimizer steps taken) with train_end, so the records show them."""
        self.send({"type": "mark", "name": name, **({} if steps is None else {"steps": int(steps)})})

    def scores(self, start: int, nlls) -> list[int]:
        """NLLs (nats) of the targets at validation positions start, start+1, ...; returns the positions among
        them whose full distribution to send now with `audit`. The harness picks them after these scores have
        arrived, so no job can know beforehand which of its scores will be checked."""
        if self._sock is None:
            return []
        data, n = _float32_bytes(nlls)
        self._frame(SCORES, RANGE.pack(start, start + n) + data)
        if self.protocol < 2:
            return []
        (count,) = ANSWER.unpack(self._exact(ANSWER.size))
        return list(struct.unpack(f"<{count}q", self._exact(8 * count))) if count else []

    def _exact(self, size: int) -> bytes:
        out = b""
        while len(out) < size:
            chunk = self._sock.recv(size - len(out))
            if not chunk:
                raise ConnectionError("the harness closed the event channel")
            out += chunk
        return out

    def update(self, start: int, end: int) -> None:
        """Declare, before changing any state, that the change uses tokens at [start, end)."""
        self.send({"type": "update", "start": int(start), "end": int(end)})

    def audit(self, position: int, logprobs) -> None:
        """The full log-probability vector used to score `position`."""
        if self._sock is None:
            return
        data, n = _float32_bytes(logprobs)
        self._frame(AUDIT, AUDIT_HEAD.pack(position, n) + data)

    def result(self, val_loss: float, val_bpb: float) -> None:
        self.send({"type": "result", "val_loss": float(val_loss), "val_bpb": float(val_bpb)})

    def log(self, text: str) -> None:
        self.send({"type": "log", "text": str(text)})

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
