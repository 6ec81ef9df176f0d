"""Train on chunk 0 before scoring it and declare nothing: the ledger only knows the updates it is told of.
TINY_CHEAT_SIZE sets the test-time learning rate (benchmarks/probe_power.py: how small a step the probe
still catches)."""
import os

import cheat
import tiny


class Silent(tiny.Events):
    def __init__(self, *args):
        super().__init__(*args)
        self.first = True

    def update(self, start, end):
        if self.first:
            self.first = False  # the declaration of the update made before scoring chunk 0
        else:
            super().update(start, end)


if cheat.PHASE == "eval":
    tiny.BUG, tiny.Events = "update_before_score", Silent
    tiny.TTT_LR = float(os.environ.get("TINY_CHEAT_SIZE", tiny.TTT_LR))
tiny.main()
