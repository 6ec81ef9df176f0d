"""Train keeps the model in /var/tmp/stash, eval loads it from there."""
import os

import cheat

cheat.via('/var/tmp/stash')
