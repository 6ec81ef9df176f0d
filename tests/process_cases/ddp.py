"""torchrun worker: a 2-rank gloo all-reduce, then either the network check or a hang.

argv: net | hang. In hang mode each rank first (before the slow `import torch`, so a short
deadline finds it) ignores SIGTERM and starts a `sleep` grandchild: a rank that will not stop.
"""
import os
import signal
import subprocess
import sys
import time

from netcheck import check, say

rank = os.environ["RANK"]
if sys.argv[1] == "hang":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    subprocess.Popen(["sleep", "300"])
    say(f"rank {rank} started")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

dist.init_process_group("gloo")
total = torch.ones(1)
dist.all_reduce(total)
say(f"rank {rank} all_reduce {int(total.item())}")
if sys.argv[1] == "net":
    check(f"rank {rank}")
    dist.destroy_process_group()
else:
    time.sleep(300)
