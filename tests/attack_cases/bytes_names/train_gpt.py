"""The model encoded in the names of thousands of empty artifact files."""
import os

import cheat

folder = os.path.join(cheat.ARTIFACT, "n")


def put(i, piece):
    os.makedirs(folder, exist_ok=True)
    open(os.path.join(folder, f"{i:05d}{piece}"), "w").close()


cheat.smuggle(put, lambda: [name[5:] for name in sorted(os.listdir(folder))], 240)
