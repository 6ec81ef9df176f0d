"""The train and eval phases of one seed, each a command of its own (`pgolf phase train|eval`).

A phase stages what its job may see, runs the job on a back end (harness.run.backend) with the
event server listening, judges what it can judge at once (clocks, process, isolation, ledger,
val_bpb) and writes its record into the seed folder (harness.run.seedfolder). `pgolf verify`
(harness.run.judge) assembles the verdict from the records, so a container engine can run every
phase in its own container.
"""
from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.client.pgolf_events import audit_positions
from harness.data.shards import ShardError, read_tokens, train_shards, val_byte_sidecars, val_shards
from harness.findings import FAIL, WARN, Finding, UsageError
from harness.rules import Rules
from harness.run import judge, payload, seedfolder
from harness.run.backend import Backend, Native, PhaseJob
from harness.run.events import EventServer, Received
from harness.run.jobs import PhaseProcess
from harness.run.ledger import Ledger


@dataclass(frozen=True)
class PhaseSpec:
    """One phase of one seed, as `pgolf phase` runs it: `data` is the folder the job sees as DATA_PATH."""
    out: Path          # the seed's folder: code/, phase records, logs
    data: Path
    artifact: Path     # PGOLF_ARTIFACT_DIR: written by train, read-only in eval
    limit_s: float
    grace_s: float = 10.0
    echo: bool = True
    hide: tuple[tuple[Path, tuple[str, ...]], ...] = ()  # folders the job must not read, with their file names
    backend: Backend = Native()


def data_view(out: Path, name: str, shards: list[Path], tokenizer: Path) -> Path:
    """A folder with only the given shards and the tokenizer: all a phase's DATA_PATH shows."""
    folder = out / seedfolder.DATA / name
    folder.mkdir(parents=True)
    for path in [*shards, tokenizer]:
        try:
            os.link(path, folder / path.name)
        except OSError:
            shutil.copy2(path, folder / path.name)
    return folder


def tokenizer_in(data: Path) -> Path:
    models = sorted(data.glob("*.model"))
    if len(models) != 1:
        raise UsageError(f"{data}: expected exactly one SentencePiece *.model beside the shards, found "
                         f"{len(models)}")
    return models[0]


def stage(out: Path, submission: Path) -> tuple[Path, payload.Scan]:
    """Copy the counted code files (harness.run.payload) into the seed folder: all either job runs from."""
    code = out / seedfolder.CODE
    return code, payload.stage_code(submission, code)


def run_job(phase: PhaseSpec, name: str, seed: int, nproc: int, tokenizer: str, ledger: Ledger | None,
            records: Path | None = None, audit_seed: int | None = None,
            stop_when_enough: bool = False) -> tuple[PhaseProcess, Received]:
    """The phase's job on its back end from the seed's staged code, with the event server listening (and the
    ledger judging, in eval); its log and events go to `records` (the seed folder unless a probe says)."""
    records = phase.out if records is None else records
    with tempfile.TemporaryDirectory(prefix="pgolf-") as sockets:  # AF_UNIX paths must stay short
        socket_path = Path(sockets) / "events.sock"
        with seedfolder.events_path(records, name).open("w", encoding="utf-8") as log:
            server = EventServer(socket_path, log, ledger)
            with server:
                process = phase.backend.run_job(PhaseJob(
                    name, seed, nproc, tokenizer, phase.out / seedfolder.CODE, phase.data, phase.artifact,
                    socket_path, seedfolder.log_path(records, name), phase.limit_s, phase.grace_s, phase.echo,
                    phase.hide, str(phase.out.parent), seedfolder.private_paths(phase.out), audit_seed,
                    ledger.enough if stop_when_enough and ledger is not None else None))
    return process, server.received


def _plain_artifact(folder: Path, written: payload.Scan) -> list[Finding]:
    """Give eval a plain copy of the artifact (harness.run.payload.copy_plain), so its file times, modes and
    layout carry nothing uncounted; an artifact with refused entries stays as written for verify to fail."""
    if written.refused or written.unreadable or not written.files:
        return []
    try:
        payload.replace_with_plain_copy(folder, written)
    except OSError as exc:
        return [Finding("size", WARN, "size.artifact_not_plain", f"the artifact could not be copied plain "
                        f"({exc.filename}: {exc.strerror}): eval reads it as the job left it, with file times and "
                        "modes the byte count does not cover")]
    return []


def train_phase(phase: PhaseSpec, submission: Path, seed: int, nproc: int, track: str, rules: Rules) -> dict[str, Any]:
    """Copy the code into the seed folder and run the train job; return (and write) its record."""
    if not (submission / "train_gpt.py").is_file():
        raise UsageError(f"{submission}: no train_gpt.py to run")
    if val_shards(phase.data):
        raise UsageError(f"{phase.data}: holds validation shards; the train phase's DATA_PATH must hold only "
                         "training shards and the tokenizer")
    tokenizer = tokenizer_in(phase.data)
    try:
        phase.out.mkdir(parents=True, exist_ok=True)
        phase.artifact.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create {exc.filename}: {exc.strerror}") from None
    if seedfolder.record_path(phase.out, "train").exists() or (phase.out / seedfolder.CODE).exists():
        raise UsageError(f"{phase.out} already holds a train phase; pgolf never overwrites a run")
    if any(phase.artifact.iterdir()):
        raise UsageError(f"{phase.artifact}: the artifact folder must start empty")
    code, staged = stage(phase.out, submission)
    process, got = run_job(phase, "train", seed, nproc, tokenizer.name, None)
    artifact = payload.scan(phase.artifact)
    plain = _plain_artifact(phase.artifact, artifact)
    ended = judge.teardown_signal("train", judge.job_signal(process, seedfolder.log_path(phase.out, "train")), got,
                                  artifact_bytes=artifact.file_bytes)
    findings = judge.process_findings("train", process, got, phase.limit_s, ended)
    clocks, marked = judge.clock_findings("train", process, got, rules.tracks[track].train_limit_s,
                                          rules.outside_marks_s("train"))
    findings += clocks + plain
    findings += judge.change_findings("train", "code", staged, payload.scan(code))
    record = {"phase": "train", "seed": seed, "nproc": nproc, "track": track, "submission": str(submission),
              "artifact": seedfolder.portable(phase.artifact, phase.out), "tokenizer": tokenizer.name,
              "limit_s": phase.limit_s, "steps": max(got.steps.values(), default=None),
              "code_digest": staged.digest(), "artifact_digest": artifact.digest(),
              "process": judge.process_facts(process, marked), "findings": [f.to_dict() for f in findings]}
    seedfolder.write_record(phase.out, "train", record)
    return record


def eval_phase(phase: PhaseSpec, rules: Rules, data_digest: str | None = None) -> dict[str, Any]:
    """Run the eval job on the artifact the train phase left, with the ledger; return (and write) its record.
    The harness scores with the validation shards and tokenizer as read before the job starts, and fails the
    phase if they changed (`data_digest`: the view as it was before the train phase, when the caller has it)."""
    train = seedfolder.read_record(phase.out, "train")
    if train is None:
        raise UsageError(f"{phase.out}: no phase_train.json; run `pgolf phase train` first")
    if seedfolder.record_path(phase.out, "eval").exists():
        raise UsageError(f"{phase.out} already holds an eval phase; pgolf never overwrites a run")
    if train_shards(phase.data):
        raise UsageError(f"{phase.data}: holds training shards; the eval phase's DATA_PATH must hold only "
                         "validation shards and the tokenizer")
    tokenizer = tokenizer_in(phase.data)
    if not seedfolder.phase_succeeded(train, phase.out):
        record = {"phase": "eval", "skipped": True, "findings": [Finding(
            "phase", FAIL, "phase.eval_skipped", "evaluation did not run: training failed or left no "
            "artifact").to_dict()]}
        seedfolder.write_record(phase.out, "eval", record)
        return record
    try:
        val_paths, sidecars = val_shards(phase.data), val_byte_sidecars(phase.data)
        tokens = read_tokens(val_paths)
        sidecar = read_tokens(sidecars) if sidecars else None
        tokenizer_bytes = tokenizer.read_bytes()
    except (ShardError, OSError) as exc:
        raise UsageError(f"cannot read the validation shards in {phase.data}: {exc}") from None
    code = phase.out / seedfolder.CODE
    code_before, artifact_before, data_before = (payload.scan(p) for p in (code, phase.artifact, phase.data))
    findings = [] if data_digest is None else judge.digest_findings(
        "eval", data_before, data_digest, "data", "since before the train phase")
    findings += judge.digest_findings("eval", code_before, train.get("code_digest"), "code",
                                     "since the train phase staged it")
    findings += judge.digest_findings("eval", artifact_before, train.get("artifact_digest"), "artifact",
                                      "since the train phase ended")
    audit_seed = secrets.randbits(63)  # drawn per run, so no run can tell which positions another one audits
    ledger = Ledger(tokens, audit_positions(audit_seed, len(tokens)), keep_rows=True)
    process, got = run_job(phase, "eval", train["seed"], train["nproc"], tokenizer.name, ledger,
                           audit_seed=audit_seed)
    seedfolder.write_eval_scores(phase.out, ledger.probes_basis())
    ended = judge.teardown_signal("eval", judge.job_signal(process, seedfolder.log_path(phase.out, "eval")), got,
                                  scored_all=bool((ledger.count[1:] > 0).all()))
    findings += judge.process_findings("eval", process, got, phase.limit_s, ended)
    clocks, marked = judge.clock_findings("eval", process, got, rules.tracks[train["track"]].eval_limit_s,
                                          rules.outside_marks_s("eval"))
    findings += clocks
    findings += ledger.findings()
    findings += judge.change_findings("eval", "code", code_before, payload.scan(code))
    findings += judge.change_findings("eval", "artifact", artifact_before, payload.scan(phase.artifact))
    findings += judge.change_findings("eval", "data", data_before, payload.scan(phase.data))
    facts: dict[str, Any] = {}
    if process.returncode == 0 or ended:
        metric, facts = judge.metric_findings(ledger, tokens, tokenizer_bytes, sidecar, got)
        findings += metric
    record = {"phase": "eval", "skipped": False, "limit_s": phase.limit_s, "audit_seed": audit_seed,
              "process": judge.process_facts(process, marked), "metric": facts,
              "findings": [f.to_dict() for f in findings]}
    seedfolder.write_record(phase.out, "eval", record)
    return record
