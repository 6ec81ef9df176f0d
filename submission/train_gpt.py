"""pgolf's reference submission: the strongest legal Parameter Golf stack, written from its description.

One file in the records' style. Under `torchrun` with PGOLF_PHASE unset it trains, quantizes and
evaluates in one process and prints the records' log lines. Under `pgolf run` it speaks the phase
protocol (schemas/protocol.md): PGOLF_PHASE=train reads only training shards and leaves the
artifact, PGOLF_PHASE=eval reloads it and reports every NLL, so the harness measures what this file
also prints. Every hyper-parameter is an environment variable; PRESET (full | h100x1 | cpu-tiny)
chooses their defaults.

Sections: config -> data -> model -> optimizer -> training -> GPTQ/serialize -> eval/TTT -> main.
"""
from __future__ import annotations

import base64
import contextlib
import copy
import glob
import io
import lzma
import math
import os
import sys
import tempfile
import time
import weakref
from bisect import bisect_right
from collections import deque
from dataclasses import dataclass, fields, replace

import brotli
import numpy as np
import sentencepiece as spm
import torch
import torch.distributed as dist
import torch.distributed.nn  # noqa: F401 -- imported before init_process_group: see teardown()
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from pgolf_events import Events


def import_failure(exc: Exception) -> str:
    """Why an optional kernel package did not import, in one line: the error that asks for it says so."""
    lines = str(exc).splitlines()
    return f"{type(exc).__name__}: {lines[0][:200] if lines else ''}"


try:  # the FlashAttention-3 Hopper build; PyPI also has an empty placeholder of this name
    from flash_attn_interface import flash_attn_func as flash_attn_3
    FA3_IMPORT_ERROR = ""
except Exception as exc:  # noqa: BLE001 -- any failure to import means: not available
    flash_attn_3, FA3_IMPORT_ERROR = None, import_failure(exc)
try:  # FlashAttention 4 (package flash-attn-4): its CuTe kernels, wrapped below as one op torch.compile can trace
    from flash_attn.cute.interface import _flash_attn_bwd as fa4_backward, _flash_attn_fwd as fa4_forward
    FA4_IMPORT_ERROR = ""
except Exception as exc:  # noqa: BLE001
    fa4_forward = fa4_backward = None
    FA4_IMPORT_ERROR = import_failure(exc)


# ----------------------------------------------------------------------------------------------
# Config and presets


@dataclass(frozen=True)
class Config:
    """Defaults are the record configuration (`full`); each field is also the env var of its upper-cased name."""

    preset: str = "full"
    data_path: str = "./data/datasets/fineweb10B_sp8192"
    tokenizer_path: str = ""
    artifact_dir: str = "."
    seed: int = 1337
    # model
    num_layers: int = 11
    model_dim: int = 512
    num_heads: int = 8
    num_kv_heads: int = 4
    mlp_mult: int = 4
    rope_dims: int = 16
    rope_base: float = 10000.0
    qk_gain_init: float = 5.25
    logit_softcap: float = 30.0
    embed_init_std: float = 0.005
    xsa: bool = True            # exclusive self-attention on every layer
    attn_gate: bool = True      # headwise sigmoid gate from one extra query logit per head
    loop_start: int = 3         # depth recurrence repeats layers loop_start..loop_end
    loop_end: int = 5
    num_loops: int = 2          # extra passes through them; 0 switches recurrence off
    loop_at: float = 0.35       # fraction of the training budget after which the loop is on
    parallel_from: int = 7      # layers from here on add attention and MLP in parallel
    attn_backend: str = "auto"  # auto | fa3 | fa4 | sdpa | plain
    compile: str = "auto"       # auto (on CUDA) | 1 | 0
    eval_compile: str = "regions"  # regions: each block and the head on their own | whole: one graph per function
    device: str = "auto"        # auto (CUDA when available) | cuda | cpu
    # training
    train_seq_len: int = 2048
    train_batch_tokens: int = 786432
    grad_accum_steps: int = 0   # 0: 8 // world_size
    iterations: int = 20000
    max_wallclock_seconds: float = 600.0
    gptq_reserve_seconds: float = 12.0
    warmdown_frac: float = 0.72
    warmup_steps: int = 20      # compile warm-up steps (then again with the loop on), rolled back
    matrix_lr: float = 0.022
    muon_momentum: float = 0.99
    muon_momentum_start: float = 0.92
    muon_momentum_warmup_steps: int = 1500
    muon_wd: float = 0.095
    ns_steps: int = 5
    embed_lr: float = 0.03
    embed_wd: float = 0.085
    scalar_lr: float = 0.02
    scalar_wd: float = 0.02
    beta1: float = 0.9
    beta2: float = 0.95
    adam_eps: float = 1e-8
    grad_clip: float = 0.3
    ema_decay: float = 0.9965
    loader: str = "mixed"       # mixed: every batch from all shards | shard: batches from one shard at a time
    holdout_tokens: int = 262144  # tail of the training stream kept out of training, for monitoring
    holdout_every: int = 1000
    train_log_every: int = 100
    # quantization and artifact
    quant_bits: int = 6
    quant_clip_k: float = 12.85
    embed_bits: int = 7
    embed_clip_k: float = 15.0
    quant_min_numel: int = 65536  # tensors this small or smaller are stored as fp16
    gptq_damp: float = 0.01
    gptq_block: int = 128
    gptq_calib_seqs: int = 64
    brotli_quality: int = 11
    # evaluation
    eval_seq_len: int = 2048
    eval_stride: int = 64
    eval_batch_seqs: int = 32
    ttt_enabled: bool = True
    ttt_chunk_tokens: int = 32768
    ttt_lr: float = 0.005
    ttt_momentum: float = 0.9
    ttt_epochs: int = 3
    ttt_grad_clip: float = 1.0
    ttt_batch_seqs: int = 16     # a 32,768-token chunk is 16 sequences: one step per epoch


PRESETS: dict[str, dict] = {
    "full": {},
    "h100x1": {"grad_accum_steps": 8, "attn_gate": False},  # the gate costs in one-GPU runs: docs/benchmarks.md
    "cpu-tiny": dict(
        num_layers=6, model_dim=64, num_heads=4, num_kv_heads=2, rope_dims=4, loop_start=2, loop_end=3, num_loops=1,
        parallel_from=4, train_seq_len=128, train_batch_tokens=2048, grad_accum_steps=1, max_wallclock_seconds=12.0,
        gptq_reserve_seconds=2.0, warmup_steps=0, muon_momentum_warmup_steps=50, ema_decay=0.9,
        holdout_tokens=8192, holdout_every=50, train_log_every=5, quant_min_numel=1024, gptq_calib_seqs=16,
        eval_seq_len=128, eval_stride=64, eval_batch_seqs=32, ttt_chunk_tokens=8192, ttt_epochs=1, ttt_batch_seqs=16,
        device="cpu"),
}

# The fields that shape the network: stored in the artifact so evaluation rebuilds the same model.
ARCH_FIELDS = ("num_layers", "model_dim", "num_heads", "num_kv_heads", "mlp_mult", "rope_dims", "rope_base",
               "logit_softcap", "xsa", "attn_gate", "loop_start", "loop_end", "num_loops", "parallel_from")


def _parse(name: str, raw: str, kind: type):
    try:
        if kind is bool:
            if raw.strip().lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise ValueError
            return raw.strip().lower() in ("1", "true", "yes", "on")
        return kind(raw)
    except ValueError:
        raise SystemExit(f"train_gpt.py: {name.upper()}={raw!r} is not a valid {kind.__name__}") from None


def load_config(env=os.environ) -> Config:
    """Preset defaults (PRESET, else full on CUDA and cpu-tiny elsewhere), then one env var per field."""
    preset = env.get("PRESET") or ("full" if torch.cuda.is_available() else "cpu-tiny")
    if preset not in PRESETS:
        raise SystemExit(f"train_gpt.py: PRESET={preset!r} is not one of {', '.join(PRESETS)}")
    values = {"preset": preset, **PRESETS[preset]}
    for f in fields(Config):
        raw = env.get(f.name.upper())
        if raw is not None and f.name != "preset":
            values[f.name] = _parse(f.name, raw, type(f.default))
    return Config(**values)


# ----------------------------------------------------------------------------------------------
# Distributed context and data


@dataclass(frozen=True)
class Dist:
    """This rank's place in the job; collectives are no-ops in a single process."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def all_reduce(self, tensor: torch.Tensor, op=dist.ReduceOp.SUM) -> None:
        if self.world > 1:
            dist.all_reduce(tensor, op=op)

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    @property
    def dtype(self) -> torch.dtype:
        """Matrix products and the residual stream run in bf16 on the GPU; the weights stay fp32."""
        return torch.bfloat16 if self.cuda else torch.float32

    def autocast(self):
        return torch.autocast("cuda", dtype=self.dtype) if self.cuda else contextlib.nullcontext()


def setup_dist(cfg: Config) -> Dist:
    world, rank, local = (int(os.environ.get(k, d)) for k, d in (("WORLD_SIZE", 1), ("RANK", 0), ("LOCAL_RANK", 0)))
    if cfg.device not in ("auto", "cuda", "cpu"):
        raise SystemExit(f"train_gpt.py: DEVICE={cfg.device!r} is not one of auto, cuda, cpu")
    if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        if local >= torch.cuda.device_count():
            raise SystemExit(f"train_gpt.py: local rank {local} has no GPU ({torch.cuda.device_count()} visible); "
                             "start fewer ranks or set DEVICE=cpu")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    else:
        device = torch.device("cpu")
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", world))))
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(rank, world, local, device)


def teardown(ctx: Dist) -> None:
    """Leave the process group so that the process can exit cleanly (docs/teardown-abort.md).

    destroy_process_group() frees the group only if nothing else holds it; otherwise the group and its
    worker threads live on into interpreter shutdown, where a gloo worker that drops a finished
    collective's tensors needs the GIL and is ended by a forced unwind C++ cannot pass: SIGABRT,
    "terminate called without an active exception", at random, after the work is done.
    torch.distributed.nn.functional holds the group when first imported after init (its defaults
    `group=group.WORLD` are evaluated then) and the first optimizer imports it (through torch._dynamo),
    so it is imported at the top, before init. Should anything else hold the group, the process leaves
    without interpreter shutdown, its output flushed.
    """
    if ctx.world == 1:
        return
    ctx.barrier()  # no rank tears the group down while another still talks to it
    world = weakref.ref(dist.group.WORLD)
    dist.destroy_process_group()
    if world() is not None:
        print("train_gpt.py: the process group outlived destroy_process_group; exiting without interpreter "
              "shutdown", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(0)


def read_shard(path: str) -> np.ndarray:
    """A challenge shard (1,024-byte header: magic 20240520, version 1, count; then uint16 ids), memory-mapped."""
    header = np.fromfile(path, dtype="<i4", count=256)
    if len(header) < 256 or header[0] != 20240520 or header[1] != 1:
        raise SystemExit(f"train_gpt.py: {path} is not a challenge shard (bad header)")
    count = int(header[2])
    if os.path.getsize(path) != 1024 + 2 * count:
        raise SystemExit(f"train_gpt.py: {path} holds {os.path.getsize(path)} bytes, its header promises {count} tokens")
    return np.memmap(path, dtype="<u2", mode="r", offset=1024, shape=(count,))


def shard_files(data_path: str, split: str) -> list[str]:
    files = sorted(glob.glob(os.path.join(data_path, f"fineweb_{split}_[0-9]*.bin")))
    if not files:
        raise SystemExit(f"train_gpt.py: no fineweb_{split}_*.bin shards in DATA_PATH={data_path}")
    return files


class TrainLoader:
    """Training sequences, each epoch in a fresh random order.

    `shard` plans one shard at a time (a random phase offset, then its sequence starts in random
    order), so consecutive batches come from the same shard. `mixed` plans every sequence of every
    shard (each shard with its own phase) in one random order, so each batch samples all shards: the
    distribution of the #1493 loader, which matters when shards differ in content. Every rank draws
    the same plan from the same seed and takes its own slice of each batch, so the ranks never read
    the same sequence. The last `holdout` tokens of the stream are never served: they monitor the
    loss on text the model has not trained on.
    """

    def __init__(self, files: list[str], seq_len: int, seqs_per_rank: int, ctx: Dist, seed: int, holdout: int,
                 mode: str = "mixed"):
        if mode not in ("shard", "mixed"):
            raise SystemExit(f"train_gpt.py: LOADER={mode!r} is not one of shard, mixed")
        self.shards = [read_shard(f) for f in files]
        self.holdout = np.asarray(self.shards[-1][len(self.shards[-1]) - holdout:]) if holdout else np.empty(0, np.uint16)
        self.shards[-1] = self.shards[-1][:len(self.shards[-1]) - holdout]
        self.seq_len, self.per_rank, self.ctx, self.mixed = seq_len, seqs_per_rank, ctx, mode == "mixed"
        biggest = (sum if self.mixed else max)((len(s) - 1) // seq_len for s in self.shards)
        if biggest <= seqs_per_rank * ctx.world:
            raise SystemExit(f"train_gpt.py: the training shards are too small for batches of {seqs_per_rank * ctx.world} "
                             f"sequences of {seq_len} tokens")
        self.rng = np.random.default_rng(seed)
        self.order: list[int] = []
        self.sources, self.starts, self.cursor = np.empty(0, np.int64), np.empty(0, np.int64), 0

    def _plan(self) -> None:
        if self.mixed:
            planned = range(len(self.shards))
        else:
            if not self.order:
                self.order = [int(i) for i in self.rng.permutation(len(self.shards))]
            planned = [self.order.pop()]
        sources, starts = [], []
        for i in planned:
            offset = int(self.rng.integers(self.seq_len))
            count = (len(self.shards[i]) - offset - 1) // self.seq_len
            sources.append(np.full(count, i))
            starts.append(offset + self.seq_len * np.arange(count))
        order = self.rng.permutation(sum(map(len, starts)))
        self.sources, self.starts, self.cursor = np.concatenate(sources)[order], np.concatenate(starts)[order], 0

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        need = self.per_rank * self.ctx.world
        while len(self.starts) - self.cursor < need:
            self._plan()
        lo = self.cursor + self.ctx.rank * self.per_rank
        mine = zip(self.sources[lo:lo + self.per_rank], self.starts[lo:lo + self.per_rank])
        self.cursor += need
        batch = torch.from_numpy(np.stack([self.shards[i][s:s + self.seq_len + 1] for i, s in mine]).astype(np.int64))
        if self.ctx.cuda:
            batch = batch.pin_memory().to(self.ctx.device, non_blocking=True)
        return batch[:, :-1], batch[:, 1:]


def byte_table(sp: spm.SentencePieceProcessor, vocab: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bytes per token as the challenge counts them: a piece's UTF-8 bytes without its leading "▁", plus one
    for that space unless the previous token is a boundary (control/unknown/unused); byte pieces are 1."""
    base, space, boundary = np.zeros(vocab, np.int64), np.zeros(vocab, bool), np.ones(vocab, bool)
    for i in range(sp.vocab_size()):
        if sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i):
            continue
        boundary[i] = False
        if sp.is_byte(i):
            base[i] = 1
            continue
        piece = sp.id_to_piece(i)
        space[i] = piece.startswith("\u2581")
        base[i] = len((piece[1:] if space[i] else piece).encode("utf-8"))
    return base, space, boundary


def count_bytes(tokens: np.ndarray, lo: int, hi: int, table, sidecar: np.ndarray | None) -> int:
    """Bytes of the targets at stream positions [lo, hi): a byte sidecar when the data ships one."""
    if sidecar is not None:
        return int(sidecar[lo:hi].sum(dtype=np.int64))
    base, space, boundary = table
    y, x = tokens[lo:hi], tokens[lo - 1:hi - 1]
    return int(base[y].sum() + (space[y] & ~boundary[x]).sum())


# ----------------------------------------------------------------------------------------------
# Model


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(x, (x.size(-1),))


class RMSNorm(nn.Module):
    """Parameter-free; a module so GPTQ can hook the input of the tied output embedding."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x)


def pick_attention_backend(requested: str, device: torch.device) -> str:
    if requested == "auto":
        if device.type == "cuda":
            return "fa3" if flash_attn_3 is not None else "sdpa"
        return "plain"
    if requested == "fa3" and flash_attn_3 is None:
        raise SystemExit("train_gpt.py: ATTN_BACKEND=fa3 but flash_attn_interface.flash_attn_func is not importable: "
                         + FA3_IMPORT_ERROR)
    if requested == "fa4" and fa4_forward is None:
        raise SystemExit("train_gpt.py: ATTN_BACKEND=fa4 but flash_attn.cute (package flash-attn-4) is not importable: "
                         + FA4_IMPORT_ERROR)
    if requested not in ("fa3", "fa4", "sdpa", "plain"):
        raise SystemExit(f"train_gpt.py: ATTN_BACKEND={requested!r} is not one of auto, fa3, fa4, sdpa, plain")
    return requested


# On CUDA the cuDNN kernel is the fastest for this shape with native GQA; the others are fallbacks. Its
# backward is not deterministic, so where gradients must be (the evaluation's TTT) flash attention comes first,
# whose backward is deterministic without warn-only (deterministic_algorithms); FA3 is asked for its own.
CUDA_SDPA_ORDER = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                   SDPBackend.MATH]
DETERMINISTIC_GRAD_ORDER = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


# Schemas spelled out: the minified form the records count drops annotations, from which torch would infer them.
@torch.library.custom_op("pgolf_submission::fa4_causal", mutates_args=(),
                         schema="(Tensor q, Tensor k, Tensor v, bool deterministic) -> (Tensor, Tensor)")
def fa4_causal(q, k, v, deterministic):
    """Causal GQA attention by FA4, (B, T, H, D); also returns the log-sum-exp its backward needs."""
    out, lse = fa4_forward(q, k, v, causal=True, return_lse=True)[:2]
    return out.contiguous(), lse.contiguous()


@fa4_causal.register_fake
def _(q, k, v, deterministic):
    return q.new_empty(q.shape), q.new_empty((q.size(0), q.size(2), q.size(1)), dtype=torch.float32)


@torch.library.custom_op("pgolf_submission::fa4_causal_backward", mutates_args=(), schema="(Tensor dout, Tensor q, "
                         "Tensor k, Tensor v, Tensor out, Tensor lse, bool deterministic) -> (Tensor, Tensor, Tensor)")
def fa4_causal_backward(dout, q, k, v, out, lse, deterministic):
    grads = fa4_backward(q, k, v, out, dout.contiguous(), lse, causal=True, deterministic=deterministic)[:3]
    return tuple(g.contiguous() for g in grads)


@fa4_causal_backward.register_fake
def _(dout, q, k, v, out, lse, deterministic):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _fa4_save(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:3], *output)
    ctx.deterministic = inputs[3]
    ctx.set_materialize_grads(False)  # the log-sum-exp is never differentiated: no zero gradient for it


def _fa4_grad(ctx, dout, dlse):
    return *fa4_causal_backward(dout, *ctx.saved_tensors, ctx.deterministic), None


fa4_causal.register_autograd(_fa4_grad, setup_context=_fa4_save)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str) -> torch.Tensor:
    """Causal grouped-query attention; q (B, T, H, D), k and v (B, T, KV, D) -> (B, T, H, D)."""
    deterministic = torch.is_grad_enabled() and torch.are_deterministic_algorithms_enabled()  # a TTT step in eval
    if backend == "fa3":
        out = flash_attn_3(q, k, v, causal=True, **({"deterministic": True} if deterministic else {}))
        return out[0] if isinstance(out, tuple) else out
    if backend == "fa4":
        return fa4_causal(q, k, v, deterministic)[0]
    if backend == "sdpa":
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if q.is_cuda:
            with sdpa_kernel(DETERMINISTIC_GRAD_ORDER if deterministic else CUDA_SDPA_ORDER, set_priority=True):
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        return y.transpose(1, 2)
    group = q.size(2) // k.size(2)
    q = q.transpose(1, 2)
    k, v = (t.transpose(1, 2).repeat_interleave(group, 1) for t in (k, v))
    scores = (q @ k.transpose(-1, -2)).float() / math.sqrt(q.size(-1))
    future = torch.ones(q.size(2), k.size(2), dtype=torch.bool, device=q.device).triu(1)
    probs = scores.masked_fill_(future, float("-inf")).softmax(-1).to(v.dtype)
    return (probs @ v).transpose(1, 2)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first 2·cos.size(-1) dims of every head; the rest pass through (partial RoPE)."""
    r = 2 * cos.size(-1)
    x1, x2, rest = x[..., :r // 2], x[..., r // 2:r], x[..., r:]
    cos, sin = cos[None, :, None, :].to(x.dtype), sin[None, :, None, :].to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos, rest), dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: Config, backend: str):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.model_dim // cfg.num_heads
        self.xsa, self.gated, self.backend = cfg.xsa, cfg.attn_gate, backend
        width = self.heads * self.head_dim
        self.q = nn.Linear(cfg.model_dim, width + (self.heads if self.gated else 0), bias=False)
        self.k = nn.Linear(cfg.model_dim, self.kv_heads * self.head_dim, bias=False)
        self.v = nn.Linear(cfg.model_dim, self.kv_heads * self.head_dim, bias=False)
        self.o = nn.Linear(width, cfg.model_dim, bias=False)
        self.q_gain = nn.Parameter(torch.full((self.heads,), cfg.qk_gain_init))

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        h, kv, d = self.heads, self.kv_heads, self.head_dim
        q = self.q(x)
        if self.gated:
            q, gate = q.split([h * d, h], dim=-1)
        v = self.v(x).view(b, t, kv, d)
        q = apply_rope(rms_norm(q.view(b, t, h, d)), cos, sin) * self.q_gain[:, None].to(v.dtype)
        k = apply_rope(rms_norm(self.k(x).view(b, t, kv, d)), cos, sin)
        y = attention(q.to(v.dtype), k.to(v.dtype), v, self.backend).view(b, t, kv, h // kv, d)
        if self.xsa:  # drop each head's component along its own position's value direction
            unit = F.normalize(v, dim=-1)[:, :, :, None, :]
            y = y - (y * unit).sum(-1, keepdim=True) * unit
        if self.gated:
            y = y * torch.sigmoid(gate).view(b, t, kv, h // kv, 1).to(y.dtype)
        return self.o(y.reshape(b, t, h * d))


class MLP(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.up = nn.Linear(cfg.model_dim, cfg.mlp_mult * cfg.model_dim, bias=False)
        self.down = nn.Linear(cfg.mlp_mult * cfg.model_dim, cfg.model_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.leaky_relu(self.up(x), 0.5).square())


class Block(nn.Module):
    """Pre-norm block on a learned mix of the stream and the embedding; norms scaled by 1/sqrt(layer+1)."""

    def __init__(self, cfg: Config, layer: int, backend: str):
        super().__init__()
        self.attn, self.mlp = Attention(cfg, backend), MLP(cfg)
        self.attn_scale = nn.Parameter(torch.ones(cfg.model_dim))
        self.mlp_scale = nn.Parameter(torch.ones(cfg.model_dim))
        self.resid_mix = nn.Parameter(torch.stack([torch.ones(cfg.model_dim), torch.zeros(cfg.model_dim)]))
        # a buffer, not a float attribute, so that compiled on its own every block shares one graph
        self.register_buffer("norm_scale", torch.tensor(1.0 / math.sqrt(layer + 1)), persistent=False)
        self.parallel = layer >= cfg.parallel_from

    def forward(self, x, x0, cos, sin):
        mix = self.resid_mix.to(x.dtype)  # vectors cast to the stream's dtype keep the stream in it
        x = mix[0] * x + mix[1] * x0
        h = rms_norm(x) * self.norm_scale
        x = x + self.attn_scale.to(x.dtype) * self.attn(h, cos, sin)
        if not self.parallel:
            h = rms_norm(x) * self.norm_scale
        return x + self.mlp_scale.to(x.dtype) * self.mlp(h)


def softcapped_logits(h: torch.Tensor, embedding: torch.Tensor, cap: float) -> torch.Tensor:
    """Tied output head, in float32, squashed into (-cap, cap)."""
    return cap * torch.tanh(F.linear(h, embedding).float() / cap)


def layer_plan(cfg: Config, looping: bool) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(encoder, decoder) order of physical layers; looping repeats loop_start..loop_end num_loops more times."""
    looped = range(cfg.loop_start, cfg.loop_end + 1)
    order = [*range(cfg.loop_start), *list(looped) * (1 + (cfg.num_loops if looping else 0)),
             *range(cfg.loop_end + 1, cfg.num_layers)]
    half = len(order) // 2
    return tuple(order[:half]), tuple(order[half:])


class GPT(nn.Module):
    def __init__(self, cfg: Config, vocab: int, backend: str = "plain", dtype: torch.dtype = torch.float32):
        super().__init__()
        self.cfg, self.vocab, self.dtype = cfg, vocab, dtype
        self.tok_emb = nn.Embedding(vocab, cfg.model_dim)
        self.blocks = nn.ModuleList(Block(cfg, i, backend) for i in range(cfg.num_layers))
        self.final_norm = RMSNorm()
        self.plans = (layer_plan(cfg, False), layer_plan(cfg, cfg.num_loops > 0))
        skips = max(len(self.plans[0][0]), len(self.plans[1][0]))
        self.skip_weights = nn.Parameter(torch.ones(skips, cfg.model_dim))
        self.skip_gates = nn.Parameter(torch.zeros(skips, cfg.model_dim))  # sigmoid(0) = an even blend
        self.looping = False
        freq = 1.0 / cfg.rope_base ** (torch.arange(0, cfg.rope_dims, 2, dtype=torch.float32) / cfg.rope_dims)
        angles = torch.outer(torch.arange(max(cfg.train_seq_len, cfg.eval_seq_len), dtype=torch.float32), freq)
        self.register_buffer("rope_cos", angles.cos(), persistent=False)
        self.register_buffer("rope_sin", angles.sin(), persistent=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Embedding N(0, 0.005); output projections zero; other matrices orthogonal; gates start at 0.5."""
        nn.init.normal_(self.tok_emb.weight, std=self.cfg.embed_init_std)
        for block in self.blocks:
            for linear in (block.attn.q, block.attn.k, block.attn.v, block.mlp.up):
                nn.init.orthogonal_(linear.weight)
            block.attn.q.weight[block.attn.heads * block.attn.head_dim:].zero_()
            block.attn.o.weight.zero_()
            block.mlp.down.weight.zero_()

    def hidden(self, idx: torch.Tensor) -> torch.Tensor:
        x0 = rms_norm(self.tok_emb(idx)).to(self.dtype)
        x = x0.clone()  # not x0 itself: a block called with two aliased inputs would compile a graph of its own
        cos, sin = self.rope_cos[:idx.size(1)], self.rope_sin[:idx.size(1)]
        encoder, decoder = self.plans[1] if self.looping else self.plans[0]
        skips = []
        for i in encoder:
            x = self.blocks[i](x, x0, cos, sin)
            skips.append(x)
        for j, i in enumerate(decoder):
            if skips:  # U-Net: blend in the matching encoder output through a per-channel gate
                gate = torch.sigmoid(self.skip_gates[j]).to(x.dtype)
                x = torch.lerp(x, self.skip_weights[j].to(x.dtype) * skips.pop(), gate)
            x = self.blocks[i](x, x0, cos, sin)
        return self.final_norm(x)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return softcapped_logits(h, self.tok_emb.weight, self.cfg.logit_softcap)

    def head_loss(self, h: torch.Tensor, targets: torch.Tensor, reduction: str) -> torch.Tensor:
        logits = softcapped_logits(h, self.tok_emb.weight, self.cfg.logit_softcap)
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction=reduction, ignore_index=-100)

    def tail_logits(self, idx: torch.Tensor, n: int) -> torch.Tensor:
        """Logits of the last n positions only: sliding-window scoring needs no more."""
        return self.logits(self.hidden(idx)[:, idx.size(1) - n:])

    def forward(self, idx: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        return self.head_loss(self.hidden(idx), targets, reduction)

    def compile_regions(self) -> None:
        """Compile each block and the head on their own instead of the unrolled network: the blocks share one
        graph per kind (sequential, parallel), so compiling takes about half as long (30-44 s against 76-91 s on
        one H100), for scoring 6% slower."""
        bound_mix_order_reduction()
        for block in self.blocks:
            block.compile(fullgraph=True, dynamic=False)
        self.logits = torch.compile(self.logits, fullgraph=True, dynamic=False)
        self.head_loss = torch.compile(self.head_loss, fullgraph=True, dynamic=False)


def compiling(cfg: Config, ctx: Dist) -> bool:
    return cfg.compile == "1" or (cfg.compile == "auto" and ctx.cuda)


def bound_mix_order_reduction(triton_settings=None, environ=os.environ) -> None:
    """Inductor 2.10-2.11 fuses a norm's backward with the column sums of the vectors around it (mix-order
    reduction) without bounding the kernel's loads (pytorch/pytorch#179423; bounded since by
    mix_order_reduction_max_reads). On this model that made a looped training step's GPU time 1,145 ms
    against 1,059 ms unfused (one H200), so it is off there, unless TORCHINDUCTOR_MIX_ORDER_REDUCTION is set.
    Inductors before 2.10 have no such setting, and setting one they lack would raise. Called where a graph is
    compiled, not at import: loading Inductor's settings loads Inductor (seconds a process that never compiles)."""
    if triton_settings is None:
        import torch._inductor.config as inductor_config
        triton_settings = inductor_config.triton
    has, bounded = (hasattr(triton_settings, name) for name in ("mix_order_reduction", "mix_order_reduction_max_reads"))
    if has and not bounded and "TORCHINDUCTOR_MIX_ORDER_REDUCTION" not in environ:
        triton_settings.mix_order_reduction = False


def maybe_compile(fn, cfg: Config, ctx: Dist):
    if not compiling(cfg, ctx):
        return fn
    bound_mix_order_reduction()
    return torch.compile(fn, fullgraph=True, dynamic=False)


# ----------------------------------------------------------------------------------------------
# Optimizers


def newton_schulz(g: torch.Tensor, steps: int) -> torch.Tensor:
    """Approximate orthogonalization U·V^T of each matrix in g (..., rows, cols) by a quintic Newton-Schulz
    iteration in bf16; a stack of equal-shaped matrices goes through as one batched product per step."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.bfloat16()
    tall = x.size(-2) > x.size(-1)
    if tall:
        x = x.mT
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for _ in range(steps):
        s = x @ x.mT
        x = a * x + (b * s + c * s @ s) @ x
    return x.mT if tall else x


class Muon(torch.optim.Optimizer):
    """MuonEq-R: Nesterov momentum, each row of the update normalised, then orthogonalised.

    Matrices of one shape are stacked and orthogonalised together: a few large batched products
    instead of dozens of small launches per step. With several ranks each one takes every world-th
    matrix (in shape order) and one all-reduce shares the updates, so the work is split, not repeated.
    """

    def __init__(self, params, lr: float, momentum: float, weight_decay: float, ns_steps: int, ctx: Dist,
                 orthogonalize=newton_schulz):
        super().__init__(list(params), dict(lr=lr, momentum=momentum, weight_decay=weight_decay, ns_steps=ns_steps))
        self.ctx, self.orthogonalize = ctx, orthogonalize
        params = self.param_groups[0]["params"]
        sizes = [p.numel() for p in params]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).tolist()
        self.shared = torch.zeros(self.offsets[-1], dtype=torch.bfloat16, device=ctx.device) if ctx.world > 1 else None
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, p in enumerate(params):
            by_shape.setdefault(tuple(p.shape), []).append(i)
        mine = set([i for members in by_shape.values() for i in members][ctx.rank::ctx.world])
        stacks = ([i for i in members if i in mine] for members in by_shape.values())
        self.stacks = [s for s in stacks if s]
        self.momenta = [torch.zeros(len(s), *params[s[0]].shape, dtype=params[s[0]].dtype, device=params[s[0]].device)
                        for s in self.stacks]

    @torch.no_grad()
    def step(self) -> None:
        group = self.param_groups[0]
        params, lr, mom, wd = group["params"], group["lr"], group["momentum"], group["weight_decay"]
        own: dict[int, torch.Tensor] = {}
        for stack, buf in zip(self.stacks, self.momenta):
            grad = torch.stack([params[i].grad for i in stack])
            buf.mul_(mom).add_(grad)
            g = grad.add_(buf, alpha=mom)
            g = g / g.norm(dim=-1, keepdim=True).clamp_min(1e-7)
            update = self.orthogonalize(g, group["ns_steps"]) * max(1.0, g.size(-2) / g.size(-1)) ** 0.5
            own.update(zip(stack, update.to(buf.dtype)))
        if self.shared is not None:
            self.shared.zero_()
            for i, u in own.items():
                self.shared[self.offsets[i]:self.offsets[i + 1]].copy_(u.flatten())
            self.ctx.all_reduce(self.shared)
            flat = self.shared.to(params[0].dtype)
            own = {i: flat[self.offsets[i]:self.offsets[i + 1]].view_as(p) for i, p in enumerate(params)}
        torch._foreach_mul_(params, 1 - lr * wd)
        torch._foreach_add_(params, [own[i] for i in range(len(params))], alpha=-lr)


class Optimizers:
    """Muon for the blocks' matrices; AdamW for the tied embedding and for every vector and scalar."""

    def __init__(self, model: GPT, cfg: Config, ctx: Dist):
        self.cfg = cfg
        self.params = list(model.parameters())
        for p in self.params:  # gradients always exist, so all-reduce and clipping see fixed tensors
            p.grad = torch.zeros_like(p)
        matrices = [m.weight for m in model.blocks.modules() if isinstance(m, nn.Linear)]
        taken = {id(p) for p in matrices} | {id(model.tok_emb.weight)}
        scalars = [p for p in self.params if id(p) not in taken]
        self.muon = Muon(matrices, cfg.matrix_lr, cfg.muon_momentum, cfg.muon_wd, cfg.ns_steps, ctx,
                         maybe_compile(newton_schulz, cfg, ctx))
        self.adam = torch.optim.AdamW(
            [dict(params=[model.tok_emb.weight], lr=cfg.embed_lr, weight_decay=cfg.embed_wd),
             dict(params=scalars, lr=cfg.scalar_lr, weight_decay=cfg.scalar_wd)],
            betas=(cfg.beta1, cfg.beta2), eps=cfg.adam_eps, fused=ctx.cuda)
        for opt in (self.muon, self.adam):
            for group in opt.param_groups:
                group["base_lr"] = group["lr"]

    def step(self, step: int, lr_scale: float) -> None:
        warm = min(1.0, step / max(1, self.cfg.muon_momentum_warmup_steps))
        self.muon.param_groups[0]["momentum"] = (1 - warm) * self.cfg.muon_momentum_start + warm * self.cfg.muon_momentum
        for opt in (self.muon, self.adam):
            for group in opt.param_groups:
                group["lr"] = group["base_lr"] * lr_scale
            opt.step()
        for opt in (self.muon, self.adam):
            opt.zero_grad(set_to_none=False)


def sync_grads(params: list[torch.Tensor], ctx: Dist, average: bool) -> None:
    """One all-reduce over all gradients, flattened (data parallelism without per-bucket hooks)."""
    if ctx.world == 1:
        return
    grads = [p.grad for p in params]
    flat = torch._utils._flatten_dense_tensors(grads)
    ctx.all_reduce(flat)
    if average:
        flat /= ctx.world
    torch._foreach_copy_(grads, torch._utils._unflatten_dense_tensors(flat, grads))


class EMA:
    """Exponential moving average of every weight, swapped in when training ends."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay, self.params = decay, list(model.parameters())
        self.shadow = [p.detach().clone().float() for p in self.params]

    @torch.no_grad()
    def update(self) -> None:
        torch._foreach_lerp_(self.shadow, [p.float() for p in self.params], 1.0 - self.decay)

    @torch.no_grad()
    def apply(self) -> None:
        torch._foreach_copy_(self.params, self.shadow)


# ----------------------------------------------------------------------------------------------
# Training


def log(ctx: Dist, text: str) -> None:
    if ctx.rank == 0:  # one write with its newline: torchrun's ranks share an unbuffered pipe
        print(text + "\n", end="", flush=True)


def lr_scale(frac: float, warmdown_frac: float) -> float:
    """Constant, then linear to zero over the last warmdown_frac of the budget."""
    return 1.0 if frac < 1.0 - warmdown_frac else max(0.0, (1.0 - frac) / warmdown_frac)


def looping_due(cfg: Config, frac: float) -> bool:
    return cfg.num_loops > 0 and frac >= cfg.loop_at


class AgreedClock:
    """Elapsed training time every rank agrees on, without stalling the GPU each step.

    All ranks must switch the loop on, scale the learning rate and stop at the same step. Each step
    posts its local time into a MAX all-reduce whose result is copied to pinned memory; the value
    read is the one posted `lag` steps earlier, long finished by then. One rank, or gloo, needs no lag.
    """

    def __init__(self, ctx: Dist, lag: int = 2):
        self.ctx, self.lag, self.value = ctx, lag, 0.0
        self.pending: deque = deque()

    def post(self, elapsed: float) -> None:
        if self.ctx.world == 1 or not self.ctx.cuda:
            t = torch.tensor([elapsed], dtype=torch.float64)
            self.ctx.all_reduce(t, dist.ReduceOp.MAX)
            self.value = float(t)
            return
        t = torch.full((1,), elapsed, dtype=torch.float64, device=self.ctx.device)
        self.ctx.all_reduce(t, dist.ReduceOp.MAX)
        host = torch.empty(1, dtype=torch.float64, pin_memory=True)
        host.copy_(t, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        self.pending.append((host, done))
        if len(self.pending) > self.lag:
            host, done = self.pending.popleft()
            done.synchronize()
            self.value = float(host)


def train_step(loss_fn, loader: TrainLoader, accum: int, ctx: Dist) -> torch.Tensor:
    total = torch.zeros((), device=ctx.device)
    for _ in range(accum):
        x, y = loader.next_batch()
        with ctx.autocast():
            loss = loss_fn(x, y)
        (loss / accum).backward()
        total += loss.detach()
    return total / accum


@torch.no_grad()
def holdout_loss(model: GPT, tokens: np.ndarray, cfg: Config, ctx: Dist) -> float:
    """Mean loss on the held-out tail of the training stream (eager: no extra compiled graph)."""
    n_seq = (len(tokens) - 1) // cfg.train_seq_len
    mine = list(range(n_seq))[ctx.rank::ctx.world]
    sums = torch.zeros(2, dtype=torch.float64, device=ctx.device)
    for i in range(0, len(mine), cfg.eval_batch_seqs):
        starts = [s * cfg.train_seq_len for s in mine[i:i + cfg.eval_batch_seqs]]
        seqs = torch.from_numpy(np.stack([tokens[s:s + cfg.train_seq_len + 1] for s in starts]).astype(np.int64))
        seqs = seqs.to(ctx.device)
        with ctx.autocast():
            sums[0] += model(seqs[:, :-1], seqs[:, 1:], "sum").double()
        sums[1] += seqs[:, 1:].numel()
    ctx.all_reduce(sums)
    return float(sums[0] / sums[1])


def train(cfg: Config, ctx: Dist, vocab: int, backend: str, events) -> tuple[GPT, TrainLoader, int]:
    """Warm up (compile both graphs), roll back, then train to the wall-clock budget; returns the EMA model,
    the loader (GPTQ calibrates on what comes next) and the number of steps taken."""
    files = shard_files(cfg.data_path, "train")
    accum = cfg.grad_accum_steps or max(1, 8 // ctx.world)
    per_rank, rest = divmod(cfg.train_batch_tokens, cfg.train_seq_len * ctx.world * accum)
    if rest or per_rank == 0:
        raise SystemExit(f"train_gpt.py: TRAIN_BATCH_TOKENS={cfg.train_batch_tokens} is not a multiple of "
                         f"train_seq_len x world_size x grad_accum_steps = {cfg.train_seq_len * ctx.world * accum}")
    make_loader = lambda: TrainLoader(files, cfg.train_seq_len, per_rank, ctx, cfg.seed, cfg.holdout_tokens,  # noqa: E731
                                      cfg.loader)
    loader = make_loader()
    log(ctx, f"seed:{cfg.seed}")
    log(ctx, f"world_size:{ctx.world} grad_accum_steps:{accum}")
    log(ctx, f"preset:{cfg.preset} attention:{backend} device:{ctx.device.type} compile:{compiling(cfg, ctx)}")
    log(ctx, f"train_shards:{len(files)} tokens:{sum(len(s) for s in loader.shards)} holdout:{len(loader.holdout)}")
    torch.manual_seed(cfg.seed)
    model = GPT(cfg, vocab, backend, ctx.dtype).to(ctx.device)
    log(ctx, f"model_params:{sum(p.numel() for p in model.parameters())} vocab:{vocab} layers:{cfg.num_layers} "
             f"dim:{cfg.model_dim} virtual_layers:{sum(map(len, model.plans[1]))}")
    loss_fn = maybe_compile(model, cfg, ctx)

    start, initial = time.perf_counter(), copy.deepcopy(model.state_dict())
    opt = Optimizers(model, cfg, ctx)
    for looping in (False, True) if cfg.num_loops > 0 else (False,):
        model.looping = looping
        for _ in range(cfg.warmup_steps):
            train_step(loss_fn, loader, accum, ctx)
            sync_grads(opt.params, ctx, average=True)
            opt.step(0, 1.0)
    model.looping = False
    model.load_state_dict(initial)
    opt, loader = Optimizers(model, cfg, ctx), make_loader()
    if ctx.cuda:
        torch.cuda.synchronize()
    log(ctx, f"warmup:compile and {cfg.warmup_steps} steps per graph in {time.perf_counter() - start:.1f}s, rolled back")

    budget = cfg.max_wallclock_seconds - cfg.gptq_reserve_seconds
    if cfg.max_wallclock_seconds > 0:
        log(ctx, f"gptq:reserving {cfg.gptq_reserve_seconds:g}s, effective={budget * 1000:.0f}ms")
    ema, clock = EMA(model, cfg.ema_decay), AgreedClock(ctx)
    ctx.barrier()
    events.mark("train_start")
    t0 = last_t = time.perf_counter()
    step = last_step = 0
    while step < cfg.iterations:
        frac = clock.value / budget if cfg.max_wallclock_seconds > 0 else step / cfg.iterations
        if not model.looping and looping_due(cfg, frac):
            model.looping = True
            log(ctx, f"layer_loop:enabled step:{step} frac:{frac:.3f} order:{model.plans[1]}")
        loss = train_step(loss_fn, loader, accum, ctx)
        sync_grads(opt.params, ctx, average=True)
        torch.nn.utils.clip_grad_norm_(opt.params, cfg.grad_clip, foreach=True)
        opt.step(step, lr_scale(frac, cfg.warmdown_frac))
        ema.update()
        step += 1
        clock.post(time.perf_counter() - t0)
        if step <= 5 or step % cfg.train_log_every == 0:
            value = loss.item()  # the only host sync of a logged step
            now = time.perf_counter()
            rate = (step - last_step) * cfg.train_batch_tokens / (now - last_t)
            log(ctx, f"step:{step}/{cfg.iterations} train_loss:{value:.4f} train_time:{(now - t0) * 1000:.0f}ms "
                     f"step_avg:{(now - t0) * 1000 / step:.2f}ms tok/s:{rate:.0f}")
            last_t, last_step = now, step
        if cfg.holdout_every and step % cfg.holdout_every == 0 and len(loader.holdout):
            log(ctx, f"step:{step}/{cfg.iterations} holdout_loss:{holdout_loss(model, loader.holdout, cfg, ctx):.4f}")
        if cfg.max_wallclock_seconds > 0 and clock.value >= budget:
            if ctx.cuda:
                torch.cuda.synchronize()
            log(ctx, f"stopping_early: wallclock_cap train_time:{(time.perf_counter() - t0) * 1000:.0f}ms "
                     f"step:{step}/{cfg.iterations}")
            break
    if ctx.cuda:
        torch.cuda.synchronize()
        log(ctx, f"peak memory allocated: {torch.cuda.max_memory_allocated() >> 20} MiB "
                 f"reserved: {torch.cuda.max_memory_reserved() >> 20} MiB")
    ema.apply()
    log(ctx, "ema:applied EMA weights")
    if len(loader.holdout):
        log(ctx, f"holdout post-ema loss:{holdout_loss(model, loader.holdout, cfg, ctx):.4f}")
    return model, loader, step


# ----------------------------------------------------------------------------------------------
# GPTQ and the artifact


@torch.no_grad()
def collect_hessians(model: GPT, loader: TrainLoader, cfg: Config, ctx: Dist) -> dict[str, torch.Tensor]:
    """H = E[x xᵀ] of the input of every block matrix and of the tied output embedding, over training batches."""
    sums: dict[str, torch.Tensor] = {}
    rows: dict[str, int] = {}

    def hook_for(name: str, use_output: bool):
        def hook(module, inputs, output):
            x = (output if use_output else inputs[0]).detach().flatten(0, -2).float()
            if name not in sums:
                sums[name] = torch.zeros(x.size(1), x.size(1), device=x.device)
                rows[name] = 0
            sums[name].addmm_(x.T, x)
            rows[name] += x.size(0)
        return hook

    hooks = [m.register_forward_hook(hook_for(f"{n}.weight", False))
             for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    hooks.append(model.final_norm.register_forward_hook(hook_for("tok_emb.weight", True)))
    seqs = max(1, cfg.gptq_calib_seqs // ctx.world)
    for _ in range(-(-seqs // loader.per_rank)):
        x, _ = loader.next_batch()
        with ctx.autocast():
            model.hidden(x)
    for h in hooks:
        h.remove()
    for name, h in sums.items():
        count = torch.tensor([float(rows[name])], device=h.device)
        ctx.all_reduce(h)
        ctx.all_reduce(count)
        h /= count
    return sums


def gptq_quantize(weight: torch.Tensor, hessian: torch.Tensor, bits: int, clip_k: float, damp: float,
                  block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-Hessian GPTQ with per-row SDClip scales k·std(row)/qmax; columns in descending Hessian-diagonal
    order, so the error of each rounded column is pushed onto the columns that matter less."""
    qmax = 2 ** (bits - 1) - 1
    w = weight.detach().float().clone()
    scale = (clip_k * w.std(dim=1) / qmax).clamp_min(1e-8).half().float()  # stored as fp16: quantize with it
    h = hessian.detach().float().clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    order = torch.argsort(torch.diag(h), descending=True)
    w, h = w[:, order], h[order][:, order]
    h += damp * torch.diag(h).mean() * torch.eye(h.size(0), device=h.device)
    inverse = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    q = torch.zeros_like(w)
    cols = w.size(1)
    for lo in range(0, cols, block):
        hi = min(lo + block, cols)
        part, errors, inv = w[:, lo:hi].clone(), torch.zeros(w.size(0), hi - lo, device=w.device), inverse[lo:hi, lo:hi]
        for i in range(hi - lo):
            col = part[:, i]
            rounded = torch.clamp(torch.round(col / scale), -qmax, qmax)
            q[:, lo + i] = rounded
            err = (col - rounded * scale) / inv[i, i]
            part[:, i:] -= err[:, None] * inv[i, i:][None, :]
            errors[:, i] = err
        w[:, hi:] -= errors @ inverse[lo:hi, hi:]
    return q[:, torch.argsort(order)].to(torch.int8), scale.half()


def quantize_model(model: GPT, hessians: dict[str, torch.Tensor], cfg: Config) -> dict:
    """{"arch": ..., "tensors": {name: {"q": int8, "scale": fp16 per row} or an fp16 tensor}}."""
    tensors = {}
    for name, t in model.state_dict().items():
        if name in hessians and t.numel() > cfg.quant_min_numel:
            bits, k = (cfg.embed_bits, cfg.embed_clip_k) if name == "tok_emb.weight" else (cfg.quant_bits, cfg.quant_clip_k)
            q, scale = gptq_quantize(t, hessians[name], bits, k, cfg.gptq_damp, cfg.gptq_block)
            tensors[name] = {"q": q.cpu(), "scale": scale.cpu()}
        else:
            tensors[name] = t.detach().half().cpu()
    arch = {f: getattr(cfg, f) for f in ARCH_FIELDS} | {"vocab": model.vocab, "looping": model.looping}
    return {"arch": arch, "tensors": tensors}


def dequantize(tensors: dict) -> dict[str, torch.Tensor]:
    return {name: (t["q"].float() * t["scale"].float()[:, None]) if isinstance(t, dict) else t.float()
            for name, t in tensors.items()}


def byte_shuffle(data: bytes, stride: int = 2) -> bytes:
    """Group byte k of every stride-byte word together (fp16 highs with highs): brotli then finds more."""
    pad = -len(data) % stride
    words = np.frombuffer(data + bytes(pad), dtype=np.uint8).reshape(-1, stride)
    return bytes([pad]) + words.T.tobytes()


def byte_unshuffle(blob: bytes, stride: int = 2) -> bytes:
    pad = blob[0]
    data = np.frombuffer(blob, dtype=np.uint8, offset=1).reshape(stride, -1).T.tobytes()
    return data[:len(data) - pad]


def serialize(obj: dict, quality: int) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return brotli.compress(byte_shuffle(buf.getvalue()), quality=quality, lgwin=24)


def deserialize(blob: bytes) -> dict:
    return torch.load(io.BytesIO(byte_unshuffle(brotli.decompress(blob))), weights_only=True)


def write_atomic(path: str, data: bytes) -> None:
    """Temp file beside the target, fsync, rename: the artifact is whole or absent."""
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=os.path.dirname(path) or ".")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def code_bytes() -> tuple[int, int | None]:
    """(as shipped, as the records count it): train_gpt.py minified, lzma'd, base85'd into a two-line exec
    wrapper, plus the event client beside it as shipped. None when python-minifier is not installed."""
    here = os.path.dirname(os.path.abspath(__file__))
    source = open(os.path.join(here, "train_gpt.py"), "rb").read()
    helper = os.path.getsize(os.path.join(here, "pgolf_events.py"))
    try:
        import python_minifier
    except ImportError:
        return len(source) + helper, None
    minified = python_minifier.minify(source.decode("utf-8"), rename_locals=False, hoist_literals=False,
                                      remove_literal_statements=True)
    wrapper = (b'import lzma as L,base64 as B\nexec(L.decompress(B.b85decode("'
               + base64.b85encode(lzma.compress(minified.encode("utf-8"))) + b'")))\n')
    return len(source) + helper, len(wrapper) + helper


def save_artifact(model: GPT, hessians: dict, cfg: Config, ctx: Dist, path: str) -> None:
    if ctx.rank == 0:
        t = time.perf_counter()
        packed = quantize_model(model, hessians, cfg)
        log(ctx, f"GPTQ:quantized in {time.perf_counter() - t:.1f}s")
        t = time.perf_counter()
        blob = serialize(packed, cfg.brotli_quality)
        write_atomic(path, blob)
        log(ctx, f"GPTQ:compressed+saved in {time.perf_counter() - t:.1f}s")
        raw, counted = code_bytes()
        log(ctx, f"Serialized model quantized+brotli: {len(blob)} bytes")
        log(ctx, f"Code size (uncompressed): {raw} bytes")
        log(ctx, f"Code size (compressed): {counted} bytes" if counted is not None else f"Code size: {raw} bytes")
        log(ctx, f"Total submission size quantized+brotli: {len(blob) + (counted or raw)} bytes")
    ctx.barrier()


def load_model(path: str, cfg: Config, ctx: Dist, backend: str) -> tuple[GPT, Config]:
    """Rebuild the network the artifact describes and load its dequantized weights."""
    with open(path, "rb") as f:
        obj = deserialize(f.read())
    arch = dict(obj["arch"])
    vocab, looping = arch.pop("vocab"), arch.pop("looping")
    cfg = replace(cfg, **arch)
    model = GPT(cfg, vocab, backend, ctx.dtype).to(ctx.device)
    model.load_state_dict(dequantize(obj["tensors"]))
    model.looping = looping
    return model, cfg


# ----------------------------------------------------------------------------------------------
# Evaluation: sliding windows, score-first TTT


def scoring_windows(n_tokens: int, seq_len: int, stride: int) -> list[tuple[int, int, int]]:
    """(start, lo, hi): the window reads tokens [start, hi-1) and its predictions of the targets [lo, hi)
    are scored. The first window scores all it sees; every later one its last `stride` targets with
    seq_len tokens of context, so each target 1 … n-1 is scored exactly once."""
    first_hi = min(seq_len + 1, n_tokens)
    out = [(0, 1, first_hi)]
    for lo in range(first_hi, n_tokens, stride):
        hi = min(lo + stride, n_tokens)
        out.append((hi - 1 - seq_len, lo, hi))
    return out


def chunk_windows(windows: list[tuple[int, int, int]], chunk_tokens: int) -> list[list[tuple[int, int, int]]]:
    """Windows grouped by the TTT chunk their scored part starts in (chunk c: targets from 1 + c·chunk_tokens)."""
    groups: dict[int, list] = {}
    for w in windows:
        groups.setdefault((w[1] - 1) // chunk_tokens, []).append(w)
    return [groups[c] for c in sorted(groups)]


@dataclass
class Scorer:
    """What scoring needs besides the model: the stream on the device and on the host, bytes."""

    tokens: torch.Tensor        # the validation stream, int64, on the device
    host: np.ndarray            # the same stream on the host
    table: tuple
    sidecar: np.ndarray | None


def score_windows(tail_fn, windows, scorer: Scorer, cfg: Config, ctx: Dist, events) -> np.ndarray:
    """Score this rank's windows (no grad), send their NLLs and audits; returns [nll sum, targets, bytes].

    The one window that starts the stream (a shape of its own) runs eagerly: no graph is compiled for it."""
    sums = np.zeros(3)
    seq, stride, batch = cfg.eval_seq_len, cfg.eval_stride, cfg.eval_batch_seqs
    groups = []  # (windows, input length, scored width, batch size, compiler stance): fixed shapes per graph
    if windows and windows[0][0] == 0:
        groups.append((windows[:1], windows[0][2] - 1, windows[0][2] - 1, 1, "force_eager"))
        windows = windows[1:]
    groups += [(windows[i:i + batch], seq, stride, batch, "default") for i in range(0, len(windows), batch)]
    for group, length, width, size, stance in groups:
        padded = group + [group[-1]] * (size - len(group))
        starts = torch.tensor([w[0] for w in padded], device=ctx.device)
        x = scorer.tokens[starts[:, None] + torch.arange(length, device=ctx.device)]
        y = scorer.tokens[starts[:, None] + length - width + 1 + torch.arange(width, device=ctx.device)]
        with ctx.autocast(), torch.compiler.set_stance(stance):
            logits = tail_fn(x, width)
        logp = torch.log_softmax(logits.float(), dim=-1)
        nll = -logp.gather(-1, y[..., None])[..., 0]
        host = nll[:len(group)].cpu().numpy()
        lo, hi = group[0][1], group[-1][2]
        pieces = [host[b, width - (w[2] - w[1]):] for b, w in enumerate(group)]
        for pos in events.scores(lo, np.concatenate(pieces)):  # the harness picks what to audit once it has them
            b = bisect_right([w[1] for w in group], pos) - 1
            events.audit(pos, logp[b, width - (group[b][2] - pos)].cpu().numpy())
        sums += (float(np.sum(np.concatenate(pieces), dtype=np.float64)), hi - lo,
                 count_bytes(scorer.host, lo, hi, scorer.table, scorer.sidecar))
    return sums


def ttt_train(loss_fn, opt, params, val_tokens: torch.Tensor, lo: int, hi: int, cfg: Config, ctx: Dist,
              strict: bool = False) -> None:
    """SGD on the already-scored targets [lo, hi): sequences of eval_seq_len, split over the ranks, their
    gradients summed; loss normalised by the targets of the whole batch so every rank's step is equal.
    strict: backward passes with warn-only off (warm_up_eval found that they can run so)."""
    seq = cfg.eval_seq_len
    seqs = [(p, min(seq, hi - p)) for p in range(lo, hi, seq)]
    per_rank = -(-cfg.ttt_batch_seqs // ctx.world)
    for _ in range(cfg.ttt_epochs):
        for b in range(0, len(seqs), cfg.ttt_batch_seqs):
            group = seqs[b:b + cfg.ttt_batch_seqs]
            targets = sum(n for _, n in group)
            x = torch.zeros(per_rank, seq, dtype=torch.int64, device=ctx.device)
            y = torch.full((per_rank, seq), -100, dtype=torch.int64, device=ctx.device)
            for r, (p, n) in enumerate(group[ctx.rank::ctx.world]):
                x[r, :n], y[r, :n] = val_tokens[p - 1:p - 1 + n], val_tokens[p:p + n]
            with ctx.autocast():
                loss = loss_fn(x, y, "sum") / targets
            with deterministic_algorithms(warn_only=False) if strict else contextlib.nullcontext():
                loss.backward()
            sync_grads(params, ctx, average=False)
            torch.nn.utils.clip_grad_norm_(params, cfg.ttt_grad_clip, foreach=True)
            opt.step()
            opt.zero_grad(set_to_none=False)


def eval_functions(model: GPT, cfg: Config, ctx: Dist):
    """(sliding-window logits, TTT loss), compiled as EVAL_COMPILE says when compiling at all."""
    if cfg.eval_compile not in ("regions", "whole"):
        raise SystemExit(f"train_gpt.py: EVAL_COMPILE={cfg.eval_compile!r} is not regions or whole")
    if compiling(cfg, ctx) and cfg.eval_compile == "regions":
        model.compile_regions()
        return model.tail_logits, model
    return maybe_compile(model.tail_logits, cfg, ctx), maybe_compile(model, cfg, ctx)


def warm_up_eval(tail_fn, loss_fn, params, cfg: Config, ctx: Dist, vocab: int, n_tokens: int) -> bool:
    """Compile every evaluation graph on random tokens (never validation data); weights are not changed.
    Returns whether TTT's backward can run with warn-only off: tried here, on the same graphs, so that
    an op with no deterministic algorithm on this device raises before any validation token is scored."""
    rand = lambda *shape: torch.randint(0, vocab, shape, device=ctx.device)  # noqa: E731
    if compiling(cfg, ctx) and n_tokens - 1 > cfg.eval_seq_len:
        with torch.no_grad(), ctx.autocast():
            tail_fn(rand(cfg.eval_batch_seqs, cfg.eval_seq_len), cfg.eval_stride)
    if not (cfg.ttt_enabled and torch.are_deterministic_algorithms_enabled()):  # strict only inside that mode:
        return False  # a compiled backward must run in the mode its forward was compiled in
    rows = -(-cfg.ttt_batch_seqs // ctx.world)
    with ctx.autocast():
        loss = loss_fn(rand(rows, cfg.eval_seq_len), rand(rows, cfg.eval_seq_len), "sum")
    strict = True
    try:
        with deterministic_algorithms(warn_only=False):
            loss.backward()
    except RuntimeError as err:
        if "use_deterministic_algorithms" not in str(err):
            raise
        strict = False
        log(ctx, f"ttt:backward not strictly deterministic here, warn-only ({str(err).splitlines()[0][:160]})")
    for p in params:
        p.grad.zero_()
    return strict


@contextlib.contextmanager
def deterministic_algorithms(warn_only: bool = True):
    """Two runs of one evaluation score alike to the bit (a behavioural probe, `pgolf probe`, is cheapest then):
    deterministic kernels where torch has them, flash attention for TTT's backward, and no reduction order that
    Inductor picks by timing. warn_only (the evaluation): an op with no deterministic algorithm warns instead of
    raising. TTT's backward passes nest warn_only=False where the device allows: only then does flash attention's
    backward run its deterministic algorithm. Restored after, so training keeps its fastest kernels."""
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    os.environ["CUBLAS_WORKSPACE_CONFIG"] = before[2] or ":4096:8"  # what torch asks of cuBLAS in this mode
    torch.use_deterministic_algorithms(True, warn_only=warn_only)  # recent torch: Inductor deterministic too
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        if before[2] is None:
            del os.environ["CUBLAS_WORKSPACE_CONFIG"]


def evaluate(model: GPT, val_tokens: np.ndarray, cfg: Config, ctx: Dist, events, table,
             sidecar=None) -> tuple[float, float, float]:
    """Sliding-window scoring with score-first TTT; returns (val_loss, val_bpb, seconds).

    Chunk by chunk: every rank scores its share of the chunk's windows under no_grad and sends the
    NLLs; a barrier makes sure all of them were sent; only then is the chunk declared (`update`) and
    trained on. The last chunk is never trained on.
    """
    tail_fn, loss_fn = eval_functions(model, cfg, ctx)
    params = list(model.parameters())
    for p in params:
        p.grad = torch.zeros_like(p)
    start = time.perf_counter()
    strict = warm_up_eval(tail_fn, loss_fn, params, cfg, ctx, model.vocab, len(val_tokens))
    if compiling(cfg, ctx):
        if ctx.cuda:
            torch.cuda.synchronize()
        log(ctx, f"eval:warm-up (compile, random tokens) {time.perf_counter() - start:.1f}s")
    scorer = Scorer(torch.from_numpy(val_tokens.astype(np.int64)).to(ctx.device), val_tokens, table, sidecar)
    windows = scoring_windows(len(val_tokens), cfg.eval_seq_len, cfg.eval_stride)
    chunks = chunk_windows(windows, cfg.ttt_chunk_tokens if cfg.ttt_enabled else len(val_tokens))
    opt = torch.optim.SGD(params, lr=cfg.ttt_lr, momentum=cfg.ttt_momentum)
    sums = np.zeros(3)
    ctx.barrier()
    events.mark("eval_start")
    start = time.perf_counter()
    for c, group in enumerate(chunks):
        mine = group[ctx.rank * len(group) // ctx.world:(ctx.rank + 1) * len(group) // ctx.world]
        with torch.no_grad():
            sums += score_windows(tail_fn, mine, scorer, cfg, ctx, events) if mine else 0.0
        ctx.barrier()
        if cfg.ttt_enabled and c < len(chunks) - 1:
            lo, hi = group[0][1], group[-1][2]
            events.update(lo, hi)  # the context token at lo-1 was declared with the previous chunk
            opt.param_groups[0]["lr"] = cfg.ttt_lr * 0.5 * (1 + math.cos(math.pi * c / len(chunks)))
            ttt_train(loss_fn, opt, params, scorer.tokens, lo, hi, cfg, ctx, strict)
    total = torch.tensor(sums, dtype=torch.float64, device=ctx.device)
    ctx.all_reduce(total)
    seconds = time.perf_counter() - start
    events.mark("eval_end")
    nll, targets, nbytes = total.tolist()
    loss = nll / targets
    return loss, loss / math.log(2) * targets / nbytes, seconds


def read_validation(data_path: str) -> tuple[np.ndarray, np.ndarray | None]:
    """All fineweb_val_* shards in order, and the per-token byte sidecars when the data has them."""
    tokens = np.concatenate([np.asarray(read_shard(f)) for f in shard_files(data_path, "val")])
    sidecars = sorted(glob.glob(os.path.join(data_path, "fineweb_val_bytes_[0-9]*.bin")))
    return tokens, (np.concatenate([np.asarray(read_shard(f)) for f in sidecars]) if sidecars else None)


def run_eval(cfg: Config, ctx: Dist, sp, backend: str, artifact: str, events) -> None:
    model, cfg = load_model(artifact, cfg, ctx, backend)
    val_tokens, sidecar = read_validation(cfg.data_path)
    log(ctx, f"val_tokens:{len(val_tokens)} ttt:{cfg.ttt_enabled} chunk:{cfg.ttt_chunk_tokens} "
             f"context:{cfg.eval_seq_len} stride:{cfg.eval_stride} looping:{model.looping}")
    with deterministic_algorithms():
        loss, bpb, seconds = evaluate(model, val_tokens, cfg, ctx, events, byte_table(sp, model.vocab), sidecar)
    label = "quantized_ttt" if cfg.ttt_enabled else "quantized_sliding_window"
    log(ctx, f"{label} val_loss:{loss:.8f} val_bpb:{bpb:.8f} eval_time:{seconds * 1000:.0f}ms")
    if ctx.rank == 0:
        events.result(loss, bpb)


# ----------------------------------------------------------------------------------------------
# Main


def main() -> None:
    cfg = load_config()
    ctx = setup_dist(cfg)
    events = Events.from_env(ctx.rank, ctx.world)
    phase = os.environ.get("PGOLF_PHASE")  # train | eval under pgolf run; unset: the records' one job
    cfg = replace(cfg, artifact_dir=os.environ.get("PGOLF_ARTIFACT_DIR", cfg.artifact_dir))
    tokenizer = cfg.tokenizer_path or next(iter(sorted(glob.glob(os.path.join(cfg.data_path, "*.model")))), "")
    if not os.path.isfile(tokenizer):
        raise SystemExit(f"train_gpt.py: no tokenizer: set TOKENIZER_PATH or put a .model in DATA_PATH={cfg.data_path}")
    sp = spm.SentencePieceProcessor(model_file=tokenizer)
    backend = pick_attention_backend(cfg.attn_backend, ctx.device)
    artifact = os.path.join(cfg.artifact_dir, "final_model.int6.ptz")
    log(ctx, f"tokenizer_path={tokenizer} phase:{phase or 'standalone'}")
    if phase in (None, "train"):
        model, loader, steps = train(cfg, ctx, sp.vocab_size(), backend, events)
        start = time.perf_counter()
        hessians = collect_hessians(model, loader, cfg, ctx)
        log(ctx, f"GPTQ:collected {len(hessians)} Hessians in {time.perf_counter() - start:.1f}s")
        events.mark("train_end", steps=steps)  # the last step that reads training data is done
        save_artifact(model, hessians, cfg, ctx, artifact)
        del model, loader, hessians
    if phase in (None, "eval"):
        run_eval(cfg, ctx, sp, backend, artifact, events)
    events.close()
    teardown(ctx)


if __name__ == "__main__":
    main()
