"""examples/tiny (the test copies it beside this file as tiny.py), made to die by SIGABRT as a rank did in gloo's teardown.

TEARDOWN_ABORT=after_result: rank 1 calls os.abort() after main() returned, i.e. once the job had
delivered its complete result (train: the train_end marks and the artifact; eval: every score, the
eval_end marks and rank 0's result event).
TEARDOWN_ABORT=before_result: in eval, rank 0 calls os.abort() where it would send its result event.
"""
import os

import tiny

WHEN = os.environ.get("TEARDOWN_ABORT", "")
if WHEN == "before_result":
    tiny.Events.result = lambda self, val_loss, val_bpb: os.abort()

if __name__ == "__main__":
    tiny.main()
    if WHEN == "after_result" and os.environ["RANK"] == "1":
        os.abort()
