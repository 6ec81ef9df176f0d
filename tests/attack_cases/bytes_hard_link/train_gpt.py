"""A second name for model.pt: a counter that counts each inode once would count one file."""
import os

import cheat
import tiny

tiny.main()
if cheat.PHASE == "train":
    os.link(os.path.join(cheat.ARTIFACT, "model.pt"), os.path.join(cheat.ARTIFACT, "prior.pt"))
