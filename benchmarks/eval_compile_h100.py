"""Benchmark: how long the reference submission's evaluation graphs take to compile, whole or by region.

Every eval job of submission/ compiles its graphs before it scores (`warm_up_eval`: sliding-window logits,
and the score-first TTT step's forward and backward) — and a behavioural probe run (issue 17) is one more
eval job, so that start-up is nearly all of a probe's cost. This measures, each in a fresh process with
empty Inductor and Triton caches, on the full-size model (PRESET, default h100x1, looped, random weights,
no data), the submission's two settings of EVAL_COMPILE:
- `whole`: `torch.compile` of `tail_logits` and of the model (17 virtual layers unrolled into each graph);
- `regions` (the default): each Block compiled on its own, the eleven sharing their code (one graph per kind
  of block and grad mode), and the output head (logits, and logits + loss) compiled on its own.
For each: the warm-up seconds, how many graphs Dynamo compiled by then and after the timing (a recompile
in between would show), and the steady-state seconds of a scoring batch (eval_batch_seqs windows) and of a
TTT step (forward + backward), median of 5; under the deterministic settings the evaluation runs with.
Usage: python benchmarks/eval_compile_h100.py [--mode whole|regions] [--preset h100x1]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def measure(mode: str, preset: str) -> dict:
    import torch

    sys.path.insert(0, str(REPO / "submission"))
    import train_gpt as T

    torch._dynamo.config.cache_size_limit = 64  # a limit hit would fall back to eager silently
    with T.deterministic_algorithms():  # the whole measurement, as run_eval compiles and scores in this mode
        return measure_in_mode(T, mode, preset)


def measure_in_mode(T, mode: str, preset: str) -> dict:
    import torch

    cfg = T.load_config({"PRESET": preset, "COMPILE": "1", "EVAL_COMPILE": mode})
    ctx = T.setup_dist(cfg)
    vocab = 8192
    model = T.GPT(cfg, vocab, T.pick_attention_backend(cfg.attn_backend, ctx.device), ctx.dtype).to(ctx.device)
    model.looping = cfg.num_loops > 0
    tail_fn, loss_fn = T.eval_functions(model, cfg, ctx)
    params = list(model.parameters())
    for p in params:
        p.grad = torch.zeros_like(p)

    def sync():
        if ctx.cuda:
            torch.cuda.synchronize()

    start = time.perf_counter()
    strict = T.warm_up_eval(tail_fn, loss_fn, params, cfg, ctx, vocab, 1 << 30)
    sync()
    warm_up_s = time.perf_counter() - start
    rand = lambda *shape: torch.randint(0, vocab, shape, device=ctx.device)  # noqa: E731
    windows = rand(cfg.eval_batch_seqs, cfg.eval_seq_len)
    pair = rand(cfg.ttt_batch_seqs, cfg.eval_seq_len), rand(cfg.ttt_batch_seqs, cfg.eval_seq_len)  # not aliased

    def timed(fn) -> float:
        times = []
        for _ in range(6):
            sync()
            t = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - t)
        return statistics.median(times[1:])

    def score():
        with torch.no_grad(), ctx.autocast():
            tail_fn(windows, cfg.eval_stride)

    def ttt_step():
        with ctx.autocast():
            loss = loss_fn(*pair, "sum")
        with T.deterministic_algorithms(warn_only=False) if strict else contextlib.nullcontext():  # as in TTT
            loss.backward()

    graphs = lambda: int(torch._dynamo.utils.counters["stats"]["unique_graphs"])  # noqa: E731
    after_warm_up = graphs()
    return {"mode": mode, "preset": preset, "device": str(ctx.device), "torch": torch.__version__,
            "warm_up_s": round(warm_up_s, 2), "ttt_backward_strict": strict, "graphs": after_warm_up,
            "score_batch_s": round(timed(score), 5),
            "ttt_step_s": round(timed(ttt_step), 5), "graphs_after_timing": graphs(),
            "score_batch_windows": cfg.eval_batch_seqs,
            "ttt_batch_seqs": cfg.ttt_batch_seqs, "seq_len": cfg.eval_seq_len}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("whole", "regions"))
    parser.add_argument("--preset", default="h100x1")
    parser.add_argument("--timeout", type=float, default=240.0, help="seconds each mode may take")
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(measure(args.mode, args.preset)), flush=True)
        return
    for mode in ("regions", "whole"):
        with tempfile.TemporaryDirectory(prefix="pgolf-compile-") as caches:
            env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": f"{caches}/inductor", "TRITON_CACHE_DIR": f"{caches}/triton"}
            started = time.perf_counter()
            try:
                done = subprocess.run([sys.executable, __file__, "--mode", mode, "--preset", args.preset], env=env,
                                      capture_output=True, text=True, timeout=args.timeout)
                line = done.stdout.strip().splitlines()[-1] if done.returncode == 0 else done.stderr[-1500:]
            except subprocess.TimeoutExpired:
                line = f"{mode}: past {args.timeout:g} s"
            print(f"{line}  (process {time.perf_counter() - started:.1f} s)", flush=True)


if __name__ == "__main__":
    main()
