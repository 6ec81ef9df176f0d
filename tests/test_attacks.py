"""The adversarial suite (issue 16): examples/tiny with one cheat each, as a participant who reads pgolf's
source would try it, run end to end by `pgolf run` natively and with --container.

Each folder of tests/attack_cases is a case: its train_gpt.py (staged with examples/tiny as tiny.py
and the shared attack_cases/cheat.py; a folder without one runs examples/tiny itself) and its
expect.json: "why", the verdict "status", the "codes" that must be present with their status,
"blocked" (the log must show the cheat's own "cheat blocked: ..." crash, so a crash for another
reason does not count), optional "rules" (merged over rules.yaml), "probe" (run with --probe: the
eval job rerun on probe streams, harness.run.probe; a list adds its options, e.g. ["--cuts", "2"] for
a cheat a single change point misses when it falls on a window's first position), "ship" (files of N bytes added
to the submission), "serve" (a host Unix socket an accomplice serves bytes on), "native"/"container"
(overrides where the mechanism differs) and "known_gap" (a hole the harness still has: the test
xfails, strictly, and only because the run PASSED, i.e. the cheat worked; any other failure fails).
A cheat is written so that, were it not stopped, the run would PASS with a better or stolen result.

CI runs the cases marked "ci" (at least one per category, each on both back ends);
PGOLF_ATTACKS=all runs every case. PGOLF_ATTACK_IMAGE names the image (default pgolf:cpu, built
by tools/build-image first).
"""
from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from harness.paths import REPO
from tiny_variants import broken_source

CASES = Path(__file__).parent / "attack_cases"
TINY = broken_source()  # examples/tiny with its TINY_BUG switches (two cases set tiny.BUG)
IMAGE = os.environ.get("PGOLF_ATTACK_IMAGE", "pgolf:cpu")
BACKENDS = ("native", "container")


def expectation(case: str, backend: str) -> dict:
    expect = json.loads((CASES / case / "expect.json").read_text())
    return {**expect, **expect.get(backend, {})}


class CheatWorked(AssertionError):
    """A case meant to FAIL passed: the harness has the hole its cheat uses (xfail only where it is a known gap)."""


def params():
    everything = os.environ.get("PGOLF_ATTACKS") == "all"
    for folder in sorted(p for p in CASES.iterdir() if (p / "expect.json").is_file()):
        for backend in BACKENDS:
            expect = expectation(folder.name, backend)
            if expect.get("skip") or not (everything or expect.get("ci")):
                continue
            gap = [pytest.mark.xfail(reason=expect["known_gap"], raises=CheatWorked, strict=True)] \
                if "known_gap" in expect else []
            yield pytest.param(folder.name, backend, marks=gap, id=f"{folder.name}-{backend}")


@pytest.fixture(scope="module")
def image():
    """The CPU image, built (or found up to date) by tools/build-image, as test_container_run does."""
    built = subprocess.run([sys.executable, str(REPO / "tools" / "build-image"), "cpu", "--tag", IMAGE],
                           capture_output=True, text=True, timeout=1800)
    assert built.returncode == 0, f"tools/build-image cpu failed: {built.stdout[-1000:]}{built.stderr[-2000:]}"
    return IMAGE


def submission(case: str, dest: Path, expect: dict) -> Path:
    """The folder `pgolf run` gets: the case's files (not expect.json), tiny.py and cheat.py."""
    folder = CASES / case
    if not (folder / "train_gpt.py").exists():
        dest.mkdir()
        (dest / "train_gpt.py").write_text(TINY, "utf-8")
        return dest
    shutil.copytree(folder, dest, ignore=shutil.ignore_patterns("expect.json", "__pycache__"))
    (dest / "tiny.py").write_text(TINY, "utf-8")
    shutil.copy(CASES / "cheat.py", dest / "cheat.py")
    for name, size in expect.get("ship", {}).items():
        (dest / name).write_bytes(random.Random(name).randbytes(size))  # incompressible, like weights
    return dest


def rules_file(overrides: dict, dest: Path) -> Path:
    rules = yaml.safe_load((REPO / "harness" / "rules" / "rules.yaml").read_text())

    def merge(into: dict, changes: dict) -> None:
        for key, value in changes.items():
            if isinstance(value, dict):
                merge(into[key], value)
            else:
                into[key] = value

    merge(rules, overrides)
    dest.write_text(yaml.safe_dump(rules))
    return dest


class Accomplice:
    """A host process serving bytes on a Unix socket, for a job that should never reach it."""

    def __init__(self, path: str):
        self.path = path
        Path(path).unlink(missing_ok=True)
        self.server = socket.socket(socket.AF_UNIX)
        self.server.bind(path)
        os.chmod(path, 0o777)
        self.server.listen()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn:
                conn.sendall(b"weights" * 1000)

    def close(self) -> None:
        self.server.close()
        Path(self.path).unlink(missing_ok=True)


@pytest.mark.parametrize("case, backend", list(params()))
def test_attack(case, backend, tmp_path, request):
    expect = expectation(case, backend)
    argv = [sys.executable, "-m", "harness", "run", "-q", "--submission",
            str(submission(case, tmp_path / case, expect)), "--out", str(tmp_path / "run"), "--seeds", "1",
            "--nproc", "1"]
    if "rules" in expect:
        argv += ["--rules", str(rules_file(expect["rules"], tmp_path / "rules.yaml"))]
    if expect.get("probe"):
        argv += ["--probe", *(expect["probe"] if isinstance(expect["probe"], list) else [])]
    if backend == "container":
        argv += ["--container", "--image", request.getfixturevalue("image")]
    env = {**os.environ, "TINY_STEPS": "5", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    accomplice = Accomplice(expect["serve"]) if "serve" in expect else None
    try:
        run = subprocess.run(argv, capture_output=True, text=True, timeout=900, env=env)
    finally:
        if accomplice:
            accomplice.close()
    seed = tmp_path / "run" / "seed_1"
    assert (seed / "verdict.json").is_file(), f"no verdict: the harness itself failed\n{run.stderr[-3000:]}"
    verdict = json.loads((seed / "verdict.json").read_text())
    found = {f["code"]: f["status"] for f in verdict["findings"]}
    failing = "\n".join(f"{f['code']}: {f['message']}" for f in verdict["findings"] if f["status"] == "fail")
    if verdict["status"] == "pass" and expect["status"] == "fail":
        raise CheatWorked(f"{case} PASSES: the cheat worked ({expect['why']})")
    assert verdict["status"] == expect["status"], f"{case}: {expect['why']}\nfailing:\n{failing}"
    assert (run.returncode == 0) == (expect["status"] == "pass"), run.stderr[-2000:]
    for code, status in expect["codes"].items():
        assert found.get(code) == status, f"{case}: {code} is {found.get(code)}, expected {status}\n{failing}"
    if expect.get("blocked"):
        logs = "".join(p.read_text(errors="replace") for p in seed.glob("*.log"))
        assert "cheat blocked:" in logs, f"{case} crashed, but not where its cheat was blocked:\n{logs[-3000:]}"
