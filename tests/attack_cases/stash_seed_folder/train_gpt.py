"""Train keeps the model in the seed folder, found from __file__ (SEEDDIR/code/train_gpt.py); eval loads it."""
import os

import cheat

cheat.via(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "stash"))
