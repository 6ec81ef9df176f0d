"""One seeded run of a submission as isolated, timed phases, judged by the harness.

Per seed: a train job that sees only training shards and must leave an artifact, then a fresh eval
job that sees only the artifact, the code and the validation shards, without network
(harness.run.phases), then the verdict (harness.run.judge), all in the seed's folder
(harness.run.seedfolder), on the back end the run was given (harness.run.backend). A `--legacy`
run is one job instead (harness.run.legacy).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from harness.data.shards import ShardError, train_shards, val_byte_sidecars, val_shards
from harness.findings import UsageError
from harness.rules import Rules
from harness.run import payload, seedfolder
from harness.run.backend import Backend, Native
from harness.run.judge import verify
from harness.run.legacy import run_legacy
from harness.run.phases import PhaseSpec, data_view, eval_phase, train_phase
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
    backend: Backend = Native()


def run_seed(spec: RunSpec, rules: Rules) -> Verdict:
    """Train, then evaluate, one seed; never raises for what the submission does."""
    if not (spec.submission / "train_gpt.py").is_file():
        raise UsageError(f"{spec.submission}: no train_gpt.py to run")
    spec = replace(spec, backend=spec.backend.prepare(spec.echo))
    try:
        spec.out.mkdir(parents=True)
    except FileExistsError:
        raise UsageError(f"{spec.out} already exists; pgolf never overwrites a run (choose --out)") from None
    if spec.legacy:
        return run_legacy(spec, rules)
    try:
        train_data = data_view(spec.out, "train", train_shards(spec.dataset), spec.tokenizer)
        val_data = data_view(spec.out, "val", val_shards(spec.dataset) + val_byte_sidecars(spec.dataset),
                             spec.tokenizer)
    except (ShardError, OSError) as exc:
        raise UsageError(f"cannot prepare the data views: {exc}") from None
    artifact = spec.out / seedfolder.ARTIFACT
    train_names = tuple(sorted(p.name for p in train_data.glob("fineweb_*")))
    val_names = tuple(sorted(p.name for p in val_data.glob("fineweb_*")))
    hide_from_train = ((spec.dataset, val_names), (val_data, val_names))
    hide_from_eval = ((spec.dataset, train_names), (train_data, train_names))
    val_digest = payload.scan(val_data).digest()  # the tokenizer is one inode in both views: a train job must not touch it
    train_phase(PhaseSpec(spec.out, train_data, artifact, spec.train_limit_s, spec.grace_s, spec.echo,
                          hide_from_train, spec.backend), spec.submission, spec.seed, spec.nproc, spec.track, rules)
    eval_phase(PhaseSpec(spec.out, val_data, artifact, spec.eval_limit_s, spec.grace_s, spec.echo,
                         hide_from_eval, spec.backend), rules, val_digest)
    return verify(spec.out, rules)
