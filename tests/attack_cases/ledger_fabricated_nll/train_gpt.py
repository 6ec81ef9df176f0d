"""Report half of every NLL (and claim the halved val_bpb), and make each audited distribution agree: the target's probability raised to
match the reported NLL, the rest scaled down so the row still sums to one."""
import numpy as np

import cheat
import tiny


class Flattering(tiny.Events):
    def __init__(self, *args):
        super().__init__(*args)
        self.true = {}

    def scores(self, start, nlls):
        self.true.update(zip(range(start, start + len(nlls)), nlls))
        return super().scores(start, np.asarray(nlls) / 2)

    def audit(self, position, logprobs):
        row = np.asarray(logprobs, dtype=np.float64)
        nll = float(self.true[position])
        target = int(np.argmin(np.abs(row + nll)))
        p = np.exp(row)
        want = np.exp(-nll / 2)
        p *= (1 - want) / (1 - p[target])
        p[target] = want
        super().audit(position, np.log(p).astype(np.float32))

    def result(self, val_loss, val_bpb):
        super().result(val_loss / 2, val_bpb / 2)


if cheat.PHASE == "eval":
    tiny.Events = Flattering
tiny.main()
