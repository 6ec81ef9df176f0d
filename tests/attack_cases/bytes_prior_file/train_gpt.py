"""A 950 KB prior shipped beside train_gpt.py and loaded in eval: bytes outside the artifact folder."""
import os

import cheat
import tiny

if cheat.PHASE == "eval":
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "prior.pt"), "rb") as f:
        f.read()  # a real cheat would add it to the model: the bytes are what counts
tiny.main()
