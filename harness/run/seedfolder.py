"""The seed folder a run writes: its layout, its phase records and the facts its verdict carries.

Everything that reads or writes a seed folder — the phases, `pgolf verify`, `--legacy`, rerun and
export — goes through this module, so each name and fact key is spelled once. The verdict schema
lists the per-seed facts of a run (`$defs/run_seed_facts`, no other keys), so a renamed key fails
where the verdict is written, not later when rerun or export read it.

    RUN/seed_<s>/
      code/                 the submission as the jobs ran it (copied before the train phase)
      artifact/             PGOLF_ARTIFACT_DIR: written by train, read-only in eval
      data/train, data/val  the phases' data views (a native run's DATA_PATH)
      phase_train.json      each phase's record: process facts and findings
      phase_eval.json
      train.log, eval.log   the jobs' output (legacy.log for a --legacy run)
      events_<phase>.jsonl  what the submission told the event server
      eval_scores.npz       the evaluation's NLLs up to its 4th audited position and the distributions it
                            sent at those positions: what `pgolf probe` compares its runs against
      verdict.json          written last, atomically: its presence marks the seed finished
      probe/                `pgolf probe`: one folder per probe run (its eval.log and events) and
                            probe.json, its findings, facts and the secret that chose its streams
      run_id                which run the seed belongs to: one id per `pgolf run` (per RUN_NAME of a
                            compose run), so seeds of two runs are never exported as one
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from harness.atomic import atomic_open, write_text_atomic
from harness.findings import UsageError
from harness.logs import read_log
from harness.rules import Rules
from harness.run import payload
from harness.validation import errors

CODE, ARTIFACT, DATA, PROBE = "code", "artifact", "data", "probe"
VERDICT = "verdict.json"
EVAL_SCORES = "eval_scores.npz"
RUN_ID = "run_id"
LEGACY_PHASE = "legacy"  # the one job of a --legacy run; its output is legacy.log


def seed_folder(run: Path, seed: int) -> Path:
    return run / f"seed_{seed}"


def log_path(out: Path, phase: str) -> Path:
    """The job's own output: train.log, eval.log or legacy.log."""
    return out / f"{phase}.log"


def events_path(out: Path, phase: str) -> Path:
    return out / f"events_{phase}.jsonl"


def record_path(out: Path, phase: str) -> Path:
    return out / f"phase_{phase}.json"


def private_paths(out: Path) -> tuple[Path, ...]:
    """What the harness writes about a seed and no job may see or touch: records, event logs, job logs, verdict."""
    phases = ("train", "eval", LEGACY_PHASE)
    return (*(record_path(out, p) for p in phases), *(events_path(out, p) for p in phases),
            *(log_path(out, p) for p in phases), out / VERDICT, out / EVAL_SCORES, out / PROBE)


def write_record(out: Path, phase: str, record: dict[str, Any]) -> None:
    _write_json(record_path(out, phase), record)


def _write_json(path: Path, record: dict[str, Any]) -> None:
    write_text_atomic(path, json.dumps(record, indent=2, sort_keys=True) + "\n")


def read_json(path: Path, what: str) -> Any:
    """A record or verdict the harness wrote, read back: strict JSON (no NaN or Infinity, which no verdict may
    carry on), else a usage error naming the file."""
    try:
        return json.loads(path.read_text("utf-8"), parse_constant=_not_json)
    except (OSError, ValueError, RecursionError) as exc:
        raise UsageError(f"{path}: unreadable {what} ({exc})") from None


def _not_json(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def read_record(out: Path, phase: str) -> dict[str, Any] | None:
    """The phase's record, None when the phase never ran; one that is unreadable or does not match
    schemas/phase_record.schema.json (a field missing or mistyped) is a usage error naming the field."""
    path = record_path(out, phase)
    if not path.is_file():
        return None
    record = read_json(path, "phase record")
    skipped = isinstance(record, dict) and record.get("skipped") is True
    shape = "train" if phase == "train" else "eval_skipped" if skipped else "eval"
    problem = next(errors(f"urn:pgolf:phase_record#/$defs/{shape}", record), None)
    if problem is not None:
        raise UsageError(f"{path}: not a {phase} phase record as pgolf writes it: {problem}")
    return record


def write_eval_scores(out: Path, arrays: dict[str, np.ndarray]) -> None:
    with atomic_open(out / EVAL_SCORES, "wb") as handle:
        np.savez_compressed(handle, **arrays)


def read_eval_scores(out: Path) -> dict[str, np.ndarray] | None:
    """The evaluation's kept scores (Ledger.probes_basis), None when the seed has none (evaluated before pgolf kept
    them); a file that is not one is a usage error naming it."""
    path = out / EVAL_SCORES
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as arrays:
            kept = {name: arrays[name] for name in arrays.files}
        positions, nll = kept["positions"], kept["nll"]
        if positions.ndim != 1 or nll.ndim != 1 or (positions.size and positions[-1] >= nll.size) \
                or any(kept.get(f"row_{p}") is None for p in positions.tolist()):
            raise ValueError("positions, NLLs and rows do not agree")
        return kept
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise UsageError(f"{path}: not the evaluation's scores as pgolf keeps them ({exc})") from None


def probe_record_path(out: Path) -> Path:
    return out / PROBE / "probe.json"


def write_probe(out: Path, record: dict[str, Any]) -> None:
    probe_record_path(out).parent.mkdir(exist_ok=True)
    _write_json(probe_record_path(out), record)


def read_probe(out: Path) -> dict[str, Any] | None:
    """The probe's record (harness.run.probe), None when the seed was never probed."""
    path = probe_record_path(out)
    if not path.is_file():
        return None
    record = read_json(path, "probe record")
    if not isinstance(record, dict) or not isinstance(record.get("findings"), list):
        raise UsageError(f"{path}: not a probe record as pgolf writes it: expected an object with a 'findings' list")
    return record


def portable(artifact: Path, out: Path) -> str:
    """The artifact's path relative to the seed folder when inside it, so the record stays true when the
    folder is read from another mount (a container's /runs on the host)."""
    artifact, out = artifact.resolve(), out.resolve()
    return artifact.relative_to(out).as_posix() if artifact.is_relative_to(out) else str(artifact)


def artifact_of(out: Path) -> Path:
    """Where the seed's train phase left its artifact (the seed folder's artifact/ unless told otherwise)."""
    train = read_record(out, "train")
    return out / train["artifact"] if train else out / ARTIFACT


def phase_succeeded(record: dict[str, Any], out: Path) -> bool:
    """The job exited 0, or died by a signal only in teardown after its complete result (phase.teardown_signal);
    and, for train, left at least one regular artifact file."""
    if record["process"]["returncode"] != 0 and not any(f["code"] == "phase.teardown_signal"
                                                        for f in record["findings"]):
        return False
    return record["phase"] != "train" or bool(payload.scan(out / record["artifact"], hash_files=False).files)


# --- the finished seed and its facts -----------------------------------------------------------

def finished_verdict(out: Path, seed: int) -> dict[str, Any] | None:
    """The run verdict when the folder holds a finished run of that seed (a schema-valid verdict.json
    naming it), else None: anything less is half a run."""
    try:
        verdict = read_json(out / VERDICT, "verdict")
    except UsageError:
        return None
    if next(errors("urn:pgolf:verdict", verdict), None) is not None:
        return None
    if verdict["command"] != "run" or str(seed) not in verdict.get("seeds", {}):
        return None
    return verdict


def set_aside(out: Path) -> Path:
    """Rename an unfinished seed folder to the first free seed_<s>.incomplete-<n>; it is never reused."""
    n = 1
    while (aside := out.with_name(f"{out.name}.incomplete-{n}")).exists():
        n += 1
    out.rename(aside)
    return aside


def run_verdicts(run: Path) -> dict[int, tuple[Path, dict[str, Any]]]:
    """seed -> (folder, verdict) of every seed_<s>/ holding a verdict.json; one that is not a run's is a
    usage error."""
    found = {}
    for path in sorted(run.glob("seed_*/" + VERDICT)):
        verdict = read_json(path, "verdict")
        seed = path.parent.name.removeprefix("seed_")
        if not isinstance(verdict, dict) or verdict.get("command") != "run" or not (seed.isascii() and seed.isdigit()):
            raise UsageError(f"{path}: not a verdict of `pgolf run`")
        problem = next(errors("urn:pgolf:verdict", verdict), None)
        if problem is not None:
            raise UsageError(f"{path}: not a verdict as pgolf writes it: {problem}")
        found[int(seed)] = (path.parent, verdict)
    return dict(sorted(found.items()))


def stamp_run(out: Path, run_id: str) -> None:
    """Record the run the seed belongs to."""
    write_text_atomic(out / RUN_ID, run_id + "\n")


def one_run(folders: dict[int, Path]) -> None:
    """Seeds exported together must come from one run: a usage error naming the seeds of each id."""
    by_run: dict[str, list[int]] = {}
    for seed, out in folders.items():
        path = out / RUN_ID
        by_run.setdefault(path.read_text("utf-8", "replace").strip() if path.is_file() else "none", []).append(seed)
    if len(by_run) > 1:
        groups = "; ".join(f"seeds {', '.join(map(str, s))} from run {r}" for r, s in by_run.items())
        raise UsageError(f"the seeds come from {len(by_run)} different runs ({groups}); export one run")


def seed_facts(verdict: dict[str, Any], seed: int) -> dict[str, Any]:
    return verdict["seeds"][str(seed)]


def is_legacy(verdict: dict[str, Any]) -> bool:
    """A --legacy run: its numbers are the script's own, read from legacy.log."""
    return bool(verdict.get("legacy"))


def train_seconds(facts: dict[str, Any]) -> float | None:
    """The judged training time: the marked span when the submission sent its marks, else the phase's wall clock."""
    return facts.get("train_marked_s") or facts.get("train_wall_s")


def eval_seconds(facts: dict[str, Any]) -> float | None:
    """The judged evaluation time, as train_seconds."""
    return facts.get("eval_marked_s") or facts.get("eval_wall_s")


def reported_steps(out: Path, facts: dict[str, Any], rules: Rules) -> int | None:
    """The optimizer steps the submission reported: with its train_end mark, else in its own train log."""
    steps = facts.get("steps")
    if steps is None and log_path(out, "train").is_file():
        steps = read_log(log_path(out, "train"), out, rules).steps
    return steps
