"""A plain script in the style of the early records, for `pgolf run --legacy` tests: no pgolf_events.

It "trains" a smoothed unigram model on the training shards, writes it zlib-compressed into its
working directory as the records do, "evaluates" it on the validation shards in the same process,
and prints its results in the records' log formats. LEGACY_CRASH=1 makes it die before evaluating.
"""
import glob
import math
import os
import time
import zlib

import numpy as np


def read_tokens(pattern):
    paths = sorted(glob.glob(os.path.join(os.environ["DATA_PATH"], pattern)))
    assert paths, f"no {pattern} in DATA_PATH"
    return np.concatenate([np.fromfile(p, dtype="<u2", offset=1024).astype(np.int64) for p in paths])


def main():
    seed = int(os.environ.get("SEED", 1337))
    print(f"seed:{seed}")
    print(f"world_size:{os.environ.get('WORLD_SIZE', '1')} grad_accum_steps:8")
    start = time.perf_counter()
    counts = np.bincount(read_tokens("fineweb_train_*.bin"), minlength=1024) + 1.0
    train_ms = (time.perf_counter() - start) * 1000
    print(f"stopping_early: wallclock_cap train_time:{train_ms:.0f}ms step:1/1")
    blob = zlib.compress(counts.astype("<f4").tobytes(), 9)
    with open("final_model.int8.ptz", "wb") as f:
        f.write(blob)
    code = len(open(__file__, "rb").read())
    print(f"Serialized model int8+zlib: {len(blob)} bytes")
    print(f"Total submission size int8+zlib: {len(blob) + code} bytes")
    if os.environ.get("LEGACY_CRASH") == "1":
        raise RuntimeError("deliberate crash before evaluation")
    start = time.perf_counter()
    logp = np.log(counts / counts.sum())
    loss = float(-logp[read_tokens("fineweb_val_*.bin")[1:]].mean())
    bpb = loss / math.log(2) / 2.5  # a test fixture: a fixed bytes-per-token guess, not real byte counting
    eval_ms = (time.perf_counter() - start) * 1000
    print(f"final_int8_zlib_roundtrip val_loss:{loss:.4f} val_bpb:{bpb:.4f} eval_time:{eval_ms:.0f}ms")
    print(f"final_int8_zlib_roundtrip_exact val_loss:{loss:.8f} val_bpb:{bpb:.8f}")


if __name__ == "__main__":
    main()
