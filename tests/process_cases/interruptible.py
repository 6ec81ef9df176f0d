"""A harness running one job, for tests that interrupt the harness itself.

argv: log_path isolate(0|1). Prints "interrupted" and exits 130 when run_phase raises KeyboardInterrupt.
"""
import os
import sys
from pathlib import Path

from harness.run.native import Sandbox, run_phase

here = Path(__file__).parent
try:
    run_phase([sys.executable, str(here / "tree.py"), "hang"], env=dict(os.environ), cwd=here,
              log_path=Path(sys.argv[1]), limit_s=60, grace_s=0.5, prefix="[job] ",
              sandbox=Sandbox(read_only=(here.parent.parent,)) if sys.argv[2] == "1" else None)
except KeyboardInterrupt:
    print("interrupted", flush=True)
    sys.exit(130)
