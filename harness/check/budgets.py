"""Per-seed budgets: artifact bytes, training time, evaluation time, hardware, validation data.

Limits come from the track in rules.yaml. Model bytes come from the seed's log
(the compressed file the run wrote); code bytes are recomputed from the shipped
files by harness.code and replace whatever the log or the JSON says, so a
script edited after the run, or a helper file left out of the count, shows.

seed_budgets is the one entry point: `pgolf check` and `pgolf run --legacy` both judge a seed
through it, so a new budget is added here once. run_budgets judges every other run a folder's logs
show (declared re-runs, unreported runs) for size and time: they ran the same code, so each must fit.
"""
from __future__ import annotations

from typing import Callable

from harness.check.claims import REPORTED, SeedEvidence
from harness.code import CodeBytes
from harness.findings import FAIL, INFO, PASS, WARN, Evidence, Finding
from harness.logs import LogEvidence, Seen
from harness.rules import Rules, Track
from harness.check.submission_json import FILE, Claims


def _at(log: LogEvidence, seen: Seen | None) -> tuple[Evidence, ...]:
    return (Evidence(log.name, seen.line, seen.text),) if seen else (Evidence(log.name),)


def seed_budgets(s: SeedEvidence, code_bytes: Callable[[bool], CodeBytes], track: Track, rules: Rules, *,
                 claims: Claims | None = None, tokenizer: str | None = None, run_here: bool = False,
                 rerun: SeedEvidence | None = None) -> list[Finding]:
    """Every budget of one seed, in report order. `code_bytes(compressed)` counts the shipped code as the
    log counted it. A run the harness made itself (`run_here`) ran on the harness's GPUs and data, so
    the hardware and data budgets, which would judge this machine rather than the submission, are left out.
    `rerun` is the seed's declared re-run, whose timing can settle a question the original leaves open."""
    out = run_budgets(s, code_bytes, track, rules, claims=claims, rerun=rerun)
    if not run_here:
        out += _hardware(s, track) + _data(s, tokenizer, rules)
    return out


def run_budgets(s: SeedEvidence, code_bytes: Callable[[bool], CodeBytes], track: Track, rules: Rules, *,
                claims: Claims | None = None, rerun: SeedEvidence | None = None) -> list[Finding]:
    """Size, training time and evaluation time of one run log."""
    code = code_bytes(s.log.get("code_bytes_compressed") is not None)
    return (_size(s, code, track, claims or Claims(), rules) + _train_time(s, track, rules, rerun)
            + _eval_time(s, track, rules))


def _not_found(s: SeedEvidence, status: str) -> str:
    """A fact missing from a reported seed's log fails or warns; from another run's log (an evaluation-only
    re-run, an ablation) it is only noted: nothing is claimed from it."""
    return status if s.role == REPORTED else INFO


def _logged_code(log: LogEvidence) -> Seen | None:
    return log.get("code_bytes_compressed") or log.get("code_bytes_plain")


def _size(s: SeedEvidence, code: CodeBytes, track: Track, claims: Claims, rules: Rules) -> list[Finding]:
    log, seed, limit = s.log, s.seed, track.artifact_limit_bytes
    out: list[Finding] = []
    model, total, counted = log.get("model_bytes"), log.get("total_bytes"), _logged_code(log)
    if model is None and total is not None and counted is not None:
        model = Seen(int(total.value) - int(counted.value), total.line, total.text)
    if model is None:
        return [Finding("size", _not_found(s, FAIL), "size.no_model_bytes",
                        f"cannot find the compressed model size in {log.name} "
                        "(a 'Serialized model <format>: N bytes' or 'Total submission size' line)",
                        (Evidence(log.name),), seed=seed)]
    if code.error:
        out.append(Finding("size", WARN, "size.wrapper_failed", code.error, (Evidence("train_gpt.py"),), seed=seed))
    if counted is not None:
        tolerance = rules.tolerances["code_wrapper_bytes"] if code.method == "regenerated wrapper" else 0
        diff = code.total - int(counted.value)
        if abs(diff) > tolerance:
            out.append(Finding("size", WARN, "size.code_mismatch",
                               f"{log.name} counted {int(counted.value):,} code bytes; the shipped code counts "
                               f"{code.total:,} ({code.method}, {diff:+,}: "
                               + ", ".join(f"{rel} {n:,}" for rel, n in code.per_file.items())
                               + "): the log comes from other code than the folder ships, or the run left a file it "
                               "needs out of the count",
                               _at(log, counted), seed=seed, data={"logged": int(counted.value), "recomputed": code.total}))
    artifact = int(model.value) + code.total
    judged = max(artifact, int(total.value)) if total else artifact
    data = {"model_bytes": int(model.value), "code_bytes": code.total, "code_method": code.method,
            "artifact_bytes": artifact, "limit": limit, "code_files": code.per_file}
    if judged > limit:
        out.append(Finding("size", FAIL, "size.over_limit",
                           f"{s.run}: artifact is {judged:,} bytes ({int(model.value):,} model + "
                           f"{code.total:,} code), over the {limit:,}-byte limit by {judged - limit:,}",
                           _at(log, model), seed=seed, data=data))
    else:
        out.append(Finding("size", PASS, "size.within_limit",
                           f"{s.run}: artifact {artifact:,} bytes ({int(model.value):,} model + {code.total:,} "
                           f"code, {code.method}); {limit - judged:,} bytes to spare", _at(log, model),
                           seed=seed, data=data))
    claimed = claims.per_seed_bytes.get(seed) if s.role == REPORTED else None
    if claimed is not None and int(claimed.value) != artifact and int(claimed.value) != int(model.value):
        out.append(Finding("size", INFO, "size.json_claim_ignored",
                           f"{FILE} claims {int(claimed.value):,} bytes for seed {seed} ({claimed.path}); "
                           f"pgolf counts {artifact:,} and never trusts byte claims",
                           (Evidence(FILE, None, claimed.path),), seed=seed))
    return out


def _train_time(s: SeedEvidence, track: Track, rules: Rules, rerun: SeedEvidence | None = None) -> list[Finding]:
    log, seed = s.log, s.seed
    stop = log.train_stop
    if stop is None:
        status = _not_found(s, FAIL) if track.train_limit_s else INFO
        return [Finding("train_time", status, "train_time.not_found",
                        f"cannot find the training time in {log.name} (a stopping_early line or step lines)",
                        (Evidence(log.name),), seed=seed)]
    ms = float(stop.value)
    exactness = "" if log.train_stop_exact else " (from the last step line, not a stopping_early line)"
    out: list[Finding] = []
    data = {"train_time_ms": ms, "steps": log.steps, "exact": log.train_stop_exact}
    if track.train_limit_s is None:
        return [Finding("train_time", INFO, "train_time.unlimited",
                        f"{s.run}: trained {ms / 1000:.1f} s{exactness}; the {track.name} track sets no time limit",
                        _at(log, stop), seed=seed, data=data)]
    limit_ms = track.train_limit_s * 1000 + rules.tolerances["train_time_ms"]
    if ms > limit_ms:
        # A time read from minute-precision step lines is only known to 0.05 min either way.
        status = FAIL if log.train_stop_exact or ms - 3000 > limit_ms else WARN
        out.append(Finding("train_time", status, "train_time.over_limit",
                           f"{s.run}: training ran {ms:,.0f} ms{exactness}, past the {track.train_limit_s:g} s "
                           f"limit (+{rules.tolerances['train_time_ms']:g} ms tolerance)", _at(log, stop),
                           seed=seed, data=data))
    else:
        out.append(Finding("train_time", PASS, "train_time.within_limit",
                           f"{s.run}: training {ms:,.0f} ms{exactness} in {log.steps} steps", _at(log, stop),
                           seed=seed, data=data))
    end_ms = _calibration_end_ms(log)
    if end_ms is not None and end_ms > limit_ms:
        hessians = log.get("hessian_s")
        settled = _calibration_end_ms(rerun.log) if rerun is not None else None
        if settled is not None and settled <= limit_ms:
            out.append(Finding("train_time", INFO, "train_time.calibration_settled_by_rerun",
                               f"{s.run}: GPTQ calibration ends at ≈{end_ms / 1000:.1f} s, past the "
                               f"{track.train_limit_s:g} s budget, but the declared re-run {rerun.log.name} ends it "
                               f"at ≈{settled / 1000:.1f} s, inside it", _at(rerun.log, rerun.log.get("hessian_s")),
                               seed=seed, data={"calibration_end_ms": end_ms, "rerun_calibration_end_ms": settled}))
        else:
            out.append(Finding("train_time", WARN, "train_time.calibration_overrun",
                               f"{s.run}: GPTQ calibration reads training data until ≈{end_ms / 1000:.1f} s "
                               f"(training {ms / 1000:.1f} s + Hessians {float(hessians.value):g} s), past the "
                               f"{track.train_limit_s:g} s budget that data-consuming steps must fit in",
                               _at(log, hessians), seed=seed, data={"calibration_end_ms": end_ms}))
    wall = log.get("artifact_production_s")
    if wall is not None:
        out.append(Finding("train_time", INFO, "train_time.artifact_wallclock",
                           f"{s.run}: end-to-end artifact production took {float(wall.value):.1f} s "
                           "(compile, warm-up, quantization and compression included)", _at(log, wall), seed=seed))
    return out


def _calibration_end_ms(log: LogEvidence) -> float | None:
    """When GPTQ calibration stops reading training data: the training stop plus the Hessian collection."""
    hessians = log.get("hessian_s")
    if log.train_stop is None or hessians is None:
        return None
    return float(log.train_stop.value) + float(hessians.value) * 1000


def score_eval_s(log: LogEvidence, s: SeedEvidence) -> tuple[float | None, Seen | None]:
    """Timed scoring of the claimed phase: its own eval_time, its printed twin's, or total_eval_time."""
    total = log.get("total_eval_time_s")
    if s.score is None:
        return None, None
    if total is not None and s.score.stage.startswith("ttt"):
        return float(total.value), total
    if s.score.eval_time_s is not None:
        return s.score.eval_time_s, Seen(s.score.eval_time_s, s.score.line, s.score.text)
    base = s.score.label.removesuffix("_exact")
    twin = next((m for m in log.metrics if m.label.removesuffix("_exact") == base and m.eval_time_s is not None), None)
    if twin is not None:
        return twin.eval_time_s, Seen(twin.eval_time_s, twin.line, twin.text)
    return None, None


def _eval_time(s: SeedEvidence, track: Track, rules: Rules) -> list[Finding]:
    log, seed = s.log, s.seed
    if s.score is None:
        return []
    seconds, seen = score_eval_s(log, s)
    end_to_end = sum(m.eval_time_s or 0.0 for m in log.scores if "_exact" not in m.label and m.label != "ttt_sliding:done")
    warmup = log.get("ttt_warmup_s")
    end_to_end += float(warmup.value) if warmup else 0.0
    data = {"score_eval_s": seconds, "end_to_end_eval_s": round(end_to_end, 3)}
    if seconds is None:
        status = _not_found(s, WARN) if track.eval_limit_s else INFO
        return [Finding("eval_time", status, "eval_time.not_found",
                        f"cannot find the evaluation time of {s.score.label} in {log.name}",
                        (Evidence(log.name, s.score.line, s.score.text),), seed=seed)]
    if track.eval_limit_s is None:
        return [Finding("eval_time", INFO, "eval_time.unlimited",
                        f"{s.run}: scoring took {seconds:.1f} s; no limit on the {track.name} track",
                        _at(log, seen), seed=seed, data=data)]
    limit = track.eval_limit_s + rules.tolerances["eval_time_s"]
    out: list[Finding] = []
    if seconds > limit:
        out.append(Finding("eval_time", FAIL, "eval_time.over_limit",
                           f"{s.run}: scoring ({s.score.label}) took {seconds:.1f} s, past the "
                           f"{track.eval_limit_s:g} s limit", _at(log, seen), seed=seed, data=data))
    else:
        out.append(Finding("eval_time", PASS, "eval_time.within_limit",
                           f"{s.run}: scoring ({s.score.label}) took {seconds:.1f} s; all logged evaluation "
                           f"phases together {end_to_end:.1f} s", _at(log, seen), seed=seed, data=data))
    if end_to_end > limit and seconds <= limit:
        out.append(Finding("eval_time", WARN, "eval_time.end_to_end_over",
                           f"{s.run}: all evaluation phases in the log add up to {end_to_end:.1f} s "
                           f"(diagnostics, other scorings, TTT compile warm-up), past {track.eval_limit_s:g} s; "
                           "accepted practice counts only the timed scoring", (Evidence(log.name),),
                           seed=seed, data=data))
    return out


def _hardware(s: SeedEvidence, track: Track) -> list[Finding]:
    if not track.hardware:
        return []
    log, seed, want = s.log, s.seed, track.hardware
    out: list[Finding] = []
    world, accum = log.get("world_size"), log.get("grad_accum_steps")
    if world is None:
        out.append(Finding("hardware", WARN, "hardware.no_world_size",
                           f"cannot find world_size in {log.name}", (Evidence(log.name),), seed=seed))
    elif int(world.value) != want["gpus"]:
        out.append(Finding("hardware", FAIL, "hardware.world_size",
                           f"seed {seed}: world_size {world.value}; the {track.name} track runs on "
                           f"{want['gpus']} GPUs (a run on other hardware belongs in track_local, where "
                           "`pgolf export` files it)", _at(log, world), seed=seed))
    if accum is not None and int(accum.value) != want["grad_accum_steps"]:
        out.append(Finding("hardware", FAIL, "hardware.grad_accum",
                           f"seed {seed}: grad_accum_steps {accum.value}; a {want['gpus']}-GPU record run uses "
                           f"{want['grad_accum_steps']}", _at(log, accum), seed=seed))
    other = [g for g in log.gpus if g.value != want["gpu_name"]]
    if other:
        out.append(Finding("hardware", FAIL, "hardware.gpu_model",
                           f"seed {seed}: the run's GPUs are '{other[0].value}', not '{want['gpu_name']}' (SXM)",
                           _at(log, other[0]), seed=seed))
    elif log.gpus and len(log.gpus) != want["gpus"]:
        out.append(Finding("hardware", FAIL, "hardware.gpu_count",
                           f"seed {seed}: nvidia-smi lists {len(log.gpus)} GPUs, expected {want['gpus']}",
                           _at(log, log.gpus[0]), seed=seed))
    if not out and world is not None:
        out.append(Finding("hardware", PASS, "hardware.matches_track",
                           f"seed {seed}: world_size {world.value}"
                           + (f", {len(log.gpus)}× {want['gpu_name']}" if log.gpus else ""),
                           _at(log, world), seed=seed))
    if not log.gpus:
        out.append(Finding("hardware", INFO, "hardware.no_gpu_model",
                           f"seed {seed}: cannot find the GPU model in {log.name} (no nvidia-smi table)",
                           (Evidence(log.name),), seed=seed))
    return out


def _data(s: SeedEvidence, tokenizer: str | None, rules: Rules) -> list[Finding]:
    """The validation set must be the canonical one for the tokenizer (all shards, in order)."""
    tokens = s.log.get("val_tokens")
    if tokens is None or tokenizer is None:
        return []
    want = rules.tokenizers[tokenizer]["val_tokens"]
    if int(tokens.value) != want:
        return [Finding("data", WARN, "data.val_tokens",
                        f"seed {s.seed}: evaluated {int(tokens.value):,} validation tokens; the canonical "
                        f"{tokenizer} validation set has {want:,}", _at(s.log, tokens), seed=s.seed)]
    return []
