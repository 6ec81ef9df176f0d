"""examples/tiny with its deliberate violations, staged for the tests that need them.

examples/tiny/train_gpt.py is a clean submission: `pgolf check` on its export reads no planted bug as
its own code. The tests stage the broken variant: the same file with TINY_BUG switches added at the
places below (each (clean text, switched text) pair must match exactly once, so a change to the example
that moves an anchor fails here, loudly). With TINY_BUG unset the variant behaves as the example.

TINY_BUG switches on one violation: update_before_score, double, skip, unnormalized, crash, slow,
half_artifact, slot (fits a logit bias on each window before scoring it), read_val (reads validation
shards while training; also TINY_VAL_DIR), network (tries a connection in eval and ignores the refusal),
read_train (reads training shards while evaluating; also TINY_TRAIN_DIR), write_artifact (appends to
the artifact in eval).
"""
from __future__ import annotations

import shutil
from pathlib import Path

from harness.paths import TINY_EXAMPLE

SWITCHES: list[tuple[str, str]] = [
    ("import os\nimport sys\nimport weakref\n", "import os\nimport socket\nimport sys\nimport time\nimport weakref\n"),
    ('from pgolf_events import Events\n',
     'from pgolf_events import Events\n\nBUG = os.environ.get("TINY_BUG", "")'),
    ('    tokens = read_tokens(os.path.join(os.environ["DATA_PATH"], "fineweb_train_*.bin"))\n',
     '    tokens = read_tokens(os.path.join(os.environ["DATA_PATH"], "fineweb_train_*.bin"))\n'
     '    if BUG == "read_val":  # peek at validation data while training: the sibling view, and TINY_VAL_DIR\n'
     '        for folder in filter(None, [os.path.join(os.environ["DATA_PATH"], "..", "val"), '
     'os.environ.get("TINY_VAL_DIR")]):\n'
     '            if glob.glob(os.path.join(folder, "fineweb_val_*.bin")):\n'
     '                read_tokens(os.path.join(folder, "fineweb_val_*.bin"))\n'),
    ('        torch.save(model.state_dict(), final + ".tmp")\n',
     '        if BUG == "half_artifact":\n'
     '            with open(final, "wb") as f:\n'
     '                f.write(b"PK\\x03\\x04 half of a model")\n'
     '                f.flush()\n'
     '                os._exit(9)\n'
     '        torch.save(model.state_dict(), final + ".tmp")\n'),
    ('    model.load_state_dict(torch.load(os.path.join(os.environ["PGOLF_ARTIFACT_DIR"], "model.pt")))\n',
     '    model.load_state_dict(torch.load(os.path.join(os.environ["PGOLF_ARTIFACT_DIR"], "model.pt")))\n'
     '    if BUG == "read_train":  # peek at training data while evaluating: the sibling view, and TINY_TRAIN_DIR\n'
     '        for folder in filter(None, [os.path.join(os.environ["DATA_PATH"], "..", "train"), '
     'os.environ.get("TINY_TRAIN_DIR")]):\n'
     '            if glob.glob(os.path.join(folder, "fineweb_train_*.bin")):\n'
     '                read_tokens(os.path.join(folder, "fineweb_train_*.bin"))\n'
     '    if BUG == "write_artifact" and rank == 0:  # change the artifact it was given read-only\n'
     '        with open(os.path.join(os.environ["PGOLF_ARTIFACT_DIR"], "model.pt"), "ab") as f:\n'
     '            f.write(b"tampered")\n'),
    ('    events.mark("eval_start")\n',
     '    events.mark("eval_start")\n'
     '    if BUG == "network":  # phone home, and carry on quietly when refused\n'
     '        try:\n'
     '            socket.create_connection(("203.0.113.7", 443), timeout=1).close()\n'
     '        except OSError:\n'
     '            pass\n'),
    ('        windows = [(p, min(p + SEQ, hi)) for p in range(lo, hi, SEQ)][rank::world]\n',
     '        windows = [(p, min(p + SEQ, hi)) for p in range(lo, hi, SEQ)][rank::world]\n'
     '        if BUG == "skip" and c == len(chunks) - 1 and rank == world - 1:\n'
     '            windows = windows[:-1]\n'
     '        if BUG == "update_before_score" and c == 0:\n'
     '            events.update(lo, hi)\n'
     '            ttt_step(model, opt, val, windows, world, vocab)\n'),
    ('            for p, q in windows:\n',
     '            for p, q in windows * (2 if BUG == "double" and c == 0 else 1):\n'),
    ('                logp = model(torch.from_numpy(val[p - 1:q - 1])[None])[0]\n'
     '                nll = ',
     '                logp = model(torch.from_numpy(val[p - 1:q - 1])[None])[0]\n'
     '                if BUG == "slot":\n'
     '                    logp = slot_fit(events, logp, val, p, q)\n'
     '                nll = '),
    ('                    events.audit(pos, row)\n',
     '                    events.audit(pos, row + 1.0 if BUG == "unnormalized" else row)\n'),
    ('        if c < len(chunks) - 1:\n'
     '            events.update(lo, hi)\n'
     '            ttt_step(model, opt, val, windows, world, vocab)\n',
     '        if c < len(chunks) - 1 and not (BUG == "update_before_score" and c == 0):\n'
     '            events.update(lo, hi)\n'
     '            ttt_step(model, opt, val, windows, world, vocab)\n'
     '        if BUG == "crash" and c == 1:\n'
     '            raise RuntimeError("deliberate crash in the middle of evaluation")\n'
     '        if BUG == "slow":\n'
     '            time.sleep(3600)\n'),
    ('def ttt_step(',
     'def slot_fit(events, logp, val, p, q):\n'
     '    """SLOT-style: one gradient step on a logit bias, fitted to the very targets about to be scored."""\n'
     '    events.update(p, q)\n'
     '    with torch.enable_grad():\n'
     '        delta = torch.zeros(logp.shape[-1], requires_grad=True)\n'
     '        loss = F.nll_loss(F.log_softmax(logp + delta, dim=-1), torch.from_numpy(val[p:q]))\n'
     '        (grad,) = torch.autograd.grad(loss, delta)\n'
     '    return F.log_softmax(logp - 50.0 * grad, dim=-1)\n\n\n'
     'def ttt_step('),
]


def broken_source() -> str:
    """examples/tiny/train_gpt.py with the TINY_BUG switches."""
    source = (TINY_EXAMPLE / "train_gpt.py").read_text("utf-8")
    for clean, switched in SWITCHES:
        assert source.count(clean) == 1, f"examples/tiny/train_gpt.py: the anchor {clean!r} is gone or repeated"
        source = source.replace(clean, switched)
    return source


def stage_broken_tiny(dest: Path) -> Path:
    """A copy of examples/tiny at `dest` whose train_gpt.py has the TINY_BUG switches; returns `dest`."""
    shutil.copytree(TINY_EXAMPLE, dest)
    (dest / "train_gpt.py").write_text(broken_source(), "utf-8")
    return dest
