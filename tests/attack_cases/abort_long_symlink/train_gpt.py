"""A symlink with a 4,000-character target and a 255-character name: a scan that crashes on it has no verdict."""
import os

import cheat
import tiny

tiny.main()
if cheat.PHASE == "train":
    os.symlink("t" * 4000, os.path.join(cheat.ARTIFACT, "n" * 255))
