"""Benchmark: where one training step of the reference submission spends its time on one GPU (h100x1).

Runs the training loop's own step (micro-batches, clipping, MuonEq-R + AdamW, EMA) on random-token
shards at full size, before looping, and prints tokens/s with Muon stacking equal-shaped matrices
(as shipped) and with one matrix per stack (the unstacked optimizer), the GPU time of the
micro-batches vs the rest of the step, and the heaviest kernels of one profiled step.
Usage: python benchmarks/train_step_h100.py --out DIR [--steps 20]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from submission_h100 import T, random_shards  # sys.path[0] is benchmarks/ when run as a script

from harness.atomic import write_text_atomic

VOCAB = 8192


def unstacked(muon: T.Muon) -> None:
    """One matrix per stack: the optimizer as it was before stacking, for the comparison."""
    params = muon.param_groups[0]["params"]
    muon.stacks = [[i] for stack in muon.stacks for i in stack]
    muon.momenta = [torch.zeros(1, *params[i].shape, device=params[i].device) for [i] in muon.stacks]


class Step:
    """The body of train()'s loop on one compiled model, with CUDA events between the micro-batches and the rest."""

    def __init__(self, cfg: T.Config, ctx: T.Dist, files: list[str]):
        torch.manual_seed(0)
        self.cfg, self.ctx = cfg, ctx
        self.model = T.GPT(cfg, VOCAB, "sdpa", ctx.dtype).to(ctx.device)
        self.loss_fn = T.maybe_compile(self.model, cfg, ctx)
        self.loader = T.TrainLoader(files, cfg.train_seq_len, cfg.train_batch_tokens // cfg.train_seq_len // 8, ctx,
                                    0, 0)
        self.marks = [torch.cuda.Event(enable_timing=True) for _ in range(3)]

    def optimizers(self, stacked: bool) -> None:
        self.opt = T.Optimizers(self.model, self.cfg, self.ctx)
        if not stacked:
            unstacked(self.opt.muon)
        self.ema = T.EMA(self.model, self.cfg.ema_decay)

    def __call__(self, step: int) -> None:
        self.marks[0].record()
        T.train_step(self.loss_fn, self.loader, 8, self.ctx)
        self.marks[1].record()
        torch.nn.utils.clip_grad_norm_(self.opt.params, self.cfg.grad_clip, foreach=True)
        self.opt.step(step, 1.0)
        self.ema.update()
        self.marks[2].record()

    def split_ms(self) -> tuple[float, float]:
        torch.cuda.synchronize()
        return self.marks[0].elapsed_time(self.marks[1]), self.marks[1].elapsed_time(self.marks[2])


def measure(step: Step, steps: int) -> dict:
    start = time.perf_counter()
    for i in range(5):
        step(i)
    torch.cuda.synchronize()
    warm = time.perf_counter() - start
    splits, start = [], time.perf_counter()
    for i in range(steps):
        step(5 + i)
        if i % 5 == 4:
            splits.append(step.split_ms())  # a sync every 5 steps, as the loop's logging does
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    return {"tok_per_s": round(steps * step.cfg.train_batch_tokens / elapsed), "ms_per_step": round(elapsed * 1e3 / steps, 1),
            "micro_batches_gpu_ms": round(sum(s[0] for s in splits) / len(splits), 1),
            "clip_optimizer_ema_gpu_ms": round(sum(s[1] for s in splits) / len(splits), 1),
            "compile_and_5_steps_s": round(warm, 1)}


def kernel_table(step: Step, top: int) -> list[dict]:
    """The heaviest CUDA kernels of one step, by total time."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        step(100)
        torch.cuda.synchronize()
    totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            totals[event.name][0] += event.device_time_total / 1e3
            totals[event.name][1] += 1
    whole = sum(t for t, _ in totals.values())
    rows = sorted(totals.items(), key=lambda kv: -kv[1][0])[:top]
    return [{"kernel": name[:90], "ms": round(ms, 2), "calls": calls, "share": round(ms / whole, 3)}
            for name, (ms, calls) in rows] + [{"kernel": "ALL", "ms": round(whole, 1), "calls": sum(c for _, c in totals.values())}]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    data = Path(tempfile.mkdtemp(prefix="pgolf-step-"))
    random_shards(data, 40_000_000, 100_000, VOCAB)
    files = T.shard_files(str(data), "train")
    cfg = T.load_config({"PRESET": "h100x1"})
    ctx = T.setup_dist(cfg)
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    torch._dynamo.config.cache_size_limit = 16  # Newton-Schulz compiles once per stack shape: 5 stacked, 5 single
    step = Step(cfg, ctx, files)
    for name, stacked in (("muon_stacked", True), ("muon_per_matrix", False)):
        step.optimizers(stacked)
        result[name] = measure(step, args.steps)
        print(name, json.dumps(result[name]), flush=True)
        if stacked:
            result["kernels"] = kernel_table(step, 30)
    result["peak_memory_mib"] = torch.cuda.max_memory_allocated() >> 20
    write_text_atomic(args.out / "train_step.json", json.dumps(result, indent=2) + "\n")
    for row in result["kernels"]:
        print(f"{row['ms']:9.2f} ms {row.get('share', 1):6.1%} {row['calls']:6d}  {row['kernel']}")


if __name__ == "__main__":
    main()
