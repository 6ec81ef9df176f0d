"""The model in the artifact's __pycache__ folder, which the byte scan passes over as Python's own cache."""
import os

import cheat

cheat.via(os.path.join(cheat.ARTIFACT, "__pycache__"))
