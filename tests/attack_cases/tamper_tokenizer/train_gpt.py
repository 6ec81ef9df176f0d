"""Rewrite the tokenizer in the train view in place: were it the harness's own file, its byte accounting would follow."""
import os

import cheat
import tiny

if cheat.PHASE == "train":
    cheat.rewrite(os.environ["TOKENIZER_PATH"])
tiny.main()
