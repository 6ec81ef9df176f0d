"""Judging a seed: what each phase's process, clocks, bytes and NLLs become as findings, and the
verdict `pgolf verify` assembles from the phase records (harness.run.seedfolder).
"""
from __future__ import annotations

import re
import signal as signals
from pathlib import Path
from typing import Any

import numpy as np

from harness.atomic import write_text_atomic
from harness.findings import FAIL, INFO, PASS, WARN, Finding, UsageError
from harness.report import verdict_json
from harness.rules import Rules
from harness.run import isolation, payload, seedfolder
from harness.run.events import Received
from harness.run.jobs import PhaseProcess
from harness.run.ledger import Ledger
from harness.verdict import Verdict


def span(received: Received, start: str, end: str) -> float | None:
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


def job_signal(p: PhaseProcess, log: Path) -> str | None:
    """The signal that ended the job: its main process's own, else the one torchrun reports for its first
    failed rank (torchrun itself then exits with 1). The torchrun line shares the log with the job's output,
    so a job could forge it; that turns a crash into a WARN only when every score and the result were in."""
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


def process_findings(phase: str, p: PhaseProcess, received: Received, limit_s: float,
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
    out += isolation.findings(phase, p.isolation)
    if p.hidden_reads:
        names = sorted({Path(f).name for f in p.hidden_reads})
        out.append(Finding("isolation", FAIL, "isolation.data_read", f"{phase}: the job read {len(names)} shard(s) "
                           f"this phase may not see: {', '.join(names[:5])}{' …' if len(names) > 5 else ''}",
                           data={"phase": phase, "files": sorted(p.hidden_reads)}))
    if p.network_attempts:
        out.append(Finding("isolation", FAIL if phase == "eval" else WARN, "isolation.network_attempt",
                           f"{phase}: the job tried to reach the network {p.network_attempts} time(s) (refused: no "
                           "network in the phase's namespace)", data={"phase": phase, "count": p.network_attempts}))
    out += p.backend_findings(phase)
    return out


def clock_findings(phase: str, p: PhaseProcess, got: Received, judged_limit: float | None,
                   allowance: float) -> tuple[list[Finding], float | None]:
    """The marked span judged against the track's limit, shown beside the phase's wall clock; wall-clock time
    outside the marks beyond the allowance, and evaluation work sent outside them, are findings: the harness
    cannot see what a job does between its marks, so it bounds what lies outside them. Returns the span too."""
    check, start, end = f"{phase}_time", f"{phase}_start", f"{phase}_end"
    marked = span(got, start, end)
    if marked is None:
        return [Finding(check, WARN, f"{check}.no_marks", f"{phase}: the submission sent no {start}/{end} marks; "
                        f"only the phase's wall clock ({p.wall_s:.1f} s, spawn to reap) is known",
                        data={"wall_s": p.wall_s})], None
    first, last = min(got.marks[start].values()), max(got.marks[end].values())
    before, after = first - p.started, p.ended - last
    facts = {"seconds": marked, "wall_s": p.wall_s, "before_marks_s": before, "after_marks_s": after}
    clocks = f"{marked:.2f} s between the marks, {p.wall_s:.2f} s from spawn to reap (harness clock)"
    if judged_limit is not None and marked > judged_limit:
        out = [Finding(check, FAIL, f"{check}.over_limit", f"{phase}: {clocks}: past the {judged_limit:g} s limit",
                       data=facts)]
    else:
        out = [Finding(check, PASS, f"{check}.within_limit", f"{phase}: {clocks}", data=facts)]
    if before + after > allowance:
        out.append(Finding(check, FAIL if judged_limit is not None else INFO, f"{check}.outside_marks",
                           f"{phase}: {before + after:.1f} s of the phase ran outside its marks ({before:.1f} s "
                           f"before {start}, {after:.1f} s after {end}), more than the {allowance:g} s allowed "
                           "(rules.yaml phase_clock): the marked time leaves that much unmeasured", data=facts))
    if got.work and (got.work[0] < first or got.work[1] > last):
        early, late = max(0.0, first - got.work[0]), max(0.0, got.work[1] - last)
        out.append(Finding(check, FAIL, f"{check}.work_outside_marks",
                           f"{phase}: scores, audits or updates arrived outside the marks ({early:.2f} s before "
                           f"{start}, {late:.2f} s after {end}): the marked time does not cover the scoring",
                           data={"before_s": early, "after_s": late}))
    return out, marked


def change_findings(phase: str, what: str, before: payload.Scan, after: payload.Scan) -> list[Finding]:
    """A FAIL when the phase's job changed the code or the artifact (harness.run.payload's fingerprint)."""
    changed = payload.changes(before, after)
    if not changed:
        return []
    return [Finding("isolation", FAIL, f"isolation.{what}_modified", f"{phase}: the job changed the {what} it ran "
                    f"from: {payload.listed(changed)}", data={"phase": phase, "changed": len(changed)})]


def digest_findings(phase: str, now: payload.Scan, recorded: str | None, what: str, since: str) -> list[Finding]:
    """A FAIL when the code or the artifact a phase is handed is not what the record says it was; a WARN when
    the record holds no digest to compare with (runs made before digests were recorded)."""
    if recorded is None:
        return [Finding("isolation", WARN, f"isolation.{what}_unrecorded", f"{phase}: the train phase's record holds "
                        f"no digest of the {what}, so whether it changed {since} cannot be checked",
                        data={"phase": phase})]
    if now.digest() == recorded:
        return []
    return [Finding("isolation", FAIL, f"isolation.{what}_modified", f"{phase}: the {what} changed {since}",
                    data={"phase": phase})]


def artifact_findings(artifact: payload.Scan, code: payload.Scan, limit: int) -> tuple[list[Finding], int]:
    """The bytes the submission carries, by harness.run.payload's rule, against the track's limit."""
    out: list[Finding] = []
    if not artifact.files and not artifact.refused and not artifact.unreadable:
        return [Finding("size", FAIL, "size.no_artifact", "the train phase left no artifact in PGOLF_ARTIFACT_DIR")], 0
    if artifact.refused:
        one = len(artifact.refused) == 1
        out.append(Finding("size", FAIL, "size.artifact_entry", f"the artifact holds {len(artifact.refused)} "
                           f"{'entry that is' if one else 'entries that are'} not a plain file or folder: "
                           f"{payload.listed(artifact.refused)}; only regular files may carry state to evaluation",
                           data={"entries": len(artifact.refused)}))
    if artifact.unreadable:
        out.append(Finding("size", FAIL, "size.artifact_unreadable", f"the harness could not read "
                           f"{len(artifact.unreadable)} artifact entr{'y' if len(artifact.unreadable) == 1 else 'ies'}"
                           f", so it cannot count them: {payload.listed(artifact.unreadable)}"))
    stray = [p for p in artifact.files if p.rsplit("/", 1)[-1].startswith(".") or p.endswith((".tmp", ".part"))]
    if stray:
        out.append(Finding("size", WARN, "size.temp_files", f"the artifact folder holds temporary files "
                           f"{stray[:payload.MAX_LISTED]}: a write that never finished"))
    total = code.total + artifact.total
    data = {"artifact_bytes": total, "code_bytes": code.total, "model_bytes": artifact.total,
            "name_bytes": code.name_bytes + artifact.name_bytes,
            "files": dict(list({p: size for p, (size, _) in artifact.files.items()}.items())[:payload.MAX_LISTED])}
    status, verb = (FAIL, "over") if total > limit else (PASS, "within")
    out.append(Finding("size", status, f"size.{verb}_limit", f"artifact {total:,} bytes ({code.total:,} code in "
                       f"{len(code.files)} file(s) + {artifact.total:,} in {len(artifact.files)} artifact file(s); "
                       f"names included), {verb} the {limit:,}-byte limit", data=data))
    return out, total


def metric_findings(ledger: Ledger, tokens: np.ndarray, tokenizer: bytes, sidecar: np.ndarray | None,
                     received: Received) -> tuple[list[Finding], dict[str, Any]]:
    """val_bpb from the ledger's NLLs with the harness's byte accounting, against the submission's own."""
    import sentencepiece as spm

    from harness.metric import build_table, score

    if np.isnan(ledger.nll[1:]).any():
        return [Finding("metric", FAIL, "metric.incomplete", "val_bpb not computed: not every position was scored")], {}
    if sidecar is not None:
        result = score(ledger.nll[1:], tokens, sidecar=sidecar)
    else:
        result = score(ledger.nll[1:], tokens, table=build_table(spm.SentencePieceProcessor(model_proto=tokenizer)))
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


def process_facts(p: PhaseProcess, marked_s: float | None) -> dict[str, Any]:
    facts = {"wall_s": p.wall_s, "marked_s": marked_s, "returncode": p.returncode, "isolation": p.isolation}
    return facts | p.backend_facts()


def verify(out: Path, rules: Rules) -> Verdict:
    """The seed's verdict from its phase records, its code and its artifact; written to verdict.json."""
    train = seedfolder.read_record(out, "train")
    if train is None:
        raise UsageError(f"{out}: no phase_train.json; not a `pgolf run` seed folder")
    evaluation = seedfolder.read_record(out, "eval")
    track = rules.track(train["track"])
    code, artifact = payload.scan(out / seedfolder.CODE), payload.scan(seedfolder.artifact_of(out))
    findings = [Finding.from_dict(f) for f in train["findings"]]
    findings += digest_findings("verify", code, train.get("code_digest"), "code", "since the train phase staged it")
    size, total = artifact_findings(artifact, code, track.artifact_limit_bytes)
    findings += size
    facts: dict[str, Any] = {"artifact_bytes": total, "code_bytes": code.total, "model_bytes": artifact.total,
                             "train_wall_s": train["process"]["wall_s"],
                             "train_marked_s": train["process"]["marked_s"], "steps": train.get("steps")}
    phases = {"train": train["process"]}
    if evaluation is None:
        findings.append(Finding("phase", FAIL, "phase.eval_missing", "no eval phase record: evaluation never ran "
                                "(or was interrupted)"))
    else:
        findings += [Finding.from_dict(f) for f in evaluation["findings"]]
        if not evaluation["skipped"]:
            phases["eval"] = evaluation["process"]
            facts.update(eval_wall_s=evaluation["process"]["wall_s"], eval_marked_s=evaluation["process"]["marked_s"],
                         **evaluation["metric"])
    probe = seedfolder.read_probe(out)
    if probe is not None:
        findings += [Finding.from_dict(f) for f in probe["findings"]]
    verdict = Verdict(train["submission"], train["track"], None, findings, {train["seed"]: facts}, command="run",
                      extra={"nproc": train["nproc"], "phases": phases})
    write_text_atomic(out / seedfolder.VERDICT, verdict_json(verdict.to_dict()))
    return verdict
