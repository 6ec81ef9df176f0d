"""An n-gram (here unigram) cache mixed into the model's distribution, updated with each window's tokens
before the window is scored instead of after."""
import torch

import cheat
import tiny

cache = {}


def cached(events, logp, val, p, q):
    counts = cache.setdefault("counts", torch.ones(logp.shape[-1]))
    counts += torch.bincount(torch.from_numpy(val[p:q]), minlength=logp.shape[-1])  # before scoring: the cheat
    return torch.log(0.8 * logp.exp() + 0.2 * counts / counts.sum())


if cheat.PHASE == "eval":
    tiny.BUG, tiny.slot_fit = "slot", cached
tiny.main()
