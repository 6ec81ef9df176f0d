"""Benchmark: the reference submission at full size on one GPU (the h100x1 preset), through `pgolf run`.

Made for the device tool (one H100, no network, no FineWeb): it builds an 8,192-piece SentencePiece
model from the demo corpus and challenge-format shards of random tokens, checks that the attention
backends agree on the GPU and times them, then runs `pgolf run --submission submission --nproc 1`
with a short wall-clock budget, so the harness measures training, GPTQ + brotli and evaluation
with score-first TTT on a slice of validation tokens. Prints pgolf's output as it comes (timed), then a
summary read off the phase logs and the verdict; raw files land in --out.
Usage: python benchmarks/submission_h100.py --out DIR [--train-seconds 60] [--val-tokens 1000000] [--probe]
Fits one 600 s device call: 315 s measured with --val-tokens 300000 (compile ≈75 s, brotli 11 ≈2 min).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import sentencepiece as spm
import torch

from harness.atomic import write_text_atomic
from harness.data.demo import read_corpus
from harness.data.shards import write_shard

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "submission"))
import train_gpt as T  # noqa: E402
from attention_h100 import attention_check  # noqa: E402  (sys.path[0] is benchmarks/)


def tokenizer_8192(path: Path) -> None:
    """The challenge's SentencePiece settings at vocabulary 8192, trained on the demo corpus."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([t.replace("\0", " ").strip() for t in read_corpus()]), model_writer=model,
        model_type="bpe", vocab_size=8192, byte_fallback=True, split_digits=True, normalization_rule_name="nmt_nfkc",
        add_dummy_prefix=False, pad_id=0, bos_id=1, eos_id=2, unk_id=3, character_coverage=0.999,
        hard_vocab_limit=False, max_sentence_length=1 << 20, input_sentence_size=0, shuffle_input_sentence=False,
        num_threads=1, minloglevel=2)
    path.write_bytes(model.getvalue())


def random_shards(folder: Path, train_tokens: int, val_tokens: int, vocab: int) -> None:
    rng = np.random.default_rng(0)
    for k, n in enumerate([train_tokens // 2, train_tokens - train_tokens // 2]):
        write_shard(folder / f"fineweb_train_{k:06d}.bin", rng.integers(0, vocab, n, dtype=np.uint16))
    val = rng.integers(4, vocab, val_tokens, dtype=np.uint16)
    val[::2048] = 1  # a BOS now and then, as documents start
    write_shard(folder / "fineweb_val_000000.bin", val)


def summary(seed_dir: Path, wall_s: float) -> dict:
    train = (seed_dir / "train.log").read_text() if (seed_dir / "train.log").exists() else ""
    evaluation = (seed_dir / "eval.log").read_text() if (seed_dir / "eval.log").exists() else ""
    steps = [(int(m[1]), float(m[2]), float(m[3])) for m in
             re.finditer(r"^step:(\d+)/\d+ train_loss:\S+ train_time:(\d+)ms step_avg:\S+ tok/s:(\d+)", train, re.M)]
    loop_at = re.search(r"^layer_loop:enabled step:(\d+)", train, re.M)
    loop_step = int(loop_at[1]) if loop_at else None
    before = [s for s in steps if s[0] > 5 and (loop_step is None or s[0] <= loop_step)]
    after = [s for s in steps if loop_step is not None and s[0] > loop_step + 5]
    rate = lambda rows: round(float(np.median([r[2] for r in rows]))) if rows else None  # noqa: E731
    pick = lambda pattern, text: (m[1] if (m := re.search(pattern, text, re.M)) else None)  # noqa: E731
    out = {"whole_run_wall_s": round(wall_s, 1), "tok_per_s_before_loop_median": rate(before),
           "tok_per_s_after_loop_median": rate(after), "steps": steps[-1][0] if steps else None,
           "loop_enabled_at_step": loop_step,
           "warmup_and_compile_s": pick(r"^warmup:compile and \d+ steps per graph in ([\d.]+)s", train),
           "peak_memory": pick(r"^peak memory allocated: (.*)$", train),
           "model_params": pick(r"^model_params:(\d+)", train),
           "stopping_early": pick(r"^(stopping_early: .*)$", train),
           "hessians": pick(r"^(GPTQ:collected .*)$", train),
           "gptq_quantize_s": pick(r"^GPTQ:quantized in ([\d.]+)s", train),
           "compress_save_s": pick(r"^GPTQ:compressed\+saved in ([\d.]+)s", train),
           "model_bytes": pick(r"^Serialized model quantized\+brotli: (\d+) bytes", train),
           "code_bytes_compressed": pick(r"^Code size \(compressed\): (\d+) bytes", train),
           "total_bytes": pick(r"^Total submission size quantized\+brotli: (\d+) bytes", train),
           "eval_warmup_s": pick(r"^eval:warm-up \(compile, random tokens\) ([\d.]+)s", evaluation),
           "score_line": pick(r"^(quantized_ttt .*)$", evaluation)}
    probe_path = seed_dir / "probe" / "probe.json"
    if probe_path.exists():
        probe = json.loads(probe_path.read_text())
        out["probe"] = probe["facts"] | {"findings": {f["code"]: f["message"] for f in probe["findings"]}}
    verdict_path = seed_dir / "verdict.json"
    if verdict_path.exists():
        verdict = json.loads(verdict_path.read_text())
        out["verdict"] = verdict["status"]
        out["harness"] = verdict["seeds"].get(next(iter(verdict["seeds"]), ""), {})
        out["findings"] = {f["code"]: f["status"] for f in verdict["findings"]}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--train-seconds", type=float, default=60.0)
    parser.add_argument("--val-tokens", type=int, default=1_000_000)
    parser.add_argument("--train-tokens", type=int, default=100_000_000)
    parser.add_argument("--deadline", type=float, default=560.0, help="stop pgolf run after this many seconds")
    parser.add_argument("--probe", action="store_true", help="pgolf run --probe: time the behavioural probes too")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="pgolf-bench-"))
    data = work / "data"
    data.mkdir()
    start = time.perf_counter()
    tokenizer_8192(work / "sp8192_demo.model")
    random_shards(data, args.train_tokens, args.val_tokens, 8192)
    print(f"data: {args.train_tokens:,} train / {args.val_tokens:,} val random tokens, 8192-piece tokenizer "
          f"({time.perf_counter() - start:.1f}s)", flush=True)

    check = attention_check()
    print("attention:", json.dumps(check), flush=True)
    write_text_atomic(args.out / "attention.json", json.dumps(check, indent=2) + "\n")

    reserve = 12.0
    env = {**os.environ, "PRESET": "h100x1", "MAX_WALLCLOCK_SECONDS": str(args.train_seconds + reserve),
           "GPTQ_RESERVE_SECONDS": str(reserve), "WARMUP_STEPS": "3", "TRAIN_LOG_EVERY": "5", "HOLDOUT_EVERY": "0"}
    cmd = [sys.executable, "-m", "harness", "run", "--submission", str(REPO / "submission"), "--nproc", "1",
           "--seeds", "1", "--data", str(data), "--tokenizer", str(work / "sp8192_demo.model"),
           "--out", str(work / "run")] + (["--probe"] if args.probe else [])
    start = time.perf_counter()
    # printed as it comes, so that a call cut short by the device's own limit still shows how far it got
    with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as run:
        def stop() -> None:  # at the deadline: Ctrl-C (pgolf stops its jobs and says so), then kill
            print(f"pgolf run passed the {args.deadline:g} s deadline: interrupting it", flush=True)
            run.send_signal(signal.SIGINT)
            killer = threading.Timer(30.0, run.kill)
            killer.daemon = True  # once pgolf has exited, this script need not wait the 30 s out
            killer.start()

        deadline = threading.Timer(args.deadline, stop)
        deadline.start()
        for line in run.stdout:
            print(f"[{time.perf_counter() - start:6.1f}s] {line}", end="", flush=True)
        deadline.cancel()
    wall = time.perf_counter() - start
    seed_dir = work / "run" / "seed_1"
    for name in ("train.log", "eval.log", "verdict.json"):
        if (seed_dir / name).exists():
            shutil.copy(seed_dir / name, args.out / name)
    result = summary(seed_dir, wall) | {"attention": check}
    write_text_atomic(args.out / "summary.json", json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("findings", "attention")}, indent=2))


if __name__ == "__main__":
    main()
