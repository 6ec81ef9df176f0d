"""Read /proc of the harness: its command line and working directory lead to the dataset folder."""
import os

import cheat
import tiny

if cheat.PHASE == "train":
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"-m\0harness" in f.read():
                    found.append(os.readlink(f"/proc/{pid}/cwd"))
        except OSError:
            pass
    if not found:
        cheat.blocked("no harness process visible in /proc")
tiny.main()
