"""The model carried in extended attributes (user.*) of a few hundred empty artifact files."""
import os

import cheat

folder = os.path.join(cheat.ARTIFACT, "x")


def put(i, piece):
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{i:03d}")
    open(path, "w").close()
    try:
        os.setxattr(path, "user.m", piece.encode())
    except OSError as exc:
        cheat.blocked(f"no extended attributes in the artifact: {exc}")


cheat.smuggle(put, lambda: [os.getxattr(os.path.join(folder, n), "user.m").decode()
                            for n in sorted(os.listdir(folder))], 3000)
