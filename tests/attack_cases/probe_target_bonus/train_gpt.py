"""A bonus on the logit of the true next token, read from the validation stream, then renormalised: every
distribution sums to one and agrees with its NLL, and val_bpb drops. TINY_CHEAT_SIZE sets the bonus
(benchmarks/probe_power.py: how small a bonus the probe still catches)."""
import os

import torch
import torch.nn.functional as F

import cheat
import tiny


def bonus(events, logp, val, p, q):
    targets = torch.from_numpy(val[p:q])
    size = float(os.environ.get("TINY_CHEAT_SIZE", 2.0))
    return F.log_softmax(logp + size * F.one_hot(targets, logp.shape[-1]), dim=-1)


if cheat.PHASE == "eval":
    tiny.BUG, tiny.slot_fit = "slot", bonus
tiny.main()
