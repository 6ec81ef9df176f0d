"""The model behind a symlinked artifact folder: artifact/w -> /dev/shm/w, written through the link."""
import os

import cheat

link = os.path.join(cheat.ARTIFACT, "w")
if cheat.PHASE == "train":
    os.makedirs("/dev/shm/w", exist_ok=True)
    os.symlink("/dev/shm/w", link)
cheat.via(link)
