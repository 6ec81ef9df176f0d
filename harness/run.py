"""`pgolf run`: one seeded run of a submission as isolated, timed phases, judged by the harness.

Per seed: a train job that sees only training shards and must leave an artifact,
then a fresh eval job that sees only the artifact, the code and the validation
shards, without network. The harness measures the clocks (process spawn to
reap, and the protocol's marks stamped on arrival), counts the artifact bytes,
computes val_bpb from the reported NLLs with its own byte accounting, and
audits the score-first ledger. Everything lands in the seed's folder:
phase logs, event logs, the artifact and verdict.json.

Each phase is also a command of its own (`pgolf phase train|eval`, then
`pgolf verify`), so a container engine can run every phase in its own
container: a phase writes `phase_<name>.json` (its process facts and findings)
and verify assembles the verdict from those records and the artifact.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal as signals
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from harness import budgets, container
from harness.atomic import write_text_atomic
from harness.claims import SeedEvidence, pick_score
from harness.client import CLIENT_DIR
from harness.client.pgolf_events import audit_positions
from harness.code import CodeScan, counted_bytes, scan_code
from harness.data.shards import ShardError, read_tokens, train_shards, val_byte_sidecars, val_shards
from harness.events import EventServer, Received
from harness.findings import FAIL, INFO, PASS, WARN, Evidence, Finding, UsageError
from harness.ledger import Ledger
from harness.logs import read_log
from harness.process import PhaseProcess, run_phase
from harness.report import verdict_json
from harness.rules import Rules, Track
from harness.submission import Claims
from harness.verdict import Verdict


@dataclass(frozen=True)
class RunSpec:
    submission: Path   # folder holding train_gpt.py
    dataset: Path      # folder with fineweb_train_*/fineweb_val_* shards
    tokenizer: Path    # the SentencePiece model
    seed: int
    nproc: int
    out: Path          # this seed's output folder (must not exist yet)
    track: str
    train_limit_s: float  # hard limits: the job is stopped there
    eval_limit_s: float
    grace_s: float = 10.0
    echo: bool = True
    legacy: bool = False  # one job that trains and evaluates itself; its scores come from its own log
    image: str | None = None  # run every job as its own container of this image (harness.container)
    gpus: int | None = None  # GPUs per container: None all (none on the CPU image)
    memory: str | None = None  # the container's memory limit, e.g. "8g"


def _link_or_copy(src: Path, dest: Path) -> None:
    try:
        os.link(src, dest)
    except OSError:
        shutil.copy2(src, dest)


def _view(spec: RunSpec, name: str, shards: list[Path]) -> Path:
    """A folder with only the given shards and the tokenizer: all a phase's DATA_PATH shows."""
    folder = spec.out / "data" / name
    folder.mkdir(parents=True)
    for path in [*shards, spec.tokenizer]:
        _link_or_copy(path, folder / path.name)
    return folder


def _stage(out: Path, submission: Path, rules: Rules) -> tuple[Path, CodeScan, dict[str, str]]:
    """Copy the code the job runs from and fingerprint it, so anything a job writes beside the
    artifact shows."""
    code = out / "code"
    shutil.copytree(submission, code, ignore=shutil.ignore_patterns("*.log", "__pycache__"))
    return code, scan_code(code, rules), _fingerprint(code)


def _fingerprint(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@dataclass(frozen=True)
class JobSpec:
    """What every phase's job is told besides its folders."""
    seed: int
    nproc: int
    tokenizer: str  # file name of the SentencePiece model inside DATA_PATH


def _env(job: JobSpec, phase: str, data: PurePosixPath, artifact: PurePosixPath, socket_path: PurePosixPath | None,
         client: PurePosixPath = CLIENT_DIR, base: dict[str, str] | None = None) -> dict[str, str]:
    """The job's environment: `base` (the harness's own by default) with the paths as the job sees them."""
    base = os.environ if base is None else base
    env = {k: v for k, v in base.items() if not k.startswith("PGOLF_")}
    env.update({
        "PGOLF_PHASE": phase, "PGOLF_PROTOCOL": "1", "PGOLF_SEED": str(job.seed), "SEED": str(job.seed),
        "DATA_PATH": str(data), "TOKENIZER_PATH": str(data / job.tokenizer),
        "PGOLF_ARTIFACT_DIR": str(artifact), "PGOLF_AUDIT_SEED": str(job.seed), "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(client), base.get("PYTHONPATH")])),
    })
    if socket_path is not None:
        env["PGOLF_EVENTS"] = str(socket_path)
    return env


def _torchrun(nproc: int, python: str = sys.executable, *options: str) -> list[str]:
    return [python, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *options,
            "train_gpt.py"]


def _phase(job: JobSpec, phase: PhaseSpec, name: str, code: Path, ledger: Ledger | None) -> tuple[PhaseProcess, Received]:
    with tempfile.TemporaryDirectory(prefix="pgolf-") as sockets:  # AF_UNIX paths must stay short
        socket_path = Path(sockets) / "events.sock"
        with (phase.out / f"events_{name}.jsonl").open("w", encoding="utf-8") as log:
            server = EventServer(socket_path, log, ledger)
            with server:
                if phase.image:
                    process = _in_container(job, phase, name, code, socket_path)
                else:
                    process = run_phase(_torchrun(job.nproc), env=_env(job, name, phase.data, phase.artifact,
                                                                        socket_path),
                                        cwd=code, log_path=phase.out / f"{name}.log", limit_s=phase.limit_s,
                                        grace_s=phase.grace_s, network=False, prefix=f"[{name}] ", echo=phase.echo,
                                        hide={folder: list(names) for folder, names in phase.hide})
    return process, server.received


def _in_container(job: JobSpec, phase: PhaseSpec, name: str, code: Path, socket_path: Path | None) -> PhaseProcess:
    """The same job as its own container (harness.container), told the paths it sees there;
    torchrun's --tee labels each line with its rank."""
    inside = PurePosixPath(container.EVENTS) / socket_path.name if socket_path else None
    env = _env(job, name, PurePosixPath(container.data_dir(phase.data)), PurePosixPath(container.ARTIFACT), inside,
               PurePosixPath(container.CLIENT), container.job_environment(dict(os.environ)))
    return container.run_job(container.ContainerJob(
        phase.image, name, _torchrun(job.nproc, "python3", "--tee", "3"), env, code, phase.data, phase.artifact,
        socket_path.parent if socket_path else None, phase.out / f"{name}.log", phase.limit_s, phase.grace_s,
        {"run": str(phase.out.parent), "seed": str(job.seed)}, phase.gpus, phase.memory, phase.echo, phase.hide))


def _span(received: Received, start: str, end: str) -> float | None:
    """Harness-clock seconds from the first rank's start mark to the last rank's end mark."""
    if start in received.marks and end in received.marks:
        return max(received.marks[end].values()) - min(received.marks[start].values())
    return None


def teardown_signal(phase: str, signal: str | None, received: Received, *, scored_all: bool = False,
                    artifact_bytes: int = 0) -> str | None:
    """The signal that ended a phase whose job had already delivered its complete result, else None.

    `signal` is the signal a process of the job died by (None: none did). Complete means, for eval:
    every validation position scored (`scored_all`: the ledger has no gap), rank 0's `result` event
    and the eval_end mark of every rank; for train: the train_end mark of every rank and an artifact
    of `artifact_bytes` > 0. A job that died by a signal only after that died in its teardown, when
    nothing the harness judges could change any more: a WARN naming the signal, not a crash. Without
    a signal, for any other phase, or with any part of the result missing, the crash stands (None).
    """
    if signal is None or not received.hellos:
        return None
    world = max(int(h.get("world_size", 0)) for h in received.hellos.values())
    ranks = set(range(world)) | set(received.hellos)
    if phase == "eval":
        done = scored_all and 0 in received.results and ranks <= received.marks.get("eval_end", {}).keys()
    elif phase == "train":
        done = artifact_bytes > 0 and ranks <= received.marks.get("train_end", {}).keys()
    else:
        done = False
    return signal if done else None


# torchrun's report of its first failed worker; a negative exit code is the signal that killed it
_TORCHRUN_FAILURE = re.compile(r"failed \(exitcode: (-?\d+)\) local_rank: (\d+)")


def _job_signal(p: PhaseProcess, log: Path) -> str | None:
    """The signal that ended the job: its main process's own, else the one torchrun reports for its first
    failed rank (torchrun itself then exits with 1). The torchrun line shares the log with the job's output."""
    if p.signal or p.returncode == 0:
        return p.signal
    try:
        text = log.read_text("utf-8", "replace")
    except OSError:
        return None
    found = _TORCHRUN_FAILURE.search(text)
    if found is None or int(found[1]) >= 0:
        return None
    try:
        return f"{signals.Signals(-int(found[1])).name} (rank {found[2]})"
    except ValueError:
        return f"signal {-int(found[1])} (rank {found[2]})"


def _process_findings(phase: str, p: PhaseProcess, received: Received, limit_s: float,
                      teardown: str | None = None) -> list[Finding]:
    """`teardown`: what teardown_signal() returned for this phase (a signal after the complete result)."""
    out: list[Finding] = []
    if p.timed_out:
        out.append(Finding("phase", FAIL, "phase.timeout", f"{phase} phase passed its hard limit of {limit_s:g} s "
                           f"and was stopped ({p.signal or 'exit ' + str(p.returncode)})",
                           data={"phase": phase, "wall_s": p.wall_s}))
    elif p.returncode != 0 and teardown:
        out.append(Finding("phase", WARN, "phase.teardown_signal", f"{phase} phase: a process died by {teardown} "
                           f"in teardown (exit code {p.returncode}), after the job had delivered its complete "
                           "result; the result stands, the crash is the submission's to fix; see "
                           f"{phase}.log", data={"phase": phase, "signal": teardown, "returncode": p.returncode}))
    elif p.returncode != 0:
        out.append(Finding("phase", FAIL, "phase.crashed", f"{phase} phase exited with "
                           f"{p.signal or 'code ' + str(p.returncode)}; see {phase}.log", data={"phase": phase}))
    else:
        out.append(Finding("phase", PASS, "phase.completed", f"{phase} phase finished in {p.wall_s:.1f} s "
                           "(harness clock, spawn to reap)", data={"phase": phase, "wall_s": p.wall_s}))
    if p.survivors:
        out.append(Finding("phase", FAIL, "phase.survivors", f"{len(p.survivors)} process(es) of the {phase} "
                           f"phase outlived it: {p.survivors}", data={"phase": phase}))
    for problem in received.problems:
        out.append(Finding("protocol", FAIL, "protocol.violation", f"{phase}: {problem}", data={"phase": phase}))
    if not received.hellos:
        out.append(Finding("protocol", WARN, "protocol.silent", f"{phase}: no rank connected to the event channel; "
                           "nothing the submission did was measured from inside", data={"phase": phase}))
    for guarantee, state in p.isolation.items():
        if guarantee != "data_view":
            status = PASS if state in ("enforced", "disabled") else WARN
            out.append(Finding("isolation", status, f"isolation.{guarantee}", f"{phase}: {guarantee.replace('_', ' ')} "
                               f"{state}", data={"phase": phase, "state": state}))
    if p.isolation.get("data_view") == "enforced":
        out.append(Finding("isolation", PASS, "isolation.data_view", f"{phase}: data view enforced: the dataset "
                           "folder and the other phase's view were hidden from the job (tmpfs over them, or never mounted in "
                           "its container)",
                           data={"phase": phase, "state": "enforced"}))
    else:
        out.append(Finding("isolation", INFO, "isolation.data_view",
                           f"{phase}: data view observed, not enforced: DATA_PATH holds only this phase's shards, but "
                           "files outside it stay readable by absolute path (the container back end enforces it)",
                           data={"phase": phase, "state": "observed"}))
    if p.hidden_reads:
        names = sorted({Path(f).name for f in p.hidden_reads})
        out.append(Finding("isolation", FAIL, "isolation.data_read", f"{phase}: the job read {len(names)} shard(s) "
                           f"this phase may not see: {', '.join(names[:5])}{' …' if len(names) > 5 else ''}",
                           data={"phase": phase, "files": sorted(p.hidden_reads)}))
    if p.network_attempts:
        out.append(Finding("isolation", FAIL if phase == "eval" else WARN, "isolation.network_attempt",
                           f"{phase}: the job tried to reach the network {p.network_attempts} time(s) (refused: no "
                           "network in the phase's namespace)", data={"phase": phase, "count": p.network_attempts}))
    if isinstance(p, container.ContainerProcess):
        out += container.engine_findings(phase, p)
    return out


def _time_findings(phase: str, seconds: float | None, judged_limit: float | None, check: str) -> list[Finding]:
    if seconds is None:
        return [Finding(check, WARN, f"{check}.no_marks", f"{phase}: the submission sent no {phase}_start/"
                        f"{phase}_end marks; only the phase's wall clock is known")]
    if judged_limit is not None and seconds > judged_limit:
        return [Finding(check, FAIL, f"{check}.over_limit", f"{phase}: {seconds:.1f} s between the marks, past the "
                        f"{judged_limit:g} s limit", data={"seconds": seconds})]
    return [Finding(check, PASS, f"{check}.within_limit", f"{phase}: {seconds:.2f} s between the marks "
                    "(harness clock)", data={"seconds": seconds})]


def _artifact_findings(artifact: Path, code_bytes: int, limit: int) -> tuple[list[Finding], int]:
    files = [p for p in sorted(artifact.rglob("*")) if p.is_file()]
    stray = [p.name for p in files if p.name.startswith(".") or p.name.endswith((".tmp", ".part"))]
    out: list[Finding] = []
    if not files:
        return [Finding("size", FAIL, "size.no_artifact", "the train phase left no artifact in PGOLF_ARTIFACT_DIR")], 0
    if stray:
        out.append(Finding("size", WARN, "size.temp_files", f"the artifact folder holds temporary files {stray}: "
                           "a write that never finished"))
    total = code_bytes + sum(p.stat().st_size for p in files)
    data = {"artifact_bytes": total, "code_bytes": code_bytes, "files": {p.name: p.stat().st_size for p in files}}
    status, verb = (FAIL, "over") if total > limit else (PASS, "within")
    out.append(Finding("size", status, f"size.{verb}_limit", f"artifact {total:,} bytes ({code_bytes:,} code + "
                       f"{total - code_bytes:,} in {len(files)} file(s)), {verb} the {limit:,}-byte limit", data=data))
    return out, total


def _metric_findings(ledger: Ledger, tokens: np.ndarray, tokenizer: Path, sidecar: np.ndarray | None,
                     received: Received) -> tuple[list[Finding], dict[str, Any]]:
    """val_bpb from the ledger's NLLs with the harness's byte accounting, against the submission's own."""
    import sentencepiece as spm

    from harness.metric import build_table, score

    if np.isnan(ledger.nll[1:]).any():
        return [Finding("metric", FAIL, "metric.incomplete", "val_bpb not computed: not every position was scored")], {}
    if sidecar is not None:
        result = score(ledger.nll[1:], tokens, sidecar=sidecar)
    else:
        result = score(ledger.nll[1:], tokens, table=build_table(spm.SentencePieceProcessor(model_file=str(tokenizer))))
    facts = {"val_loss": result.loss, "val_bpb": result.bpb, "tokens": result.tokens, "bytes": result.bytes}
    out = [Finding("metric", PASS, "metric.computed", f"harness val_bpb {result.bpb:.8f} (val_loss {result.loss:.8f} "
                   f"nats/token over {result.tokens:,} targets and {result.bytes:,} bytes)", data=facts)]
    own = received.results.get(0)
    if own is None:
        out.append(Finding("metric", INFO, "metric.no_claim", "the submission reported no val_bpb of its own"))
    elif abs(own["val_bpb"] - result.bpb) <= 1e-4:
        out.append(Finding("metric", PASS, "metric.matches_submission",
                           f"the submission's own val_bpb {own['val_bpb']:.8f} agrees (Δ {own['val_bpb'] - result.bpb:+.2e})"))
    else:
        out.append(Finding("metric", WARN, "metric.disagrees",
                           f"the submission says val_bpb {own['val_bpb']:.8f}, the harness computes {result.bpb:.8f} "
                           "from the same NLLs: its byte accounting differs", data={"claimed": own["val_bpb"]}))
    return out, facts


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
    image: str | None = None  # as in RunSpec: the job runs as a container of this image
    gpus: int | None = None
    memory: str | None = None


def _tokenizer_in(data: Path) -> Path:
    models = sorted(data.glob("*.model"))
    if len(models) != 1:
        raise UsageError(f"{data}: expected exactly one SentencePiece *.model beside the shards, found "
                         f"{len(models)}")
    return models[0]


def _record_path(out: Path, phase: str) -> Path:
    return out / f"phase_{phase}.json"


def _write_record(out: Path, phase: str, record: dict[str, Any]) -> None:
    write_text_atomic(_record_path(out, phase), json.dumps(record, indent=2, sort_keys=True) + "\n")


def _read_record(out: Path, phase: str) -> dict[str, Any] | None:
    path = _record_path(out, phase)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: unreadable phase record ({exc})") from None


def _finding(d: dict[str, Any]) -> Finding:
    return Finding(d["check"], d["status"], d["code"], d["message"],
                   tuple(Evidence(e["file"], e.get("line"), e.get("text")) for e in d.get("evidence", [])),
                   d.get("seed"), d.get("data", {}))


def _process_facts(p: PhaseProcess, marked_s: float | None) -> dict[str, Any]:
    facts = {"wall_s": p.wall_s, "marked_s": marked_s, "returncode": p.returncode, "isolation": p.isolation}
    if isinstance(p, container.ContainerProcess):
        facts["container"] = p.engine  # the engine's clocks, image and inspected configuration
    return facts


def train_phase(phase: PhaseSpec, submission: Path, seed: int, nproc: int, track: str, rules: Rules) -> dict[str, Any]:
    """Copy the code into the seed folder and run the train job; return (and write) its record."""
    if not (submission / "train_gpt.py").is_file():
        raise UsageError(f"{submission}: no train_gpt.py to run")
    if val_shards(phase.data):
        raise UsageError(f"{phase.data}: holds validation shards; the train phase's DATA_PATH must hold only "
                         "training shards and the tokenizer")
    tokenizer = _tokenizer_in(phase.data)
    try:
        phase.out.mkdir(parents=True, exist_ok=True)
        phase.artifact.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create {exc.filename}: {exc.strerror}") from None
    if _record_path(phase.out, "train").exists() or (phase.out / "code").exists():
        raise UsageError(f"{phase.out} already holds a train phase; pgolf never overwrites a run")
    if any(phase.artifact.iterdir()):
        raise UsageError(f"{phase.artifact}: the artifact folder must start empty")
    code, scan, before = _stage(phase.out, submission, rules)
    job = JobSpec(seed, nproc, tokenizer.name)
    process, got = _phase(job, phase, "train", code, None)
    marked = _span(got, "train_start", "train_end")
    artifact_bytes = sum(f.stat().st_size for f in phase.artifact.rglob("*") if f.is_file())
    ended = teardown_signal("train", _job_signal(process, phase.out / "train.log"), got, artifact_bytes=artifact_bytes)
    findings = _process_findings("train", process, got, phase.limit_s, ended)
    findings += _time_findings("train", marked, rules.tracks[track].train_limit_s, "train_time")
    if _fingerprint(code) != before:
        findings.append(Finding("isolation", FAIL, "isolation.code_modified", "the train phase changed files in the "
                                "code folder: only PGOLF_ARTIFACT_DIR may carry state to evaluation"))
    record = {"phase": "train", "seed": seed, "nproc": nproc, "track": track, "submission": str(submission),
              "artifact": _portable(phase.artifact, phase.out), "tokenizer": tokenizer.name, "limit_s": phase.limit_s,
              "steps": max(got.steps.values(), default=None),
              "process": _process_facts(process, marked), "findings": [f.to_dict() for f in findings]}
    _write_record(phase.out, "train", record)
    return record


def phase_succeeded(record: dict[str, Any], out: Path) -> bool:
    """The job exited 0, or died by a signal only in teardown after its complete result (phase.teardown_signal);
    and, for train, left at least one artifact file."""
    if record["process"]["returncode"] != 0 and not any(f["code"] == "phase.teardown_signal"
                                                        for f in record["findings"]):
        return False
    return record["phase"] != "train" or any(p.is_file() for p in (out / record["artifact"]).rglob("*"))


def eval_phase(phase: PhaseSpec, rules: Rules) -> dict[str, Any]:
    """Run the eval job on the artifact the train phase left, with the ledger; return (and write) its record."""
    train = _read_record(phase.out, "train")
    if train is None:
        raise UsageError(f"{phase.out}: no phase_train.json; run `pgolf phase train` first")
    if _record_path(phase.out, "eval").exists():
        raise UsageError(f"{phase.out} already holds an eval phase; pgolf never overwrites a run")
    if train_shards(phase.data):
        raise UsageError(f"{phase.data}: holds training shards; the eval phase's DATA_PATH must hold only "
                         "validation shards and the tokenizer")
    tokenizer = _tokenizer_in(phase.data)
    if not phase_succeeded(train, phase.out):
        record = {"phase": "eval", "skipped": True, "findings": [Finding(
            "phase", FAIL, "phase.eval_skipped", "evaluation did not run: training failed or left no "
            "artifact").to_dict()]}
        _write_record(phase.out, "eval", record)
        return record
    try:
        val_paths, sidecars = val_shards(phase.data), val_byte_sidecars(phase.data)
        tokens = read_tokens(val_paths)
        sidecar = read_tokens(sidecars) if sidecars else None
    except (ShardError, OSError) as exc:
        raise UsageError(f"cannot read the validation shards in {phase.data}: {exc}") from None
    artifact_before = _fingerprint(phase.artifact)
    for path in [phase.artifact, *phase.artifact.rglob("*")]:
        try:
            path.chmod(0o555 if path.is_dir() else 0o444)
        except OSError:  # a read-only mount (the container back ends): already read-only
            pass
    ledger = Ledger(tokens, audit_positions(train["seed"], len(tokens)))
    job = JobSpec(train["seed"], train["nproc"], tokenizer.name)
    process, got = _phase(job, phase, "eval", phase.out / "code", ledger)
    marked = _span(got, "eval_start", "eval_end")
    ended = teardown_signal("eval", _job_signal(process, phase.out / "eval.log"), got,
                            scored_all=bool((ledger.count[1:] > 0).all()))
    findings = _process_findings("eval", process, got, phase.limit_s, ended)
    findings += _time_findings("eval", marked, rules.tracks[train["track"]].eval_limit_s, "eval_time")
    findings += ledger.findings()
    if _fingerprint(phase.artifact) != artifact_before:
        findings.append(Finding("isolation", FAIL, "isolation.artifact_modified",
                                "the eval phase changed the artifact it was given read-only"))
    facts: dict[str, Any] = {}
    if process.returncode == 0 or ended:
        metric, facts = _metric_findings(ledger, tokens, tokenizer, sidecar, got)
        findings += metric
    record = {"phase": "eval", "skipped": False, "limit_s": phase.limit_s, "process": _process_facts(process, marked),
              "metric": facts, "findings": [f.to_dict() for f in findings]}
    _write_record(phase.out, "eval", record)
    return record


def verify(out: Path, rules: Rules) -> Verdict:
    """The seed's verdict from its phase records, its code and its artifact; written to verdict.json."""
    train = _read_record(out, "train")
    if train is None:
        raise UsageError(f"{out}: no phase_train.json; not a `pgolf run` seed folder")
    evaluation = _read_record(out, "eval")
    track = rules.tracks[train["track"]]
    code = out / "code"
    code_bytes = counted_bytes(code, scan_code(code, rules), compressed=False, rules=rules).total
    findings = [_finding(f) for f in train["findings"]]
    size, total = _artifact_findings(artifact_of(out), code_bytes, track.artifact_limit_bytes)
    findings += size
    facts: dict[str, Any] = {"artifact_bytes": total, "train_wall_s": train["process"]["wall_s"],
                             "train_marked_s": train["process"]["marked_s"], "steps": train.get("steps")}
    phases = {"train": train["process"]}
    if evaluation is None:
        findings.append(Finding("phase", FAIL, "phase.eval_missing", "no eval phase record: evaluation never ran "
                                "(or was interrupted)"))
    else:
        findings += [_finding(f) for f in evaluation["findings"]]
        if not evaluation["skipped"]:
            phases["eval"] = evaluation["process"]
            facts.update(eval_wall_s=evaluation["process"]["wall_s"], eval_marked_s=evaluation["process"]["marked_s"],
                         **evaluation["metric"])
    verdict = Verdict(train["submission"], train["track"], None, findings, {train["seed"]: facts}, command="run",
                      extra={"nproc": train["nproc"], "phases": phases})
    write_text_atomic(out / "verdict.json", verdict_json(verdict.to_dict()))
    return verdict


def _portable(artifact: Path, out: Path) -> str:
    """The artifact's path relative to the seed folder when inside it, so the record stays true when the
    folder is read from another mount (a container's /runs on the host)."""
    artifact, out = artifact.resolve(), out.resolve()
    return artifact.relative_to(out).as_posix() if artifact.is_relative_to(out) else str(artifact)


def reported_steps(out: Path, facts: dict[str, Any], rules: Rules) -> int | None:
    """The optimizer steps the submission reported: with its train_end mark, else in its own train log."""
    steps = facts.get("steps")
    if steps is None and (out / "train.log").is_file():
        steps = read_log(out / "train.log", out, rules).steps
    return steps


def artifact_of(out: Path) -> Path:
    """Where the seed's train phase left its artifact (the seed folder's artifact/ unless told otherwise)."""
    train = _read_record(out, "train")
    return out / train["artifact"] if train else out / "artifact"


def run_seed(spec: RunSpec, rules: Rules) -> Verdict:
    """Train, then evaluate, one seed (natively, or each phase as its own container); never raises for what
    the submission does."""
    if not (spec.submission / "train_gpt.py").is_file():
        raise UsageError(f"{spec.submission}: no train_gpt.py to run")
    if spec.image:  # the engine answers and the image exists; every phase runs this very image
        spec = replace(spec, image=container.prepare(spec.image, spec.gpus, spec.echo))
    try:
        spec.out.mkdir(parents=True)
    except FileExistsError:
        raise UsageError(f"{spec.out} already exists; pgolf never overwrites a run (choose --out)") from None
    if spec.legacy:
        return _run_legacy(spec, rules, rules.tracks[spec.track])
    try:
        train_data = _view(spec, "train", train_shards(spec.dataset))
        val_data = _view(spec, "val", val_shards(spec.dataset) + val_byte_sidecars(spec.dataset))
    except (ShardError, OSError) as exc:
        raise UsageError(f"cannot prepare the data views: {exc}") from None
    artifact = spec.out / "artifact"
    train_names = tuple(sorted(p.name for p in train_data.glob("fineweb_*")))
    val_names = tuple(sorted(p.name for p in val_data.glob("fineweb_*")))
    hide_from_train = ((spec.dataset, val_names), (val_data, val_names))
    hide_from_eval = ((spec.dataset, train_names), (train_data, train_names))
    engine = {"image": spec.image, "gpus": spec.gpus, "memory": spec.memory}
    train_phase(PhaseSpec(spec.out, train_data, artifact, spec.train_limit_s, spec.grace_s, spec.echo,
                          hide_from_train, **engine), spec.submission, spec.seed, spec.nproc, spec.track, rules)
    eval_phase(PhaseSpec(spec.out, val_data, artifact, spec.eval_limit_s, spec.grace_s, spec.echo,
                         hide_from_eval, **engine), rules)
    return verify(spec.out, rules)


LEGACY_GAPS = {  # what a protocol run guarantees and a --legacy run does not
    "separate_phases": "training and evaluation ran as one job: evaluation could use anything training left in "
                       "memory or on disk, and the train/eval time split is only what the script's log says",
    "data_isolation": "DATA_PATH held both the training and the validation shards: nothing kept validation data "
                      "out of training",
    "harness_bpb": "val_bpb is the script's own number read from its log, not computed by the harness from "
                   "per-token NLLs with its own byte accounting",
    "score_ledger": "no score ledger: single pass (C4), score before update (C3) and normalised distributions (C2) "
                    "were not audited",
}


def _run_legacy(spec: RunSpec, rules: Rules, track: Track) -> Verdict:
    """A script that trains, quantizes and evaluates in one process and prints its own results: one
    torchrun job under the harness's clock and hard limit (train + eval), network off, both splits in
    DATA_PATH because such scripts read both; scores and sizes are read from its log as `pgolf check`
    reads them, and the verdict names every guarantee that this leaves unenforced."""
    try:
        data = _view(spec, "all", train_shards(spec.dataset) + val_shards(spec.dataset)
                     + val_byte_sidecars(spec.dataset))
    except (ShardError, OSError) as exc:
        raise UsageError(f"cannot prepare the data view: {exc}") from None
    code, scan, before = _stage(spec.out, spec.submission, rules)
    artifact = spec.out / "artifact"
    artifact.mkdir()
    limit = spec.train_limit_s + spec.eval_limit_s
    job_spec = JobSpec(spec.seed, spec.nproc, spec.tokenizer.name)
    if spec.image:
        job = _in_container(job_spec, PhaseSpec(spec.out, data, artifact, limit, spec.grace_s, spec.echo,
                                                 image=spec.image, gpus=spec.gpus, memory=spec.memory),
                            "legacy", code, None)
    else:
        job = run_phase(_torchrun(spec.nproc), env=_env(job_spec, "legacy", data, artifact, None), cwd=code,
                        log_path=spec.out / "legacy.log", limit_s=limit, grace_s=spec.grace_s, network=False,
                        prefix="[legacy] ", echo=spec.echo)

    findings = [Finding("guarantees", WARN, f"guarantees.{name}", text) for name, text in LEGACY_GAPS.items()]
    findings += _process_findings("legacy", job, Received(), limit)
    budget = (track.train_limit_s or 0) + (track.eval_limit_s or 0)
    if budget and job.wall_s > budget:
        findings.append(Finding("phase", WARN, "phase.over_budget", f"the whole job took {job.wall_s:.1f} s (harness "
                                f"clock), more than the track's train + eval budget of {budget:g} s",
                                data={"wall_s": job.wall_s}))
    log = read_log(spec.out / "legacy.log", spec.out, rules)
    findings += [Finding("logs", WARN, "logs.problem", f"{log.name}: {p}", (Evidence(log.name),)) for p in log.problems]
    score = pick_score(log, rules)
    seed = SeedEvidence(spec.seed, log, score)
    facts: dict[str, Any] = {"wall_s": job.wall_s}
    if score is None:
        findings.append(Finding("metric", FAIL, "metric.no_score", f"cannot find a post-quantization score line "
                                f"in {log.name} (looked for the labels in rules.yaml score_labels)",
                                (Evidence(log.name),)))
    else:
        facts.update(logged_val_bpb=score.val_bpb, logged_val_loss=score.val_loss, score_label=score.label)
        findings.append(Finding("metric", INFO, "metric.from_log", f"val_bpb {score.val_bpb} ({score.label}) is the "
                                "script's own number from its log, not measured by the harness",
                                (Evidence(log.name, score.line, score.text),), data=dict(facts)))
    compressed = log.get("code_bytes_compressed") is not None
    size = budgets.size_findings(seed, counted_bytes(code, scan, compressed, rules), track, Claims(), rules)
    facts["logged_artifact_bytes"] = next((f.data["artifact_bytes"] for f in size if "artifact_bytes" in f.data), None)
    findings += size + budgets.train_findings(seed, track, rules) + budgets.eval_findings(seed, track, rules)
    after = _fingerprint(code)
    written = {f"code/{name}": (code / name).stat().st_size for name, digest in after.items()
               if before.get(name) != digest and "__pycache__" not in name}
    written |= {f"artifact/{name}": (artifact / name).stat().st_size for name in _fingerprint(artifact)}
    findings.append(Finding("size", INFO, "size.files_written", f"the script wrote {len(written)} file(s) into "
                            f"PGOLF_ARTIFACT_DIR or its working directory ({sum(written.values()):,} bytes: "
                            f"{', '.join(written) or 'none'}); the artifact bytes above come from its log",
                            data={"files": written}))
    extra = {"legacy": True, "nproc": spec.nproc, "phases": {"legacy": _process_facts(job, None)}}
    verdict = Verdict(str(spec.submission), spec.track, None, findings, {spec.seed: facts}, command="run", extra=extra)
    write_text_atomic(spec.out / "verdict.json", verdict_json(verdict.to_dict()))
    return verdict
