"""Judging a seed: what each phase's process, clocks, bytes and NLLs become as findings, and the
verdict `pgolf verify` assembles from the phase records (harness.run.seedfolder).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from harness.atomic import write_text_atomic
from harness.code import counted_bytes, scan_code
from harness.findings import FAIL, INFO, PASS, WARN, Finding, UsageError
from harness.report import verdict_json
from harness.rules import Rules
from harness.run import isolation, seedfolder
from harness.run.events import Received
from harness.run.jobs import PhaseProcess
from harness.run.ledger import Ledger
from harness.verdict import Verdict


def span(received: Received, start: str, end: str) -> float | None:
    """Harness-clock seconds from the first rank's start mark to the last rank's end mark."""
    if start in received.marks and end in received.marks:
        return max(received.marks[end].values()) - min(received.marks[start].values())
    return None


def process_findings(phase: str, p: PhaseProcess, received: Received, limit_s: float) -> list[Finding]:
    out: list[Finding] = []
    if p.timed_out:
        out.append(Finding("phase", FAIL, "phase.timeout", f"{phase} phase passed its hard limit of {limit_s:g} s "
                           f"and was stopped ({p.signal or 'exit ' + str(p.returncode)})",
                           data={"phase": phase, "wall_s": p.wall_s}))
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


def time_findings(phase: str, seconds: float | None, judged_limit: float | None, check: str) -> list[Finding]:
    if seconds is None:
        return [Finding(check, WARN, f"{check}.no_marks", f"{phase}: the submission sent no {phase}_start/"
                        f"{phase}_end marks; only the phase's wall clock is known")]
    if judged_limit is not None and seconds > judged_limit:
        return [Finding(check, FAIL, f"{check}.over_limit", f"{phase}: {seconds:.1f} s between the marks, past the "
                        f"{judged_limit:g} s limit", data={"seconds": seconds})]
    return [Finding(check, PASS, f"{check}.within_limit", f"{phase}: {seconds:.2f} s between the marks "
                    "(harness clock)", data={"seconds": seconds})]


def artifact_findings(artifact: Path, code_bytes: int, limit: int) -> tuple[list[Finding], int]:
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


def metric_findings(ledger: Ledger, tokens: np.ndarray, tokenizer: Path, sidecar: np.ndarray | None,
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


def process_facts(p: PhaseProcess, marked_s: float | None) -> dict[str, Any]:
    facts = {"wall_s": p.wall_s, "marked_s": marked_s, "returncode": p.returncode, "isolation": p.isolation}
    return facts | p.backend_facts()


def verify(out: Path, rules: Rules) -> Verdict:
    """The seed's verdict from its phase records, its code and its artifact; written to verdict.json."""
    train = seedfolder.read_record(out, "train")
    if train is None:
        raise UsageError(f"{out}: no phase_train.json; not a `pgolf run` seed folder")
    evaluation = seedfolder.read_record(out, "eval")
    track = rules.tracks[train["track"]]
    code = out / seedfolder.CODE
    code_bytes = counted_bytes(code, scan_code(code, rules), compressed=False, rules=rules).total
    findings = [Finding.from_dict(f) for f in train["findings"]]
    size, total = artifact_findings(seedfolder.artifact_of(out), code_bytes, track.artifact_limit_bytes)
    findings += size
    facts: dict[str, Any] = {"artifact_bytes": total, "train_wall_s": train["process"]["wall_s"],
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
    verdict = Verdict(train["submission"], train["track"], None, findings, {train["seed"]: facts}, command="run",
                      extra={"nproc": train["nproc"], "phases": phases})
    write_text_atomic(out / seedfolder.VERDICT, verdict_json(verdict.to_dict()))
    return verdict
