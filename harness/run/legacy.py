"""`pgolf run --legacy`: a script that trains, quantizes and evaluates in one process and prints its
own results, run as one torchrun job under the harness's clock and hard limit (train + eval),
network off, both splits in DATA_PATH because such scripts read both. Its scores and sizes are read
from its log as `pgolf check` reads them, and the verdict names every guarantee this leaves
unenforced (harness.run.isolation.LEGACY_GAPS).
"""
from __future__ import annotations

from typing import Any

from harness.atomic import write_text_atomic
from harness.check import budgets
from harness.check.claims import SeedEvidence, pick_score
from harness.code import counted_bytes, scan_code
from harness.data.shards import ShardError, train_shards, val_byte_sidecars, val_shards
from harness.findings import FAIL, INFO, WARN, Evidence, Finding, UsageError
from harness.logs import read_log
from harness.report import verdict_json
from harness.rules import Rules
from harness.run import isolation, judge, payload, seedfolder
from harness.run.backend import PhaseJob
from harness.run.events import Received
from harness.run.phases import data_view, stage
from harness.verdict import Verdict

PHASE = seedfolder.LEGACY_PHASE


def run_legacy(spec, rules: Rules) -> Verdict:
    """One job for the whole script (spec: harness.run.seed.RunSpec); the verdict from its log."""
    track = rules.tracks[spec.track]
    try:
        data = data_view(spec.out, "all", train_shards(spec.dataset) + val_shards(spec.dataset)
                         + val_byte_sidecars(spec.dataset), spec.tokenizer)
    except (ShardError, OSError) as exc:
        raise UsageError(f"cannot prepare the data view: {exc}") from None
    code, staged = stage(spec.out, spec.submission)
    artifact = spec.out / seedfolder.ARTIFACT
    artifact.mkdir()
    limit = spec.train_limit_s + spec.eval_limit_s
    log_path = seedfolder.log_path(spec.out, PHASE)
    job = spec.backend.run_job(PhaseJob(PHASE, spec.seed, spec.nproc, spec.tokenizer.name, code, data, artifact,
                                        None, log_path, limit, spec.grace_s, spec.echo, run=str(spec.out.parent),
                                        private=seedfolder.private_paths(spec.out)))

    findings = isolation.legacy_findings()
    findings += judge.process_findings(PHASE, job, Received(), limit)
    budget = (track.train_limit_s or 0) + (track.eval_limit_s or 0)
    if budget and job.wall_s > budget:
        findings.append(Finding("phase", WARN, "phase.over_budget", f"the whole job took {job.wall_s:.1f} s (harness "
                                f"clock), more than the track's train + eval budget of {budget:g} s",
                                data={"wall_s": job.wall_s}))
    log = read_log(log_path, spec.out, rules)
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
    scan = scan_code(code, rules)
    judged = budgets.seed_budgets(seed, lambda compressed: counted_bytes(code, scan, compressed, rules), track,
                                  rules, run_here=True)
    facts["logged_artifact_bytes"] = next((f.data["artifact_bytes"] for f in judged if "artifact_bytes" in f.data),
                                          None)
    findings += judged
    after, left = payload.scan(code), payload.scan(artifact)
    written = {f"{seedfolder.CODE}/{name}": after.files[name][0] for name, what in payload.changes(staged, after)
               if what != "removed" and name in after.files}
    written |= {f"{seedfolder.ARTIFACT}/{name}": size for name, (size, _) in left.files.items()}
    findings.append(Finding("size", INFO, "size.files_written", f"the script wrote {len(written)} file(s) into "
                            f"PGOLF_ARTIFACT_DIR or its working directory ({sum(written.values()):,} bytes: "
                            f"{', '.join(written) or 'none'}); the artifact bytes above come from its log",
                            data={"files": written}))
    extra = {"legacy": True, "nproc": spec.nproc, "phases": {PHASE: judge.process_facts(job, None)}}
    verdict = Verdict(str(spec.submission), spec.track, None, findings, {spec.seed: facts}, command="run", extra=extra)
    write_text_atomic(spec.out / seedfolder.VERDICT, verdict_json(verdict.to_dict()))
    return verdict
