"""Train leaves the model in a System V shared memory segment (key 0x50474f4c), eval attaches to it."""
import ctypes
import os

import cheat
import tiny

KEY, IPC_CREAT = 0x50474F4C, 0o1000
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p

if cheat.PHASE == "train":
    tiny.main()
    with open(os.path.join(cheat.ARTIFACT, "model.pt"), "rb") as f:
        data = f.read()
    os.remove(os.path.join(cheat.ARTIFACT, "model.pt"))
    open(os.path.join(cheat.ARTIFACT, "p"), "w").close()
    segment = libc.shmget(KEY, 8 + len(data), IPC_CREAT | 0o666)
    if segment < 0:
        cheat.blocked(f"shmget: {os.strerror(ctypes.get_errno())}")
    ctypes.memmove(libc.shmat(segment, None, 0), len(data).to_bytes(8, "little") + data, 8 + len(data))
else:
    segment = libc.shmget(KEY, 0, 0)
    if segment < 0:
        cheat.blocked(f"no segment in eval: {os.strerror(ctypes.get_errno())}")
    address = libc.shmat(segment, None, 0)
    size = int.from_bytes(ctypes.string_at(address, 8), "little")
    os.makedirs("/tmp/rebuilt", exist_ok=True)
    with open("/tmp/rebuilt/model.pt", "wb") as f:
        f.write(ctypes.string_at(address + 8, size))
    os.environ["PGOLF_ARTIFACT_DIR"] = "/tmp/rebuilt"
    tiny.main()
