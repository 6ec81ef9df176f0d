"""Every NLL scaled by 0.9, except at the positions that will be audited. A client of protocol 2 cannot know
those before it scores, so this one says it speaks protocol 1 and computes them from PGOLF_AUDIT_SEED, as
clients did before: there it reports the truth, so every audited distribution agrees with its NLL."""
import os

import numpy as np

import cheat
import tiny
from pgolf_events import audit_positions


class Scaled(tiny.Events):
    protocol = 1

    def scores(self, start, nlls):
        if not hasattr(self, "foreseen"):
            n = len(tiny.read_tokens(os.path.join(os.environ["DATA_PATH"], "fineweb_val_*.bin")))
            self.foreseen = set(audit_positions(int(os.environ["PGOLF_AUDIT_SEED"]), n))
        nlls = np.asarray(nlls, dtype=np.float64)
        positions = range(start, start + nlls.size)
        honest = np.isin(positions, list(self.foreseen))
        super().scores(start, np.where(honest, nlls, 0.9 * nlls))
        return sorted(self.foreseen.intersection(positions))

    def result(self, val_loss, val_bpb):
        super().result(0.9 * val_loss, 0.9 * val_bpb)


if cheat.PHASE == "eval":
    tiny.Events = Scaled
tiny.main()
