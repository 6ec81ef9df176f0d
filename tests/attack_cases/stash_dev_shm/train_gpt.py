"""Train keeps the model in /dev/shm/stash, eval loads it from there."""
import os

import cheat

cheat.via('/dev/shm/stash')
