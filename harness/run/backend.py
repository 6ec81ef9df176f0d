"""Where a phase's job runs: the one interface the phases call, and the native back end.

A phase (harness.run.phases) describes its job once, in host paths (`PhaseJob`); a back end runs it
and returns a `PhaseProcess`: `Native` as a process tree on this machine (harness.run.native),
`Container` as a container of an image (harness.run.container). Each back end maps the paths to
what its job sees and builds the job's environment with `job_environment`, so the protocol's
variables are spelled once.
"""
from __future__ import annotations

import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from harness.client import CLIENT_DIR
from harness.client.pgolf_events import PROTOCOL
from harness.run.jobs import PhaseProcess


@dataclass(frozen=True)
class PhaseJob:
    """One phase's job, in host paths."""
    phase: str  # train | eval | legacy
    seed: int
    nproc: int
    tokenizer: str  # file name of the SentencePiece model inside `data`
    code: Path  # the working directory: the staged submission
    data: Path  # what the job sees as DATA_PATH
    artifact: Path  # PGOLF_ARTIFACT_DIR
    events: Path | None  # the event server's socket; None: no event channel
    log: Path  # the job's output
    limit_s: float  # hard limit: SIGTERM there, SIGKILL after the grace
    grace_s: float
    echo: bool
    hide: tuple[tuple[Path, tuple[str, ...]], ...] = ()  # folders the job must not read, with their file names
    run: str = ""  # the run folder, for labels
    private: tuple[Path, ...] = ()  # the run's records: never in the job's view
    audit_seed: int | None = None  # PGOLF_AUDIT_SEED (eval): which positions' distributions the job sends
    enough: threading.Event | None = None  # set once the harness has every score it needs: stop the job


class Backend(Protocol):
    def prepare(self, echo: bool) -> Backend:
        """Before a seed: check what this back end needs; return the back end every phase of the seed uses."""

    def run_job(self, job: PhaseJob) -> PhaseProcess:
        """Run the job to completion or to its hard limit; a crash is data, never an exception."""

    def settings(self) -> dict[str, Any] | None:
        """What a rerun records to be resumed the same way; None natively."""


def job_environment(job: PhaseJob, data: PurePosixPath, artifact: PurePosixPath, events: PurePosixPath | None,
                    client: PurePosixPath, base: dict[str, str]) -> dict[str, str]:
    """The job's environment: `base` with the protocol's variables, paths as the job sees them."""
    env = {k: v for k, v in base.items() if not k.startswith("PGOLF_")}
    env.update({
        "PGOLF_PHASE": job.phase, "PGOLF_PROTOCOL": str(PROTOCOL), "PGOLF_SEED": str(job.seed), "SEED": str(job.seed),
        "DATA_PATH": str(data), "TOKENIZER_PATH": str(data / job.tokenizer),
        "PGOLF_ARTIFACT_DIR": str(artifact), "PGOLF_AUDIT_SEED": str(job.seed if job.audit_seed is None else job.audit_seed), "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1",  # the code folder stays as staged
        "PYTHONPATH": os.pathsep.join(filter(None, [str(client), base.get("PYTHONPATH")])),
    })
    if events is not None:
        env["PGOLF_EVENTS"] = str(events)
    return env


def torchrun(nproc: int, python: str = sys.executable, *options: str) -> list[str]:
    return [python, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *options,
            "train_gpt.py"]


@dataclass(frozen=True)
class Native:
    """The job as a process tree of this machine, in its own namespaces where the OS allows."""

    def prepare(self, echo: bool) -> Native:
        return self

    def run_job(self, job: PhaseJob) -> PhaseProcess:
        """The job in a bubblewrap sandbox (harness.run.native): code, data view and client read-only; the
        artifact writable in train (read-only in eval); a --legacy script also writes its working directory."""
        from harness.run.native import Sandbox, run_phase

        path = PurePosixPath
        env = job_environment(job, path(job.data), path(job.artifact), path(job.events) if job.events else None,
                              path(CLIENT_DIR), dict(os.environ))
        writes = {"train": (job.artifact,), "eval": (), "legacy": (job.artifact, job.code)}[job.phase]
        sockets = (job.events.parent,) if job.events else ()
        sandbox = Sandbox(read_only=tuple(p for p in (job.code, job.data, job.artifact, CLIENT_DIR, *sockets)
                                          if p not in writes), writable=writes, hide=job.hide, absent=job.private,
                          unwritable=(("code_read_only", job.code),) * (job.phase != "legacy")
                          + (("artifact_read_only", job.artifact),) * (job.phase == "eval"),
                          hostname=f"pgolf-{job.phase}")
        return run_phase(torchrun(job.nproc), env=env, cwd=job.code, log_path=job.log, limit_s=job.limit_s,
                         grace_s=job.grace_s, prefix=f"[{job.phase}] ", echo=job.echo, sandbox=sandbox,
                         enough=job.enough)

    def settings(self) -> None:
        return None
