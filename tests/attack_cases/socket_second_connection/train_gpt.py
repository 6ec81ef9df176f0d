"""Train on chunk 0 before scoring it, declared as an update; its scores and audits go over a second
connection that says it is rank 0 too, every frame stamped with a send time before the update, so the
ledger's C3 (on send times) reads score-then-update."""
import time

import cheat
import tiny
from pgolf_events import HEADER, Events


class Backdated(Events):
    def __init__(self, path, rank, world):
        super().__init__(path, rank, world)
        self.twin = Events(path, rank, world)
        stamp, sock = time.monotonic(), self.twin._sock
        self.twin._frame = lambda kind, payload: sock.sendall(HEADER.pack(kind, len(payload), stamp) + payload)

    def scores(self, start, nlls):
        return self.twin.scores(start, nlls)

    def audit(self, position, logprobs):
        self.twin.audit(position, logprobs)

    def close(self):
        self.twin.close()
        super().close()


if cheat.PHASE == "eval":
    tiny.BUG, tiny.Events = "update_before_score", Backdated
tiny.main()
