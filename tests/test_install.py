"""pgolf as a participant's CI installs it: a wheel (what `pip install .`, `pip install git+…` and
`pipx install` build), installed into a fresh venv outside the checkout, must run `pgolf check`.

Nothing is downloaded: the wheel is built with this venv's setuptools (--no-build-isolation) and
installed with --no-index --no-deps; the fresh venv sees this venv's dependencies through a .pth
line, which adds their folder to sys.path without running this venv's editable-install hook, so
the harness the fresh venv imports can only be the wheel's.
"""
from __future__ import annotations

import json
import shutil
import site
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RECORD = REPO / "tests/fixtures/records/track_10min_16mb/2026-04-09_SP8192_3LayerRecur_ParResid_QK525_LegalTTT"


def _ok(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{' '.join(command)}: {done.stdout[-2000:]}{done.stderr[-2000:]}"
    return done


def test_the_built_wheel_installed_outside_the_checkout_runs_check(tmp_path):
    wheels, venv = tmp_path / "wheels", tmp_path / "venv"
    _ok([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
         "-w", str(wheels), str(REPO)], tmp_path)
    [wheel] = wheels.glob("pgolf-*.whl")
    _ok([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path)
    python = venv / "bin" / "python"
    target = Path(_ok([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path).stdout.strip())
    (target / "deps-of-the-test-venv.pth").write_text("".join(f"{p}\n" for p in site.getsitepackages()))
    _ok([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-index", "--no-deps", str(wheel)],
        tmp_path)

    where = _ok([str(python), "-c", "import harness; print(harness.__file__)"], tmp_path).stdout.strip()
    assert Path(where).is_relative_to(target)
    assert not (target / "harness" / "schemas").is_symlink()  # copies of the files, not the checkout's link
    folder = shutil.copytree(RECORD, tmp_path / "records" / "track_10min_16mb" / RECORD.name)
    done = subprocess.run([str(venv / "bin" / "pgolf"), "check", str(folder), "--json", "verdict.json"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stderr == "", done.stdout + done.stderr
    assert json.loads((tmp_path / "verdict.json").read_text("utf-8"))["status"] in ("pass", "warn")
    (folder / "submission.json").write_text('{"val_bpb": "low"}')  # the schema, read from the wheel, says why
    done = subprocess.run([str(venv / "bin" / "pgolf"), "check", str(folder)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1 and "$.val_bpb: expected number" in done.stdout, done.stdout + done.stderr
