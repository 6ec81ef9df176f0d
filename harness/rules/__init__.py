"""The rules as data: tracks, limits, tolerances, significance policies, tokenizers.

rules.yaml beside this file is the single source; it is validated against
schemas/rules.schema.json when loaded, so a malformed rule file stops the tool
with the offending key instead of producing a wrong verdict.
"""
from __future__ import annotations

import re
import stat
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml

from harness.findings import UsageError
from harness.validation import errors


class RulesError(Exception):
    """The rules file is missing keys or has values of the wrong kind."""


@dataclass(frozen=True)
class Track:
    name: str
    title: str
    record: bool
    artifact_limit_bytes: int
    train_limit_s: float | None
    eval_limit_s: float | None
    min_seeds: int
    json_track_names: tuple[str, ...]
    hardware: dict[str, Any] | None
    unlimited_compute_must_say_so: bool


@dataclass(frozen=True)
class Rules:
    raw: dict[str, Any]
    tracks: dict[str, Track]

    def track(self, name: str) -> Track:
        """The named track; a name the rules do not know is the user's error, listing the known ones."""
        if name not in self.tracks:
            raise UsageError(f"unknown track '{name}'; known: {', '.join(self.tracks)}")
        return self.tracks[name]

    @property
    def phase_clock(self) -> dict[str, float]:
        return self.raw["phase_clock"]

    def outside_marks_s(self, phase: str) -> float:
        """How long a phase's wall clock may run outside its marks (rules.yaml phase_clock)."""
        return self.raw["phase_clock"][f"{phase}_outside_marks_s"]

    def hard_limit(self, track: str, phase: str) -> float:
        """Where a phase is stopped: the track's judged limit plus the allowance outside the marks."""
        judged = getattr(self.track(track), f"{phase}_limit_s")
        return judged + self.outside_marks_s(phase) if judged else self.raw["phase_clock"]["unlimited_phase_s"]

    @property
    def tolerances(self) -> dict[str, float]:
        return self.raw["tolerances"]

    @property
    def reproduction(self) -> dict[str, float]:
        """How close `pgolf rerun` must come to each claim."""
        return self.raw["reproduction"]

    @property
    def policies(self) -> dict[str, dict[str, Any]]:
        return self.raw["significance"]["policies"]

    def requirements_missing(self, profile: str) -> str:
        """How a missing requirements.txt is judged under a --profile (fail or warn)."""
        return self.raw["requirements_missing"][profile]

    @property
    def tokenizers(self) -> dict[str, dict[str, Any]]:
        return self.raw["tokenizers"]

    @property
    def code_wrapper(self) -> dict[str, Any]:
        return self.raw["code_wrapper"]

    @property
    def baseline_packages(self) -> frozenset[str]:
        return frozenset(self.raw["baseline_packages"])

    def score_stage(self, label: str) -> str | None:
        """The stage a metric-line label belongs to if it may carry a score, else None."""
        if self._non_score.match(label):
            return None
        for stage, pattern in self._score_patterns:
            if pattern.fullmatch(label):
                return stage
        return None

    def stage_rank(self, stage: str) -> int:
        """0 for the latest evaluation stage (phased TTT), larger for earlier ones."""
        return [s for s, _ in self._score_patterns].index(stage)

    @property
    def _score_patterns(self) -> list[tuple[str, re.Pattern[str]]]:
        return _compile_labels(tuple((d["stage"], d["pattern"]) for d in self.raw["score_labels"]))

    @property
    def _non_score(self) -> re.Pattern[str]:
        return re.compile(self.raw["non_score_labels"])

    def track_for_json_name(self, name: str) -> str | None:
        return next((t.name for t in self.tracks.values() if name in t.json_track_names), None)


@cache
def _compile_labels(pairs: tuple[tuple[str, str], ...]) -> list[tuple[str, re.Pattern[str]]]:
    return [(stage, re.compile(pattern)) for stage, pattern in pairs]


MAX_RULES_BYTES = 1 << 20  # the bundled file is 7 KB


def _read(path: Path) -> str:
    """A --rules file's text: a regular file (a FIFO would block, /dev/zero never ends), bounded, UTF-8."""
    info = path.stat()
    if not stat.S_ISREG(info.st_mode):
        raise RulesError(f"{path}: not a regular file; expected a rules YAML file")
    if info.st_size > MAX_RULES_BYTES:
        raise RulesError(f"{path}: {info.st_size:,} bytes, over the {MAX_RULES_BYTES:,}-byte limit of a rules file")
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RulesError(f"{path}: not UTF-8 text (bad byte at offset {exc.start})") from None


def load_rules(path: Path | None = None) -> Rules:
    """Load and validate a rules file (the bundled one by default)."""
    text = _read(path) if path else files("harness.rules").joinpath("rules.yaml").read_text("utf-8")
    try:
        raw = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as exc:
        raise RulesError(f"{path or 'rules.yaml'}: not valid YAML: {exc}") from None
    problems = list(errors("urn:pgolf:rules", raw))
    if problems:
        raise RulesError(f"{path or 'rules.yaml'}: " + "; ".join(problems))
    tracks = {
        name: Track(
            name=name,
            title=t["title"],
            record=t["record"],
            artifact_limit_bytes=t["artifact_limit_bytes"],
            train_limit_s=t["train_limit_s"],
            eval_limit_s=t["eval_limit_s"],
            min_seeds=t["min_seeds"],
            json_track_names=tuple(t["json_track_names"]),
            hardware=t.get("hardware"),
            unlimited_compute_must_say_so=t.get("unlimited_compute_must_say_so", False),
        )
        for name, t in raw["tracks"].items()
    }
    return Rules(raw=raw, tracks=tracks)
