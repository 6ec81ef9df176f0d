"""Rewrite the tokenizer in the train view in place: were it the harness's own file, its byte accounting would follow."""
import os

import cheat
import tiny

if cheat.PHASE == "train":
    try:
        with open(os.environ["TOKENIZER_PATH"], "r+b") as f:
            head = f.read(64)
            f.seek(0)
            f.write(head)  # the same bytes: the write itself is the cheat's foothold
    except OSError as exc:
        cheat.blocked(f"tokenizer not writable: {exc}")
tiny.main()
