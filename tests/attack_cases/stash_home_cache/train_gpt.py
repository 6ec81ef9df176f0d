"""Train keeps the model in ~/.cache/stash, eval loads it from there."""
import os

import cheat

cheat.via(os.path.expanduser('~/.cache/stash'))
