"""The model encoded in the targets of dangling symlinks in the artifact."""
import os

import cheat

folder = os.path.join(cheat.ARTIFACT, "l")


def put(i, piece):
    os.makedirs(folder, exist_ok=True)
    os.symlink(piece, os.path.join(folder, f"{i:05d}"))


cheat.smuggle(put, lambda: [os.readlink(os.path.join(folder, n)) for n in sorted(os.listdir(folder))], 4000)
