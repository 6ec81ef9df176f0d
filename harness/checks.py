"""Every check name a finding may carry, once, in the order reports list them, with what it judges.

A check name is the stable group CI filters on, so it is registered here before any wing uses it:
`Finding` refuses a name missing from CHECKS, the reports order groups by it, and
schemas/verdict.schema.json lists the same names in the same order (a test holds them equal).
"""
from __future__ import annotations

CHECKS: dict[str, str] = {
    "rerun": "a claimed seed run again: does its score reproduce",
    "files": "the folder: its name, required files, logs, symlinks, paths that escape it",
    "json": "submission.json: readable, valid for the profile, consistent with the folder",
    "logs": "the seed logs: readable, each with a seed and a score line",
    "claims": "the claims against the logs: which log backs which seed, headline and spread",
    "size": "artifact bytes: the logged model plus the recounted code, against the track's limit",
    "train_time": "training time against the track's limit",
    "eval_time": "evaluation time against the track's limit",
    "steps": "optimizer steps, claimed against reproduced",
    "hardware": "world size, gradient accumulation and GPU model against the track's hardware",
    "data": "the validation set is the canonical one for the tokenizer",
    "statistics": "reproduced seeds against claimed ones in aggregate: mean difference, Welch test",
    "significance": "the new seeds against the frontier's, under rules.yaml's policies",
    "lint": "a static read of the shipped code for what the rules forbid",
    # Below, the groups of `pgolf run` and `pgolf doctor`, listed after the above in alphabetical order.
    "container": "the Docker engine a phase ran under: its image, clocks, clean-up",
    "doctor": "this machine's readiness to run pgolf",
    "guarantees": "what a --legacy run leaves unenforced",
    "isolation": "what each phase could see and reach: data views, network, files",
    "ledger": "the score ledger: single pass, score before update, normalised distributions",
    "metric": "val_bpb as the harness computes it, against the submission's own",
    "phase": "each phase's process: exit, time limit, artifact",
    "probe": "the eval job rerun on streams the harness built: causal scores, targets unread",
    "protocol": "the event channel between the submission and the harness",
}


def rank(check: str) -> int:
    """Where a check's group stands in a report."""
    return list(CHECKS).index(check)
