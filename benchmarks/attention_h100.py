"""Benchmark: the attention kernels the reference submission can use, at the records' shape, on one GPU.

For each SDPA backend, and FlashAttention 4 (`flash_attn.cute`) where it is importable: max |difference|
to the submission's plain path, forward+backward milliseconds, and whether two backward passes give
the same gradient to the bit (flash and FA4 also in the mode of the evaluation's TTT backward passes:
deterministic algorithms, warn-only off / FA4's own deterministic backward). FA4 compiles its kernels
on first use: that time is reported apart (it would count in a phase's start-up).
Usage: python benchmarks/attention_h100.py --out DIR [--batch 48]   (48 sequences = one h100x1 micro-batch)
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import torch

from harness.atomic import write_text_atomic

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "submission"))
import train_gpt as T  # noqa: E402

try:
    from flash_attn.cute import flash_attn_func as fa4_func
except Exception:  # noqa: BLE001 -- not installed, or its CUDA libraries do not load: train_gpt kept the reason
    fa4_func = None
FA4_MISSING = "" if fa4_func else T.FA4_IMPORT_ERROR or "flash_attn.cute imports, but not its flash_attn_func"


def timed(step, repeats: int = 20) -> float:
    """Mean milliseconds of step() over `repeats` calls, after one untimed call."""
    step()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        step()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / repeats


def attention_check(batch: int = 8) -> dict:
    """One row of numbers per kernel, keyed by its name; an unavailable kernel says why instead of a time."""
    gen = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(batch, 2048, 8, 64, device="cuda", dtype=torch.bfloat16, generator=gen)
    k, v = (torch.randn(batch, 2048, 4, 64, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(2))
    plain = T.attention(q[:2], k[:2], v[:2], "plain").float()
    out = {"batch": batch, "max_abs_diff_sdpa_vs_plain":
           float((T.attention(q[:2], k[:2], v[:2], "sdpa").float() - plain).abs().max()),
           "plain_abs_mean": float(plain.abs().mean()), "fa3_available": T.flash_attn_3 is not None,
           "fa4_available": fa4_func is not None or FA4_MISSING}
    cases = [("CUDNN_ATTENTION", False), ("FLASH_ATTENTION", False), ("EFFICIENT_ATTENTION", False),
             ("FLASH_ATTENTION", True)]
    for name, deterministic in cases:
        backend = getattr(torch.nn.attention.SDPBackend, name)

        def sdpa(q, k, v, backend=backend):
            with torch.nn.attention.sdpa_kernel(backend):
                return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)

        mode = T.deterministic_algorithms(warn_only=False) if deterministic else contextlib.nullcontext()
        out |= measure(name + ("_deterministic" if deterministic else ""),
                       grad_step(sdpa, *(t.transpose(1, 2) for t in (q, k, v))), mode)
    if fa4_func is not None:
        out |= fa4_rows(q, k, v, plain)
    return out


def grad_step(attend, q, k, v):
    """A step for measure(): forward + backward of attend on leaf copies of q, k, v; returns q's gradient."""
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))

    def step() -> torch.Tensor:
        q.grad = None
        y = attend(q, k, v)
        (y[0] if isinstance(y, tuple) else y).sum().backward()  # FA4 may return (out, lse)
        return q.grad

    return step


def measure(key: str, step, mode) -> dict:
    try:
        with mode:
            repeatable = bool(torch.equal(step().clone(), step()))
            return {f"{key}_backward_bitwise_repeatable": repeatable, f"{key}_fwd_bwd_ms": timed(step)}
    except RuntimeError as exc:
        return {f"{key}_fwd_bwd_ms": f"unavailable: {str(exc).splitlines()[0][:120]}"}


def fa4_rows(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plain: torch.Tensor) -> dict:
    """FA4 takes (B, T, H, D) like FA3 and handles GQA itself; its first call per configuration compiles."""
    rows = {}
    start = time.perf_counter()
    first = fa4_func(q[:2], k[:2], v[:2], causal=True)
    first = first[0] if isinstance(first, tuple) else first
    torch.cuda.synchronize()
    rows["FA4_forward_first_call_s"] = round(time.perf_counter() - start, 2)
    rows["max_abs_diff_fa4_vs_plain"] = float((first.float() - plain).abs().max())
    for deterministic in (False, True):
        key = "FA4" + ("_deterministic" if deterministic else "")
        fa4_step = grad_step(lambda q, k, v, d=deterministic: fa4_func(q, k, v, causal=True, deterministic=d), q, k, v)
        start = time.perf_counter()
        try:
            fa4_step()
            torch.cuda.synchronize()
        except Exception as exc:  # a configuration FA4 does not build on this GPU
            rows[f"{key}_fwd_bwd_ms"] = f"unavailable: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
            continue
        rows[f"{key}_first_fwd_bwd_s"] = round(time.perf_counter() - start, 2)
        rows |= measure(key, fa4_step, contextlib.nullcontext())
    if T.fa4_forward is not None:  # the same kernels through the submission's op (ATTN_BACKEND=fa4), compiled
        op = torch.compile(T.attention, fullgraph=True, dynamic=False)
        rows["max_abs_diff_fa4_op_vs_plain"] = float((op(q[:2], k[:2], v[:2], "fa4").float() - plain).abs().max())
        rows |= measure("FA4_op_compiled", grad_step(lambda q, k, v: op(q, k, v, "fa4"), q, k, v),
                        contextlib.nullcontext())
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--batch", type=int, default=48, help="sequences of 2,048 tokens (48: one h100x1 micro-batch)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__} | attention_check(args.batch)
    write_text_atomic(args.out / "attention.json", json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
