"""A FIFO in the artifact: a scan that reads it would hang, one that skips it would count nothing."""
import os

import cheat
import tiny

tiny.main()
if cheat.PHASE == "train":
    os.mkfifo(os.path.join(cheat.ARTIFACT, "pipe"))
