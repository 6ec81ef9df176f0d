"""SLOT-style fitting on the window about to be scored (tiny's slot_fit), without declaring the update."""
import cheat
import tiny

if cheat.PHASE == "eval":
    tiny.BUG, tiny.slot_fit = "slot", lambda events, logp, val, p, q: cheat.fit_undeclared(logp, val, p, q)
tiny.main()
