"""model.pt at the bottom of folders deeper than PATH_MAX: a scan that skips what it cannot open counts nothing."""
import os

import cheat
import tiny

if cheat.PHASE == "train":
    tiny.main()
    with open(os.path.join(cheat.ARTIFACT, "model.pt"), "rb") as f:
        data = f.read()
    os.remove(os.path.join(cheat.ARTIFACT, "model.pt"))
    os.chdir(cheat.ARTIFACT)
    for _ in range(20):
        os.mkdir("d" * 250)
        os.chdir("d" * 250)
    with open("model.pt", "wb") as f:
        f.write(data)
else:
    os.chdir(cheat.ARTIFACT)
    for _ in range(20):
        os.chdir("d" * 250)
    os.environ["PGOLF_ARTIFACT_DIR"] = os.getcwd() if len(os.getcwd()) < 4096 else "."
    tiny.main()
