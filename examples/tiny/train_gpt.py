"""A tiny protocol-speaking submission for pgolf's own tests (schemas/protocol.md).

A two-layer causal transformer trained for a few seconds on the demo shards,
then evaluated with score-first test-time training: each chunk of validation
positions is scored under no_grad and reported, declared as an update, and
only then trained on; the last chunk is never trained on. Its broken variants,
which show the harness's checks failing, are staged by the tests (tests/tiny_variants.py).
"""
import glob
import math
import os
import sys
import weakref

import numpy as np
import sentencepiece as spm
import torch
import torch.distributed as dist
import torch.distributed.nn  # noqa: F401 -- imported before init_process_group: see teardown()
import torch.nn as nn
import torch.nn.functional as F
from pgolf_events import Events

SEQ, DIM, HEADS, LAYERS = 64, 64, 2, 2
STEPS, BATCH, LR = int(os.environ.get("TINY_STEPS", 120)), 16, 3e-3
CHUNK, TTT_LR = 8192, 1e-3


def read_tokens(pattern: str) -> np.ndarray:
    out = []
    for path in sorted(glob.glob(pattern)):
        header = np.fromfile(path, dtype="<i4", count=256)
        assert header[0] == 20240520 and header[1] == 1, path
        out.append(np.fromfile(path, dtype="<u2", offset=1024, count=int(header[2])))
    return np.concatenate(out).astype(np.int64)


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(DIM), nn.LayerNorm(DIM)
        self.qkv, self.proj = nn.Linear(DIM, 3 * DIM), nn.Linear(DIM, DIM)
        self.mlp = nn.Sequential(nn.Linear(DIM, 4 * DIM), nn.GELU(), nn.Linear(4 * DIM, DIM))

    def forward(self, x):
        b, t, _ = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, HEADS, DIM // HEADS).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, DIM)
        x = x + self.proj(y)
        return x + self.mlp(self.ln2(x))


class TinyGPT(nn.Module):
    def __init__(self, vocab: int):
        super().__init__()
        self.emb, self.pos = nn.Embedding(vocab, DIM), nn.Parameter(torch.zeros(SEQ, DIM))
        self.blocks = nn.ModuleList(Block() for _ in range(LAYERS))
        self.ln, self.head = nn.LayerNorm(DIM), nn.Linear(DIM, vocab, bias=False)

    def forward(self, idx):
        x = self.emb(idx) + self.pos[: idx.shape[1]]
        for block in self.blocks:
            x = block(x)
        return F.log_softmax(self.head(self.ln(x)).float(), dim=-1)


def average_gradients(model, world):
    for p in model.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= world


def train(events, rank, world, vocab):
    tokens = read_tokens(os.path.join(os.environ["DATA_PATH"], "fineweb_train_*.bin"))
    torch.manual_seed(int(os.environ["SEED"]))
    model = TinyGPT(vocab)
    opt = torch.optim.AdamW(model.parameters(), lr=LR)
    rng = np.random.default_rng(int(os.environ["SEED"]) * 100 + rank)
    events.mark("train_start")
    for step in range(1, STEPS + 1):
        starts = rng.integers(0, len(tokens) - SEQ - 1, size=BATCH)
        batch = torch.from_numpy(np.stack([tokens[s:s + SEQ + 1] for s in starts]))
        logp = model(batch[:, :-1])
        loss = F.nll_loss(logp.reshape(-1, vocab), batch[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        average_gradients(model, world)
        opt.step()
        if rank == 0 and (step % 20 == 0 or step == 1):
            print(f"step:{step}/{STEPS} train_loss:{loss.item():.4f}", flush=True)
    events.mark("train_end", steps=STEPS)
    if rank == 0:
        final = os.path.join(os.environ["PGOLF_ARTIFACT_DIR"], "model.pt")
        torch.save(model.state_dict(), final + ".tmp")
        os.replace(final + ".tmp", final)


def byte_table(sp, vocab):
    """The submission's own byte accounting, for its own val_bpb (the harness computes its own)."""
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
        base[i] = len(piece[1:].encode() if space[i] else piece.encode())
    return base, space, boundary


def evaluate(events, rank, world, vocab, sp):
    val = read_tokens(os.path.join(os.environ["DATA_PATH"], "fineweb_val_*.bin"))
    model = TinyGPT(vocab)
    model.load_state_dict(torch.load(os.path.join(os.environ["PGOLF_ARTIFACT_DIR"], "model.pt")))
    opt = torch.optim.SGD(model.parameters(), lr=TTT_LR, momentum=0.9)
    base, space, boundary = byte_table(sp, vocab)
    sums = torch.zeros(3, dtype=torch.float64)  # nll, targets, bytes
    chunks = list(range(1, len(val), CHUNK))
    events.mark("eval_start")
    for c, lo in enumerate(chunks):
        hi = min(lo + CHUNK, len(val))
        windows = [(p, min(p + SEQ, hi)) for p in range(lo, hi, SEQ)][rank::world]
        with torch.no_grad():
            for p, q in windows:
                logp = model(torch.from_numpy(val[p - 1:q - 1])[None])[0]
                nll = -logp.gather(1, torch.from_numpy(val[p:q])[:, None])[:, 0]
                for pos in events.scores(p, nll.numpy()):  # the harness picks what to audit once it has them
                    row = logp[pos - p].numpy()
                    events.audit(pos, row)
                prev, y = val[p - 1:q - 1], val[p:q]
                nbytes = base[y] + (space[y] & ~boundary[prev])
                sums += torch.tensor([nll.double().sum().item(), q - p, float(nbytes.sum())], dtype=torch.float64)
        dist.barrier()
        if c < len(chunks) - 1:
            events.update(lo, hi)
            ttt_step(model, opt, val, windows, world, vocab)
    dist.all_reduce(sums)
    events.mark("eval_end")
    loss, bpb = (sums[0] / sums[1]).item(), (sums[0] / math.log(2) / sums[2]).item()
    if rank == 0:
        events.result(loss, bpb)
        print(f"final_tiny_ttt val_loss:{loss:.8f} val_bpb:{bpb:.8f}", flush=True)


def ttt_step(model, opt, val, windows, world, vocab):
    """One SGD step on this rank's windows of an already-scored chunk."""
    opt.zero_grad()
    for p, q in windows:
        logp = model(torch.from_numpy(val[p - 1:q - 1])[None])[0]
        (F.nll_loss(logp, torch.from_numpy(val[p:q])) / max(len(windows), 1)).backward()
    average_gradients(model, world)
    opt.step()


def teardown():
    """Leave the process group so that the process can exit cleanly.

    destroy_process_group() frees the group only if nothing else holds it. If something does, the
    group and its gloo worker threads live on into interpreter shutdown; a worker that drops its last
    reference to a finished collective's tensors then needs the GIL, Python ends that thread with a
    forced unwind that C++ cannot pass, and the rank dies by SIGABRT ("terminate called without an
    active exception"), at random, after its work is done. torch.distributed.nn.functional is such a
    holder when first imported after init_process_group (its functions' defaults `group=group.WORLD`
    are evaluated then); the first torch.optim optimizer imports it (through torch._dynamo), so it is
    imported at the top, before init. Should anything else still hold the group, the process leaves
    without interpreter shutdown, its output flushed (docs/teardown-abort.md).
    """
    dist.barrier()  # no rank tears gloo down while another still talks to it
    world = weakref.ref(dist.group.WORLD)
    dist.destroy_process_group()
    if world() is not None:
        print("tiny: the process group outlived destroy_process_group; exiting without interpreter shutdown",
              file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(0)


def main():
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)
    events = Events.from_env(rank, world)
    sp = spm.SentencePieceProcessor(model_file=os.environ["TOKENIZER_PATH"])
    vocab = sp.vocab_size()
    if os.environ.get("PGOLF_PHASE", "train") == "train":
        train(events, rank, world, vocab)
    else:
        evaluate(events, rank, world, vocab, sp)
    events.close()
    teardown()


if __name__ == "__main__":
    main()
