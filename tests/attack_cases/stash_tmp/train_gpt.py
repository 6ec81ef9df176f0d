"""Train keeps the model in /tmp/stash, eval loads it from there."""
import os

import cheat

cheat.via('/tmp/stash')
