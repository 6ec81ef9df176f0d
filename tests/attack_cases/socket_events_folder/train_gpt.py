"""Write into the event socket's folder: a file there could pose as the harness's own."""
import os

import cheat
import tiny

try:
    with open(os.path.join(os.path.dirname(os.environ["PGOLF_EVENTS"]), "planted"), "w") as f:
        f.write("x")
except OSError as exc:
    cheat.blocked(f"event folder not writable: {exc}")
tiny.main()
