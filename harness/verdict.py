"""The verdict: what a command concluded about a submission, in the shape of schemas/verdict.schema.json.

`pgolf check`, `pgolf run` and `pgolf rerun` all return one, so CI consumers
read one format and the report views render any of them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from harness import __version__
from harness.findings import Finding, overall_status


@dataclass
class Verdict:
    target: str
    track: str
    profile: str | None
    findings: list[Finding]
    seeds: dict[int, dict[str, Any]] = field(default_factory=dict)
    command: str = "check"
    extra: dict[str, Any] = field(default_factory=dict)  # command-specific facts (phase timings, ...)

    @property
    def status(self) -> str:
        return overall_status(self.findings)

    def to_dict(self) -> dict[str, Any]:
        counts = {s: sum(f.status == s for f in self.findings) for s in ("pass", "info", "warn", "fail")}
        return {
            "schema_version": 1,
            "tool": {"name": "pgolf", "version": __version__},
            "command": self.command,
            "target": self.target,
            "track": self.track,
            "profile": self.profile,
            "status": self.status,
            "counts": counts,
            "seeds": {str(k): v for k, v in sorted(self.seeds.items())},
            "findings": [f.to_dict() for f in self.findings],
            **self.extra,
        }
