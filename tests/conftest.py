"""Shared test helpers: real record folders copied to a temp dir, mutated per test."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from harness.check.checker import check_folder
from harness.rules import load_rules

FIXTURES = Path(__file__).parent / "fixtures" / "records"
BASELINE = "track_10min_16mb/2026-03-17_NaiveBaseline"
LEAKY = "track_10min_16mb/2026-03-23_LeakyReLU_LegalTTT_ParallelMuon"
SP8192 = "track_10min_16mb/2026-04-09_SP8192_3LayerRecur_ParResid_QK525_LegalTTT"
PHASED = "track_10min_16mb/2026-04-14_MultiPhaseGlobalSGD_PhasedTTT"
DGATTN = "track_non_record_16mb/2026-03-23_DGAttention_DavidGao"


@pytest.fixture(scope="session")
def rules():
    return load_rules()


@pytest.fixture
def record(tmp_path):
    """copy('track/name') -> a writable copy under tmp/records/track/name."""

    def copy(rel: str, name: str | None = None) -> Path:
        track, folder = rel.split("/")
        dest = tmp_path / "records" / track / (name or folder)
        shutil.copytree(FIXTURES / rel, dest)
        for path in dest.rglob("*"):
            path.chmod(0o644 if path.is_file() else 0o755)
        return dest

    return copy


def codes(verdict, status=None) -> set[str]:
    """Finding codes of a verdict, optionally only those with a given status."""
    return {f.code for f in verdict.findings if status is None or f.status == status}


def finding(verdict, code):
    found = [f for f in verdict.findings if f.code == code]
    assert found, f"no {code} finding; have {sorted(codes(verdict))}"
    return found[0]


def judge(folder: Path, rules, **kwargs):
    kwargs.setdefault("profile", "historic")
    return check_folder(folder, rules, **kwargs)


def edit(path: Path, old: str, new: str, count: int = 1) -> None:
    text = path.read_text("utf-8")
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, count), "utf-8")


def run_failures(run: Path) -> str:
    """Why a `pgolf run -q` failed: every failing finding of every seed verdict it wrote (quiet runs print nothing)."""
    lines = [f"{verdict.parent.name}: {f['code']}: {f['message']}" for verdict in sorted(run.glob("seed_*/verdict.json"))
             for f in json.loads(verdict.read_text())["findings"] if f["status"] == "fail"]
    return "\n".join(lines) or f"no failing finding in {run}"
