"""Benchmark: the #1493 record script and submission/, side by side on one GPU, same wall clock, same real text.

Made for the device tool (one H100, no network, no FineWeb). It builds a corpus of real code that the
machine ships (the Python sources of the standard library and the installed packages, deduplicated,
in a fixed shuffled order), trains an 8,192-piece SentencePiece BPE on it with the challenge's
settings, and writes challenge-format shards: held-out tokens first (the val shard, which no run trains
on), then --train-tokens of training shards. Then each run trains for the same wall-clock budget:
`ref` is the record script, unchanged, with FlashAttention-3 replaced by SDPA through the stand-in in
benchmarks/fa3_standin; every other name is submission/ under PRESET=h100x1 with one of RECIPES (and
`+KEY=VALUE` overrides, which `ref` takes too, as environment variables), trained in-process through
train_gpt.train(). Both score the held-out tokens the same way (#1493's eval_val: 2,048-token windows,
mean loss) with the raw weights at the last step and after an EMA of 0.9 (the record's 0.9965 averages
over more steps than these runs take; the record script's EMA score only with --ref-ema, which costs it
one more compiled graph).
Prints both loss curves, step counts, tokens/s before and after looping and the held-out losses, and
writes runs.json, side_by_side.md and one log per run into --out.
Usage: python benchmarks/side_by_side_h100.py --ref RECORD/train_gpt.py --out DIR --seconds 50 \
           --run ref/1337 --run anchor/1337 --run anchor+ATTN_GATE=1/1337
       python benchmarks/side_by_side_h100.py --report DIR/runs.json [DIR2/runs.json ...]
With --profile-step N every run also prints the GPU kernels of its step N (the record script then runs
through runpy so the profiler can hook its loader; its code is still not changed); --cold gives every
run empty compile caches, for start-up times that do not depend on the order of the runs.
On one H100 with --seconds 40 --warmup-steps 3 a run takes 100-185 s (the first of each script compiles
cold), so four runs fit one 600 s device call, with 22 s to build the corpus.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from pathlib import Path
from statistics import median

import numpy as np

REPO = Path(__file__).resolve().parents[1]
STANDIN = Path(__file__).resolve().parent / "fa3_standin"
VOCAB, BOS, SEQ = 8192, 1, 2048
HELDOUT = 128 * SEQ + 1  # 262,145 tokens: what #1493's eval_val scores, 128 windows
BATCH_TOKENS = 786_432
VARIANT = f"fineweb10B_sp{VOCAB}"  # the record script's folder names under DATA_DIR
TOKENIZER = f"fineweb_{VOCAB}_bpe.model"

# submission/ settings per recipe, on top of PRESET=h100x1. `anchor` is #1493's recipe: no attention
# gate, an int8 embedding at k=20, batches sampled across all shards, no monitoring holdout.
RECIPES: dict[str, dict[str, str]] = {
    "ours": {},
    "anchor": {"ATTN_GATE": "0", "EMBED_BITS": "8", "EMBED_CLIP_K": "20", "LOADER": "mixed", "HOLDOUT_TOKENS": "0"},
}


# ----------------------------------------------------------------------------------------------
# Corpus


def python_sources(max_bytes: int = 1 << 19) -> list[str]:
    """Every distinct .py file of the standard library and site-packages (up to max_bytes), in path order."""
    paths = {sysconfig.get_paths()[k] for k in ("stdlib", "purelib", "platlib")}
    files = sorted({p for root in paths for p in Path(root).rglob("*.py") if p.is_file()})
    seen, texts = set(), []
    for path in files:
        try:
            raw = path.read_bytes()
        except OSError:
            continue
        digest = hashlib.sha1(raw).digest()
        if raw.strip() and len(raw) <= max_bytes and digest not in seen:
            seen.add(digest)
            texts.append(raw.decode("utf-8", errors="replace").replace("\0", " "))
    return texts


def train_tokenizer(lines: list[str]) -> bytes:
    """The challenge's SentencePiece settings (as data/demo is built), on all cores."""
    import sentencepiece as spm

    spm.set_random_generator_seed(0)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, model_type="bpe", vocab_size=VOCAB, byte_fallback=True,
        split_digits=True, normalization_rule_name="nmt_nfkc", add_dummy_prefix=False, pad_id=0, bos_id=BOS,
        eos_id=2, unk_id=3, character_coverage=0.999, hard_vocab_limit=False, max_sentence_length=1 << 20,
        input_sentence_size=0, shuffle_input_sentence=False, num_threads=os.cpu_count() or 1, minloglevel=2)
    return model.getvalue()


def build_corpus(data_dir: Path, train_tokens: int, shards: int, tokenizer_lines: int = 200_000) -> dict:
    """Tokenizer and shards in the record script's layout; reused when data_dir already holds this build."""
    import sentencepiece as spm

    from harness.data.shards import write_shard

    manifest = data_dir / "manifest.json"
    wanted = {"train_tokens": train_tokens, "shards": shards, "heldout": HELDOUT, "tokenizer_lines": tokenizer_lines}
    if manifest.exists() and json.loads(manifest.read_text()).get("wanted") == wanted:
        return json.loads(manifest.read_text())
    start = time.perf_counter()
    texts = python_sources()
    rng = np.random.default_rng(0)
    texts = [texts[i] for i in rng.permutation(len(texts))]
    held, chars = 0, 0  # the first documents, ~1M tokens' worth of text, are held out: never trained on
    while chars < 4_000_000:
        chars += len(texts[held])
        held += 1
    train_docs = texts[held:]
    lines = [line for doc in train_docs[:20_000] for line in doc.splitlines() if line.strip()]
    lines = [lines[i] for i in rng.choice(len(lines), size=min(tokenizer_lines, len(lines)), replace=False)]
    model = train_tokenizer(lines)
    sp = spm.SentencePieceProcessor(model_proto=model)
    threads = os.cpu_count() or 1

    def stream(docs: list[str], limit: int) -> np.ndarray:
        out, total = [], 0
        for lo in range(0, len(docs), 2000):
            for ids in sp.encode(docs[lo:lo + 2000], num_threads=threads):
                out.append(np.array([BOS, *ids], dtype=np.uint16))
                total += len(ids) + 1
            if total >= limit:
                break
        return np.concatenate(out)[:limit]

    heldout, train = stream(texts[:held], HELDOUT), stream(train_docs, train_tokens)
    if len(heldout) < HELDOUT or len(train) < train_tokens:
        raise SystemExit(f"corpus too small: {len(heldout)} held-out and {len(train)} training tokens")
    folder = data_dir / "datasets" / VARIANT
    folder.mkdir(parents=True, exist_ok=True)
    (data_dir / "tokenizers").mkdir(exist_ok=True)
    (data_dir / "tokenizers" / TOKENIZER).write_bytes(model)
    write_shard(folder / "fineweb_val_000000.bin", heldout)
    for k, part in enumerate(np.array_split(train, shards)):
        write_shard(folder / f"fineweb_train_{k:06d}.bin", part)
    info = {"wanted": wanted, "documents": len(texts), "heldout_documents": held, "heldout_tokens": len(heldout),
            "train_tokens": len(train), "python": sys.version.split()[0], "seconds": round(time.perf_counter() - start, 1)}
    manifest.write_text(json.dumps(info, indent=2) + "\n")
    return info


# ----------------------------------------------------------------------------------------------
# One step under the profiler (--profile-step), for either script, through its loader


def kernel_table(prof) -> dict:
    """GPU time of one profiled window by kind (attention, matrix products, the rest) and by kernel: every kernel,
    with its launches, so that two scripts' tables can be compared line by line."""
    import torch

    totals: dict[str, list] = {}
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            entry = totals.setdefault(event.name, [0.0, 0])
            entry[0] += event.device_time_total / 1e3
            entry[1] += 1
    kinds = {"attention": ("attention", "fmha", "flash", "cudnn"), "matmul": ("gemm", "nvjet", "xmma", "cutlass")}
    by_kind = {kind: 0.0 for kind in (*kinds, "other")}
    for name, (ms, _) in totals.items():
        kind = next((k for k, words in kinds.items() if any(w in name.lower() for w in words)), "other")
        by_kind[kind] += ms
    heaviest = sorted(totals.items(), key=lambda kv: -kv[1][0])
    return {"total_ms": round(sum(ms for ms, _ in totals.values()), 1), "kernels": len(totals),
            "by_kind_ms": {k: round(v, 1) for k, v in by_kind.items()},
            "by_kernel": [[name[:240], round(ms, 2), calls] for name, (ms, calls) in heaviest]}


def profile_step(loader_class: type) -> None:
    """Profile the GPU work from the first micro-batch of step SBS_PROFILE_STEP to that of the next one.

    Counting calls of the loader's next_batch finds the step in either script without touching its
    training loop: 8 micro-batches a step on one GPU, after WARMUP_STEPS warm-up steps of each of the
    two graphs. Between the two marks lie that step's forward and backward passes, clipping, the
    optimizers and the EMA.
    """
    import torch

    step = int(os.environ.get("SBS_PROFILE_STEP", "0"))
    if not step:
        return
    first = 2 * 8 * int(os.environ.get("WARMUP_STEPS", "20")) + 8 * (step - 1) + 1
    original, calls, state = loader_class.next_batch, [0], {}

    def next_batch(self, *args, **kwargs):
        calls[0] += 1
        if calls[0] in (first, first + 8) and torch.cuda.is_available():
            torch.cuda.synchronize()
        if calls[0] == first:
            kind = "CUDA" if torch.cuda.is_available() else "CPU"  # the CPU only to try this code out
            state["prof"] = torch.profiler.profile(activities=[getattr(torch.profiler.ProfilerActivity, kind)])
            state["prof"].__enter__()
        elif calls[0] == first + 8:
            state["prof"].__exit__(None, None, None)
            print(f"profile step:{step} " + json.dumps(kernel_table(state["prof"])), flush=True)
        return original(self, *args, **kwargs)

    loader_class.next_batch = next_batch


def ref_child(script: str) -> None:
    """The record script as it is, run as a module so that profile_step can find its loader first."""
    import runpy

    module = runpy.run_path(script, run_name="record_script")
    profile_step(module["ShuffledSequenceLoader"])
    module["main"]()


# ----------------------------------------------------------------------------------------------
# submission/ in a child process: train through train_gpt.train(), then score the held-out tokens


def heldout_loss(model, tokens: np.ndarray, ctx, batch: int = 16) -> float:
    """#1493's eval_val on one rank: consecutive SEQ-token windows of the stream, mean next-token loss."""
    import torch

    usable = (len(tokens) - 1) // SEQ * SEQ
    seqs = torch.from_numpy(tokens[:usable + 1].astype(np.int64))
    x, y = seqs[:-1].view(-1, SEQ), seqs[1:].view(-1, SEQ)
    total = 0.0
    with torch.no_grad():
        for lo in range(0, len(x), batch):
            with ctx.autocast():
                total += float(model(x[lo:lo + batch].to(ctx.device), y[lo:lo + batch].to(ctx.device), "sum"))
    return total / usable


def worker() -> None:
    """Train submission/ as its environment configures it; print the held-out loss of the raw and the EMA weights."""
    import sentencepiece as spm

    sys.path.insert(0, str(REPO / "submission"))
    import train_gpt as T
    from pgolf_events import Events

    cfg = T.load_config()
    ctx = T.setup_dist(cfg)
    heldout = np.asarray(T.read_shard(T.shard_files(cfg.data_path, "val")[0]))

    class MeasuredEMA(T.EMA):
        """The EMA of train(), which first scores the raw weights it is about to replace."""

        def __init__(self, model, decay):
            super().__init__(model, decay)
            self.model = model

        def apply(self):
            print(f"heldout raw_loss:{heldout_loss(self.model, heldout, ctx):.6f}", flush=True)
            super().apply()

    T.EMA = MeasuredEMA
    profile_step(T.TrainLoader)
    vocab = spm.SentencePieceProcessor(model_file=cfg.tokenizer_path).vocab_size()
    model, _, _ = T.train(cfg, ctx, vocab, T.pick_attention_backend(cfg.attn_backend, ctx.device),
                          Events.from_env(ctx.rank, ctx.world))
    print(f"heldout ema_loss:{heldout_loss(model, heldout, ctx):.6f}", flush=True)


# ----------------------------------------------------------------------------------------------
# Runs and their logs


def launch(cmd: list[str], env: dict, cwd: Path, log: Path, stop_at: str | None, timeout: float) -> list:
    """Run cmd, timestamping every output line into log; end it once a line contains stop_at."""
    lines, start = [], time.perf_counter()
    with log.open("w", buffering=1) as out, subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE,
                                                stderr=subprocess.STDOUT, text=True, bufsize=1) as proc:
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        for line in proc.stdout:
            t = time.perf_counter() - start
            lines.append((t, line.rstrip("\n")))
            out.write(f"{t:9.2f} {line}")
            if stop_at and stop_at in line:
                proc.terminate()  # the rest (GPTQ, brotli, quantized evaluations) is not compared here
                break
        proc.wait()
        timer.cancel()
        out.write(f"exit {proc.returncode} after {time.perf_counter() - start:.1f}s\n")
    return lines


REF_STEP = re.compile(r"^(\d+)/\d+ train_loss: ([\d.]+) train_time: [\d.]+m tok/s: (\d+)")
OUR_STEP = re.compile(r"^step:(\d+)/\d+ train_loss:([\d.]+) train_time:(\d+)ms")


def parse(lines: list, is_ref: bool) -> dict:
    """Loss curve, per-step times, loop switch, held-out losses and start-up time from one run's output."""
    curve, elapsed, first_at = {}, {}, None
    found: dict = {}
    for t, line in lines:
        if m := (REF_STEP if is_ref else OUR_STEP).match(line):
            step = int(m[1])
            curve[step] = float(m[2])
            # the record logs a cumulative rate, from which its clock is recovered; submission/ logs its clock
            elapsed[step] = step * BATCH_TOKENS / int(m[3]) if is_ref else int(m[3]) / 1000
            if first_at is None:
                first_at = t - elapsed[step]
        for key, pattern in (("loop_step", r"^layer_loop:enabled step:(\d+)"), ("peak_mib", r"^peak memory allocated: (\d+)"),
                             ("raw", r"^\d+/\d+ val_loss: ([\d.]+)" if is_ref else r"^heldout raw_loss:([\d.]+)"),
                             ("ema", r"^pre-quantization post-ema val_loss:([\d.]+)" if is_ref else r"^heldout ema_loss:([\d.]+)")):
            if m := re.match(pattern, line):
                found[key] = float(m[1]) if key in ("raw", "ema") else int(m[1])
        if m := re.match(r"^profile step:(\d+) (\{.*\})$", line):
            found["profile"] = {"step": int(m[1])} | json.loads(m[2])
    steps = sorted(elapsed)
    rates = {s: (s - p) * BATCH_TOKENS / (elapsed[s] - elapsed[p]) for p, s in zip(steps, steps[1:]) if elapsed[s] > elapsed[p]}
    loop = found.get("loop_step")
    before = [r for s, r in rates.items() if s > 2 and (loop is None or s <= loop)]
    after = [r for s, r in rates.items() if loop is not None and loop + 2 <= s < steps[-1]]
    return {"steps": steps[-1] if steps else 0, "curve": curve, "loop_step": loop, "heldout_raw": found.get("raw"),
            "heldout_ema": found.get("ema"), "peak_mib": found.get("peak_mib"),
            "tok_s_before_loop": round(median(before)) if before else None,
            "tok_s_after_loop": round(median(after)) if after else None,
            "startup_s": round(first_at, 1) if first_at is not None else None, "profile": found.get("profile"),
            "train_s": round(elapsed[steps[-1]], 1) if steps else None}


def run_one(spec: str, args, data: Path, site: str) -> dict:
    """One run named recipe[+KEY=VALUE...]/seed."""
    recipe, _, seed = spec.rpartition("/")
    name, *overrides = recipe.split("+")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONUNBUFFERED="1", SEED=seed, MAX_WALLCLOCK_SECONDS=str(args.seconds + 12), GPTQ_RESERVE_SECONDS="12",
               EMA_DECAY=str(args.ema), WARMUP_STEPS=str(args.warmup_steps), TRAIN_LOG_EVERY="1",
               SBS_PROFILE_STEP=str(args.profile_step))
    workdir = Path(tempfile.gettempdir()) / "side_by_side" / spec.replace("/", "_").replace("+", "_").replace("=", "")
    workdir.mkdir(parents=True, exist_ok=True)
    if args.cold:  # empty compile caches of its own, so start-up is not helped by whichever run came first
        for cache in ("inductor", "triton"):
            shutil.rmtree(workdir / cache, ignore_errors=True)
        env.update(TORCHINDUCTOR_CACHE_DIR=str(workdir / "inductor"), TRITON_CACHE_DIR=str(workdir / "triton"))
    if name == "ref":
        env.update(DATA_DIR=str(data), RUN_ID="run", VAL_LOSS_EVERY="0",
                   PYTHONPATH=os.pathsep.join(p for p in (str(STANDIN), site) if p))
        # its raw-weights score ends the run unless the EMA score is wanted too (a second compiled graph, ≈20 s)
        cmd = [sys.executable, str(args.ref.resolve())]
        if args.profile_step:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--ref-child", str(args.ref.resolve())]
        stop_at = "pre-quantization post-ema" if args.ref_ema else " val_loss: "
    else:
        env.update(RECIPES[name], PRESET="h100x1", ATTN_BACKEND="sdpa", HOLDOUT_EVERY="0",
                   DATA_PATH=str(data / "datasets" / VARIANT), TOKENIZER_PATH=str(data / "tokenizers" / TOKENIZER),
                   PYTHONPATH=os.pathsep.join(p for p in (str(REPO), site) if p))
        cmd, stop_at = [sys.executable, str(Path(__file__).resolve()), "--worker"], None
    env.update(kv.split("=", 1) for kv in overrides)  # e.g. ref+QK_GAIN_INIT=5.0, anchor+TORCHINDUCTOR_…=0
    start = time.perf_counter()
    lines = launch(cmd, env, workdir, args.out / f"{workdir.name}.log", stop_at, args.seconds + args.slack)
    result = {"run": spec, "recipe": recipe, "seed": int(seed), "wall_s": round(time.perf_counter() - start, 1)}
    result |= parse(lines, name == "ref")
    if result["heldout_raw"] is None:  # it did not get through training: keep what it said last
        result["tail"] = [line for _, line in lines[-15:]]
    return result


# ----------------------------------------------------------------------------------------------
# Report


def curve_gap(a: dict, b: dict, first: int = 5) -> float | None:
    """Mean of a's train loss minus b's over the steps both logged, from `first` on."""
    common = sorted(set(a["curve"]) & set(b["curve"]))
    common = [s for s in common if s >= first]
    return round(float(np.mean([a["curve"][s] - b["curve"][s] for s in common])), 4) if common else None


def difference(a: dict, b: dict) -> list:
    """(curve gap, Δ held-out raw, Δ held-out EMA) of run a minus run b; None where either lacks the number."""
    return [curve_gap(a, b), *(None if a[k] is None or b[k] is None else round(a[k] - b[k], 4)
                               for k in ("heldout_raw", "heldout_ema"))]


def report(runs: list[dict], seconds: float, corpus: dict, checkpoints: list[int]) -> str:
    """Markdown: one row per run, then each recipe against its base at equal seeds (`anchor+X` against `anchor`,
    every other recipe against `ref`) and each recipe's seed-to-seed spread, the noise to read them by."""
    head = ["run", "steps", "loop at", *[f"loss@{c}" for c in checkpoints], "held-out raw", "held-out EMA 0.9",
            "tok/s before loop", "tok/s after", "start-up s", "peak MiB"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in runs:
        cells = [r["run"], r["steps"], r["loop_step"], *[r["curve"].get(c, "") for c in checkpoints],
                 r["heldout_raw"], r["heldout_ema"], r["tok_s_before_loop"], r["tok_s_after_loop"], r["startup_s"],
                 r["peak_mib"]]
        rows.append("| " + " | ".join("" if c is None else str(c) for c in cells) + " |")
    by_recipe: dict[str, dict[int, dict]] = {}
    for r in runs:
        by_recipe.setdefault(r["recipe"], {})[r["seed"]] = r
    lines = [f"Budget {seconds:g} s of training per run; corpus: {corpus.get('documents')} Python source files, "
             f"{corpus.get('train_tokens'):,} training and {corpus.get('heldout_tokens'):,} held-out tokens.", "",
             *rows, "", "| comparison, same seed | seed | curve gap (mean Δ train loss, steps ≥ 5) | Δ held-out raw "
             "| Δ held-out EMA |", "|---|---|---|---|---|"]
    for recipe, seeds in by_recipe.items():  # a variant against its base: `anchor+X` against anchor, others ref
        base = by_recipe.get("anchor" if recipe.startswith("anchor+") else "ref", {})
        for seed, r in sorted(seeds.items()):
            if recipe != "ref" and seed in base:
                lines.append(f"| {recipe} − {base[seed]['recipe']} | {seed} | " + " | ".join(map(str, difference(r, base[seed]))) + " |")
    for recipe, seeds in by_recipe.items():  # the seed-to-seed spread of each recipe run with two seeds or more
        if len(seeds) >= 2:
            (a_seed, a), (b_seed, b) = sorted(seeds.items())[:2]
            lines.append(f"| {recipe}: seed {a_seed} − seed {b_seed} | — | " + " | ".join(map(str, difference(a, b))) + " |")
    profiled = [r for r in runs if r.get("profile")]
    if profiled:
        lines += ["", "| run | profiled step | GPU ms | attention | matmul | other | kernels |", "|---|---|---|---|---|---|---|"]
        for r in profiled:
            prof = r["profile"]
            lines.append(f"| {r['run']} | {prof['step']} | {prof['total_ms']} | {prof['by_kind_ms']['attention']} | "
                         f"{prof['by_kind_ms']['matmul']} | {prof['by_kind_ms']['other']} | {prof['kernels']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    if "--worker" in sys.argv:
        return worker()
    if len(sys.argv) == 3 and sys.argv[1] == "--ref-child":
        return ref_child(sys.argv[2])
    if len(sys.argv) >= 3 and sys.argv[1] == "--report":  # the tables again from runs.json files of one budget
        saved = [json.loads(Path(f).read_text()) for f in sys.argv[2:]]
        if len({s["seconds"] for s in saved}) > 1:
            raise SystemExit("side_by_side_h100.py --report: the runs.json files have different --seconds")
        runs = [r | {"curve": {int(k): v for k, v in r["curve"].items()}} for s in saved for r in s["runs"]]
        steps = max((r["steps"] for r in runs), default=0)
        return print(report(runs, saved[0]["seconds"], saved[0]["corpus"], list(range(10, steps + 1, 10))))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", type=Path, required=True, help="the #1493 record's train_gpt.py, unchanged")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", type=Path, help="where the corpus is built (or reused); default OUT/data")
    parser.add_argument("--run", action="append", required=True, help="recipe[+KEY=VALUE...]/seed; recipe: ref or "
                                                                      + " | ".join(RECIPES))
    parser.add_argument("--seconds", type=float, default=50.0, help="training wall clock of every run")
    parser.add_argument("--ema", type=float, default=0.9, help="EMA decay of both, for the held-out score")
    parser.add_argument("--ref-ema", action="store_true", help="let the record script also score its EMA weights")
    parser.add_argument("--warmup-steps", type=int, default=20, help="compile warm-up steps per graph (rolled back)")
    parser.add_argument("--train-tokens", type=int, default=40_000_000)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--slack", type=float, default=420.0, help="seconds a run may take beyond --seconds")
    parser.add_argument("--cold", action="store_true", help="every run compiles into empty inductor and Triton caches")
    parser.add_argument("--profile-step", type=int, default=0, help="kernel table of this step in every run (its "
                                                                    "time then includes the profiler's)")
    parser.add_argument("--checkpoints", default="10,20,30,40,50")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    corpus = build_corpus(args.data or args.out / "data", args.train_tokens, args.shards)
    print("corpus:", json.dumps(corpus), flush=True)
    site = os.environ.get("PYTHONPATH", "")
    runs = []
    for spec in args.run:
        runs.append(run_one(spec, args, args.data or args.out / "data", site))
        r = runs[-1]
        print(json.dumps({k: v for k, v in r.items() if k != "curve"}), flush=True)
        (args.out / "runs.json").write_text(json.dumps({"corpus": corpus, "seconds": args.seconds, "runs": runs}) + "\n")
    text = report(runs, args.seconds, corpus, [int(c) for c in args.checkpoints.split(",")])
    (args.out / "side_by_side.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
