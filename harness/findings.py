"""Findings: the one currency every check pays in.

A check never prints or exits; it returns Findings. The verdict, the terminal
report, the JSON and the Markdown are all views of the same list, so CI
consumers and humans always see the same judgement.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from harness.checks import CHECKS

PASS, INFO, WARN, FAIL = "pass", "info", "warn", "fail"
_SEVERITY = {INFO: 0, PASS: 0, WARN: 1, FAIL: 2}


class UsageError(Exception):
    """The input cannot be judged at all (exit 2): not a folder, unreadable, bad option."""


@dataclass(frozen=True)
class Evidence:
    """Where a finding comes from: a file, optionally a 1-based line and its text."""

    file: str
    line: int | None = None
    text: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"file": self.file}
        if self.line is not None:
            out["line"] = self.line
        if self.text is not None:
            out["text"] = self.text
        return out

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return where if self.text is None else f"{where}: {self.text}"


@dataclass(frozen=True)
class Finding:
    """One judgement. `check` is the stable group name CI filters on, one of harness.checks.CHECKS;
    `code` names the specific finding type."""

    check: str
    status: str
    code: str
    message: str
    evidence: tuple[Evidence, ...] = ()
    seed: int | None = None
    data: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.check not in CHECKS:  # refused where it is made, in whichever wing, not when a report meets it
            raise ValueError(f"check {self.check!r} is not registered in harness/checks.py")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "check": self.check,
            "status": self.status,
            "code": self.code,
            "message": self.message,
            "evidence": [e.to_dict() for e in self.evidence],
        }
        if self.seed is not None:
            out["seed"] = self.seed
        if self.data:
            out["data"] = self.data
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Finding:
        """A finding as to_dict wrote it (a phase record read back by verify)."""
        return cls(d["check"], d["status"], d["code"], d["message"],
                   tuple(Evidence(e["file"], e.get("line"), e.get("text")) for e in d.get("evidence", [])),
                   d.get("seed"), d.get("data", {}))


def overall_status(findings: list[Finding]) -> str:
    """fail if anything failed, warn if anything warned, else pass."""
    worst = max((_SEVERITY[f.status] for f in findings), default=0)
    return {0: PASS, 1: WARN, 2: FAIL}[worst]
