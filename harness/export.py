"""`pgolf export RUNDIR`: a finished `pgolf run` becomes a PR-ready records folder of measured numbers.

The seed logs are written by the harness, not copied from the submission. Each opens with lines
that harness/logs.py formats, so `pgolf check` reads them back, carrying the harness's clocks, bytes and
score; the submission's own phase output follows for reference, every line prefixed `[train] ` or
`[eval] ` so that the checker's line-anchored patterns never take it for evidence.

The score line is labelled `final_pgolf_roundtrip_exact`, which rules.yaml's score_labels accepts
(stage `roundtrip`): the harness scored the artifact after a fresh process reloaded it from disk,
which is what a roundtrip line reports, at 8 decimals like the records' `_exact` lines; and for
that stage `pgolf check` reads the eval time from the line itself, so it judges the harness's clock.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Any

from harness import __version__, logs
from harness.atomic import write_text_atomic
from harness.client import CLIENT_FILE
from harness.code import counted_bytes, scan_code
from harness.findings import FAIL, UsageError
from harness.check.folder import FOLDER_NAME
from harness.rules import Rules
from harness.run import payload, seedfolder
from harness.validation import load_schema

SCORE_LABEL = "final_pgolf_roundtrip_exact"
LOCAL_TRACK = "track_local"  # rules.yaml: where a run off the record track's hardware is filed
PLACEHOLDER_AUTHOR, PLACEHOLDER_ID = "FILL IN", "FILL-IN"
_OWN_FILES = {"README.md", "submission.json"}  # written here, never copied from the code folder


def export_run(run: Path, name: str, rules: Rules, *, dest: Path | None = None, author: str | None = None,
               github_id: str | None = None, date: str | None = None, force: bool = False) -> Path:
    """Write DEST/<date>_<name>/ from the run's seeds; the folder appears whole or not at all."""
    date = date or dt.date.today().isoformat()
    try:
        dt.date.fromisoformat(date)
        valid = len(date) == 10  # fromisoformat also takes 20260101, which no folder name may hold
    except ValueError:
        valid = False
    if not valid:
        raise UsageError(f"--date {date}: expected YYYY-MM-DD")
    if not FOLDER_NAME.match(f"{date}_{name}"):
        raise UsageError(f"--name {name!r}: use letters, digits and . _ + - (no spaces), e.g. SP8192_LegalTTT")
    seeds = _load_seeds(run, force)
    first = next(iter(seeds.values()))
    track = dest.name if dest is not None and dest.name in rules.tracks else _export_track(first, rules)
    dest = dest if dest is not None else Path("records") / track
    final = dest / f"{date}_{name}"
    if final.exists():
        raise UsageError(f"{final} already exists; pgolf export never overwrites (choose another --name or --date)")
    dest.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=dest))
    try:
        copied, skipped = _copy_code(seedfolder.seed_folder(run, min(seeds)) / seedfolder.CODE, tmp, rules)
        code_bytes = counted_bytes(tmp, scan_code(tmp, rules), compressed=False, rules=rules).total
        code_names = sum(len(path.encode()) for path in payload.scan(tmp, hash_files=False).files if payload.is_code(path))
        results = {seed: _seed_result(seedfolder.seed_folder(run, seed), seed, v, code_bytes, code_names, rules)
                   for seed, v in seeds.items()}
        for seed, r in results.items():
            write_text_atomic(tmp / f"train_seed{seed}.log", _seed_log(seedfolder.seed_folder(run, seed), seed, seeds[seed], r))
        data = _submission(name, author, github_id, date, track, rules, results)
        write_text_atomic(tmp / "submission.json", json.dumps(data, indent=2) + "\n")
        write_text_atomic(tmp / "README.md", _readme(data, run, code_bytes, copied, skipped))
        tmp.chmod(0o755)
        if final.exists():  # rename would silently replace an empty folder made meanwhile
            raise UsageError(f"{final} appeared while exporting; pgolf export never overwrites")
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _export_track(verdict: dict[str, Any], rules: Rules) -> str:
    """The run's own track when it ran with that track's world size; else the local track, whose rules judge
    the same artifact and time limits but no hardware (the world size is all a run records of its hardware)."""
    track = rules.track(verdict["track"])
    if track.hardware and verdict.get("nproc") != track.hardware["gpus"]:
        return LOCAL_TRACK
    return track.name


def _load_seeds(run: Path, force: bool) -> dict[int, dict[str, Any]]:
    """seed -> verdict.json of every seed_<s>/ in the run, refusing legacy runs and (unless forced) failures."""
    if not run.is_dir():
        raise UsageError(f"{run}: no such run folder")
    seeds: dict[int, dict[str, Any]] = {}
    for seed, (folder, verdict) in seedfolder.run_verdicts(run).items():
        if seedfolder.is_legacy(verdict):
            raise UsageError(f"{folder}: a --legacy run has no harness-measured score to export; "
                             "submit the script's own logs and let `pgolf check` judge them")
        seeds[seed] = verdict
    if not seeds:
        raise UsageError(f"{run}: no seed_<s>/verdict.json; pass the folder `pgolf run --out` wrote")
    seedfolder.one_run({seed: seedfolder.seed_folder(run, seed) for seed in seeds})
    failed = {s: next(f for f in v["findings"] if f["status"] == FAIL) for s, v in seeds.items() if v["status"] == FAIL}
    if failed and not force:
        seed, why = next(iter(failed.items()))
        raise UsageError(f"seed {seed} of {run} FAILed ({why['code']}: {why['message']}); refusing to export a "
                         "failing run (--force exports it anyway)")
    missing = [s for s, v in seeds.items() if v["seeds"].get(str(s), {}).get("val_bpb") is None]
    if missing:
        raise UsageError(f"seed {missing[0]} of {run} has no harness-computed val_bpb (its eval did not finish); "
                         "nothing to export for it")
    for seed, verdict in seeds.items():
        facts = seedfolder.seed_facts(verdict, seed)
        lacking = [k for k in ("val_loss", "model_bytes") if facts.get(k) is None]
        lacking += [] if seedfolder.train_seconds(facts) is not None else ["train_marked_s or train_wall_s"]
        lacking += [] if seedfolder.eval_seconds(facts) is not None else ["eval_marked_s or eval_wall_s"]
        if lacking:
            raise UsageError(f"{seedfolder.seed_folder(run, seed) / seedfolder.VERDICT}: $.seeds.{seed} has no "
                             f"{', '.join(lacking)}; not a finished run to export")
    return seeds


def _copy_code(code: Path, tmp: Path, rules: Rules) -> tuple[list[str], list[str]]:
    """The files train_gpt.py needs (as `pgolf check` counts them) and requirements.txt; plus the
    protocol client when the code imports it, so the folder runs from inside itself."""
    scan = scan_code(code, rules)
    wanted = [p for p in [*scan.counted, code / "requirements.txt"] if p.is_file() and p.name not in _OWN_FILES]
    for path in wanted:
        (tmp / path.relative_to(code)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, tmp / path.relative_to(code))
    copied = [p.relative_to(code).as_posix() for p in wanted]
    skipped = sorted(p.relative_to(code).as_posix() for p in code.rglob("*")
                     if p.is_file() and p.relative_to(code).as_posix() not in copied and "__pycache__" not in p.parts)
    if "pgolf_events" in scan.third_party and not (tmp / CLIENT_FILE.name).exists():
        shutil.copy2(CLIENT_FILE, tmp / CLIENT_FILE.name)
        copied.append(f"{CLIENT_FILE.name} (pgolf's protocol client, which the run had on PYTHONPATH)")
    return copied, skipped


def _seed_result(seed_dir: Path, seed: int, verdict: dict[str, Any], code_bytes: int, code_names: int,
                 rules: Rules) -> dict[str, Any]:
    """Per-seed numbers as the harness measured them: the marked spans when sent, else phase wall clocks; the
    total counts file names as `pgolf run` does (harness.run.payload), the code size line only file bytes, as
    `pgolf check` recounts it."""
    facts = seedfolder.seed_facts(verdict, seed)
    model = facts["model_bytes"]  # the artifact as the run counted it: file bytes and names
    train_s, eval_s = seedfolder.train_seconds(facts), seedfolder.eval_seconds(facts)
    steps = seedfolder.reported_steps(seed_dir, facts, rules)
    return {"val_bpb": round(facts["val_bpb"], 8), "val_loss": round(facts["val_loss"], 8),
            "artifact_bytes": model + code_bytes + code_names, "model_bytes": model, "code_bytes": code_bytes,
            "train_time_s": round(train_s, 3), "eval_time_s": round(eval_s, 3), "steps": steps}


def _seed_log(seed_dir: Path, seed: int, verdict: dict[str, Any], r: dict[str, Any]) -> str:
    world = verdict.get("nproc")
    lines = [
        f"pgolf export {__version__}: the lines down to the separator were measured by the harness (pgolf run, "
        f"verdict {verdict['status']}), not printed by the submission",
        logs.fact_line("seed", seed),
        *([logs.fact_line("world_size", world)] if world else []),
        logs.train_stop_line(round(r["train_time_s"] * 1000), r["steps"] or 0),
        logs.fact_line("model_bytes", r["model_bytes"]),
        logs.fact_line("code_bytes_plain", r["code_bytes"]),
        logs.fact_line("total_bytes", r["artifact_bytes"]),
        logs.metric_line(SCORE_LABEL, r["val_loss"], r["val_bpb"], round(r["eval_time_s"] * 1000)),
        "train_time is the harness clock between the train_start and train_end marks (else the phase's wall "
        "clock), eval_time likewise; steps are the submission's own count, from its train_end mark or its log "
        "(0: it reported none)",
        logs.SEPARATOR,
        "The submission's own output, for reference only (prefixed, so no line below is read as evidence):",
    ]
    for phase in ("train", "eval"):
        path = seedfolder.log_path(seed_dir, phase)
        lines += logs.quoted(phase, path.read_text("utf-8", errors="replace") if path.is_file() else "")
    return "\n".join(lines) + "\n"


def _json_track(track: str, rules: Rules) -> str:
    allowed = load_schema("submission")["$defs"]["strict"]["properties"]["track"]["enum"]
    return next(n for n in rules.tracks[track].json_track_names if n in allowed)


def _submission(name: str, author: str | None, github_id: str | None, date: str, track: str, rules: Rules,
                results: dict[int, dict[str, Any]]) -> dict[str, Any]:
    bpbs = [r["val_bpb"] for r in results.values()]
    keys = ("val_bpb", "val_loss", "artifact_bytes", "steps", "train_time_s", "eval_time_s")
    return {
        "name": name, "author": author or PLACEHOLDER_AUTHOR, "github_id": github_id or PLACEHOLDER_ID,
        "date": date, "track": _json_track(track, rules),
        "val_bpb": round(statistics.fmean(bpbs), 8),
        "val_bpb_std": round(statistics.stdev(bpbs), 8) if len(bpbs) > 1 else 0.0,
        "val_loss": round(statistics.fmean(r["val_loss"] for r in results.values()), 8),
        "seeds": list(results),
        "seed_results": {str(s): {k: r[k] for k in keys if r[k] is not None} | {"source": "pgolf run"}
                         for s, r in results.items()},
    }


def _readme(data: dict[str, Any], run: Path, code_bytes: int, copied: list[str], skipped: list[str]) -> str:
    rows = "\n".join(f"| {s} | {r['val_bpb']:.8f} | {r['val_loss']:.8f} | {r['artifact_bytes']:,} | "
                     f"{r['train_time_s']:.3f} | {r['eval_time_s']:.3f} |" for s, r in data["seed_results"].items())
    placeholders = [k for k, v in (("author", PLACEHOLDER_AUTHOR), ("github_id", PLACEHOLDER_ID)) if data[k] == v]
    todo = f"- {' and '.join(placeholders)} in submission.json: placeholders now.\n" if placeholders else ""
    return f"""# {data['name']}

Written by `pgolf export` ({__version__}) from the run folder `{run}`. The numbers below, the seed
logs' opening lines and submission.json were measured by the harness; everything marked TODO is
yours to write before opening the PR.

## Results (measured by `pgolf run`)

| seed | val_bpb | val_loss (nats/token) | artifact bytes | train s | eval s |
|---|---|---|---|---|---|
{rows}

Mean val_bpb **{data['val_bpb']:.8f}** (sample std {data['val_bpb_std']:.8f}) over {len(data['seeds'])} seed(s).
Artifact bytes = every file the train phase left in its artifact folder + {code_bytes:,} code bytes
(the shipped code, counted as `pgolf check` counts it), with every file's name counted as `pgolf run`
counts it. Times are the harness's clock between the
submission's marks (else the phase's wall clock).

## TODO

- What the submission does and why it works: architecture, training, quantization, evaluation.
- The hardware the seeds ran on (GPU model and count), and the PyTorch version.
- Compliance: which evaluation track (fixed predictor or score-first adaptation) and why it is legal.
- Setup notes for any package in requirements.txt.
{todo}- Significance against the current record: `pgolf check THIS_FOLDER --against RECORD_FOLDER`.

## Provenance

- Code copied from the run: {', '.join(copied)}.
- Not copied (neither imported nor named by train_gpt.py; merge what matters of a README into this one):
  {', '.join(skipped) or 'nothing'}.
"""
