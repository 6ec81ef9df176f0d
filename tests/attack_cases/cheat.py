"""What the attack cases share, staged beside each case's train_gpt.py (with examples/tiny as tiny.py).

A cheat that the harness blocks ends in `blocked(why)`, a crash whose log line names the block, so a
blocked cheat shows as a FAIL for its own reason and one that works as a PASS with a stolen number.
"""
import os

import tiny

PHASE = os.environ.get("PGOLF_PHASE", "train")
ARTIFACT = os.environ["PGOLF_ARTIFACT_DIR"]


def blocked(why: str):
    raise SystemExit(f"cheat blocked: {why}")


def via(folder: str) -> None:
    """Keep the model in `folder` instead of the artifact (which gets a one-byte placeholder) and
    evaluate from there: state carried from train to eval outside the counted bytes."""
    if PHASE == "train":
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as exc:
            blocked(f"cannot write {folder}: {exc}")
        os.environ["PGOLF_ARTIFACT_DIR"] = folder
        tiny.main()
        with open(os.path.join(ARTIFACT, "p"), "wb") as f:
            f.write(b"p")
    else:
        if not os.path.isfile(os.path.join(folder, "model.pt")):
            blocked(f"{folder}/model.pt did not survive into eval")
        os.environ["PGOLF_ARTIFACT_DIR"] = folder
        tiny.main()


def smuggle(put, take, piece: int) -> None:
    """Train, then carry model.pt's bytes as hex pieces of `piece` characters through `put(index, hex)`
    instead of a file;
    in eval rebuild it from `take()` (the pieces in order) into a scratch folder and evaluate from there."""
    model = os.path.join(ARTIFACT, "model.pt")
    if PHASE == "train":
        tiny.main()
        with open(model, "rb") as f:
            data = f.read().hex()
        os.remove(model)
        for i in range(0, len(data), piece):
            put(i // piece, data[i:i + piece])
        return
    try:
        data = bytes.fromhex("".join(take()))
    except (OSError, ValueError) as exc:
        blocked(f"the smuggled pieces did not come back: {exc}")
    os.makedirs("/tmp/rebuilt", exist_ok=True)
    with open("/tmp/rebuilt/model.pt", "wb") as f:
        f.write(data)
    os.environ["PGOLF_ARTIFACT_DIR"] = "/tmp/rebuilt"
    tiny.main()


def find(pattern: str) -> list[str]:
    """Every file of the visible filesystem whose name matches `pattern`, outside /proc, /sys and /dev."""
    import fnmatch

    out = []
    for base, folders, files in os.walk("/"):
        if base == "/":
            folders[:] = [f for f in folders if f not in ("proc", "sys", "dev")]
        out += [os.path.join(base, f) for f in files if fnmatch.fnmatch(f, pattern)]
    return sorted(out)


def rewrite(path: str) -> None:
    """Write a file's first bytes back over themselves: the write, not a change, is the cheat's foothold."""
    try:
        with open(path, "r+b") as f:
            head = f.read(64)
            f.seek(0)
            f.write(head)
    except OSError as exc:
        blocked(f"{path} is not writable: {exc}")



_SLOT_FIT = tiny.slot_fit  # as tiny defines it, before a case replaces it


class _Undeclared:
    def update(self, start, end):
        pass


def fit_undeclared(logp, val, p, q):
    """tiny's SLOT-style fit on the window about to be scored, its update declaration swallowed."""
    return _SLOT_FIT(_Undeclared(), logp, val, p, q)
