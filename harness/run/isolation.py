"""The isolation guarantees of a run, each named once: what it promises, how each back end provides
it, the compose.yaml setting that carries it, and the finding its state becomes.

A back end reports, per phase, a state for each guarantee it provides: `enforced` (the job could
not do otherwise), `observed` (watched from outside, not prevented) or `not enforced`. The verdict
turns every reported state into one `isolation.<name>` finding through `finding`; a guarantee a
back end does not provide is not reported by it (its entry says so). The guarantees a `--legacy`
run gives up are listed here too (`LEGACY_GAPS`), as `guarantees.<name>` warnings.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from harness.findings import INFO, PASS, WARN, Finding

ENFORCED, OBSERVED, NOT_ENFORCED = "enforced", "observed", "not enforced"
STATES = (ENFORCED, OBSERVED, NOT_ENFORCED)


@dataclass(frozen=True)
class Guarantee:
    name: str
    promise: str  # what holds when it is enforced, as the verdict says it
    native: str  # how the native back end provides it
    container: str  # how the container back end provides it, read back from the inspected container
    compose: dict[str, Any] | None  # the compose.yaml service settings that carry it (tests hold compose to it)
    phases: tuple[str, ...] = ("train", "eval", "legacy")  # the phases it applies to
    weak: str = WARN  # the finding's status when observed or not enforced
    weak_note: str = ""  # what the verdict adds when it is only observed

    def finding(self, phase: str, state: str) -> Finding:
        if state not in STATES:
            raise ValueError(f"isolation.{self.name}: unknown state {state!r}")
        status = PASS if state == ENFORCED else self.weak
        note = f": {self.promise}" if state == ENFORCED else f" ({self.weak_note})" if self.weak_note else ""
        return Finding("isolation", status, f"isolation.{self.name}",
                       f"{phase}: {self.name.replace('_', ' ')} {state}{note}", data={"phase": phase, "state": state})


GUARANTEES = {g.name: g for g in [
    Guarantee("pid_namespace", "every process of the job lives and dies in its own PID namespace",
              native="bubblewrap --unshare-pid with harness.run.nsinit as PID 1; without bubblewrap, descendants "
                     "tracked through /proc (observed)",
              container="the container's own PID namespace (inspected HostConfig.PidMode private)",
              compose={"pid": None}),
    Guarantee("network", "the job has no network, only loopback",
              native="bubblewrap --unshare-net: a namespace with only lo; attempts counted inside (OutNoRoutes)",
              container="network_mode none (inspected HostConfig.NetworkMode)", compose={"network_mode": "none"}),
    Guarantee("data_view", "the dataset folder and the other phase's view were hidden from the job",
              native="a sandbox root holding only system folders and this phase's view; tripwire folders where "
                     "the hidden ones are",
              container="only this phase's view is mounted, read-only; tripwire folders where the others would be",
              compose={"volumes": ":/data:ro"}, phases=("train", "eval"), weak=INFO,
              weak_note="DATA_PATH holds only this phase's shards, but files outside it stay readable by absolute "
                        "path (the container back end enforces it)"),
    Guarantee("non_root_user", "the job runs as an unprivileged user",
              native="uid 65534 in the sandbox's user namespace, as the init sees it",
              container="an unprivileged uid (inspected Config.User)",
              compose={"user": "${PGOLF_UID}:${PGOLF_GID}"}),
    Guarantee("all_capabilities_dropped", "the job holds no Linux capabilities",
              native="bubblewrap --cap-drop ALL --disable-userns; the init reads CapEff and CapPrm as 0",
              container="cap_drop ALL, no cap_add, not privileged", compose={"cap_drop": ["ALL"]}),
    Guarantee("no_new_privileges", "nothing the job runs can gain privileges",
              native="bubblewrap sets no_new_privs; the init reads NoNewPrivs 1",
              container="security_opt no-new-privileges",
              compose={"security_opt": ["no-new-privileges:true"]}),
    Guarantee("pid_limit", "the job cannot fork without bound",
              native="not provided (no cgroup of its own)", container="pids_limit",
              compose=None, weak=INFO),  # compose.yaml sets none yet; a fork bomb harms the host, not the score
    Guarantee("code_read_only", "the code folder is mounted read-only",
              native="a read-only bind; the init finds it not writable", container="the code mount is read-only",
              compose=None,  # compose's jobs run from the seed folder's code/, which their run mount makes writable
              phases=("train", "eval")),
    Guarantee("artifact_read_only", "the artifact is mounted read-only",
              native="a read-only bind; the init finds it not writable",
              container="the artifact mount is read-only", compose={"volumes": "/artifact:ro"},
              phases=("eval",)),
    Guarantee("root_filesystem_read_only", "the root filesystem is read-only",
              native="bubblewrap --remount-ro /; the init finds / not writable",
              container="read_only root (inspected HostConfig.ReadonlyRootfs)",
              compose={"read_only": True}),
    Guarantee("records_private", "the run's records, event logs and job logs are outside the job's view",
              native="the seed folder is never mounted, only its code, view and artifact; the init finds no record",
              container="the seed folder is never mounted, only its code, view and artifact",
              compose=None),  # compose runs the harness and the job in one container, beside the records
]}

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


def findings(phase: str, states: dict[str, str]) -> list[Finding]:
    """One finding per guarantee the back end reported, in registry order; an unregistered name is a bug."""
    unknown = states.keys() - GUARANTEES.keys()
    if unknown:
        raise ValueError(f"unregistered isolation guarantee(s) {sorted(unknown)}: add them to harness.run.isolation")
    return [g.finding(phase, states[name]) for name, g in GUARANTEES.items() if name in states]


def legacy_findings() -> list[Finding]:
    return [Finding("guarantees", WARN, f"guarantees.{name}", text) for name, text in LEGACY_GAPS.items()]
