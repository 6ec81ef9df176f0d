"""`pgolf doctor` as a user runs it, on this machine and with FA3 look-alikes placed on the path.

The GPU path (one FA3 call against SDPA) needs an H100 and FA3: CI has neither, so here the
comparison itself is exercised on CPU with real attention functions, right and wrong.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from harness.doctor import ATTENTION_TOLERANCE, attention_error


def doctor(*args: str, pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(pythonpath), env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "harness", "doctor", *args], capture_output=True, text=True,
                          env=env, timeout=120)


def findings(run: subprocess.CompletedProcess) -> dict[str, dict]:
    return {f["code"]: f for f in json.loads(run.stdout)["findings"]}


def test_reports_what_this_machine_has_and_lacks():
    run = doctor("--json")
    got = findings(run)
    if torch.version.cuda is None:  # the CI machines: a CPU build of torch, no driver, no FA3
        assert got["doctor.torch.cpu_build"]["status"] == "fail"
        assert torch.__version__ in got["doctor.torch.cpu_build"]["message"]
        assert got["doctor.gpu.none"]["status"] == "fail"
        assert "8 × NVIDIA H100 80GB HBM3" in got["doctor.gpu.none"]["message"]  # from rules.yaml
        assert got["doctor.nccl.missing"]["status"] == "fail"
    shm = os.statvfs("/dev/shm")
    assert next(f for f in got.values() if f["data"]["item"] == "shm")["data"]["bytes"] == shm.f_frsize * shm.f_blocks
    python = ".".join(map(str, sys.version_info[:3]))
    assert any(python in f["message"] for f in got.values() if f["data"]["item"] == "python")
    failed = [f for f in got.values() if f["status"] == "fail"]
    assert run.returncode == (1 if failed else 0)
    assert json.loads(run.stdout)["status"] == ("fail" if failed else "pass")


def test_text_report_ends_with_what_is_missing():
    run = doctor("--only", "torch,fa3,shm")
    lines = run.stdout.splitlines()
    assert lines[0] == "pgolf doctor: this machine against track_10min_16mb"
    assert [line.split()[1].rstrip(":") for line in lines[1:4]] == ["torch", "fa3", "shm"]
    if torch.version.cuda is None:
        assert lines[-1] == "missing for a record-track run among the checks run: torch, fa3 (the FAIL lines)"
        assert run.returncode == 1


def test_unknown_check_is_a_usage_error():
    run = doctor("--only", "gpus")
    assert run.returncode == 2 and "--only gpus: no such check" in run.stderr and "Traceback" not in run.stderr


def _dist_info(site: Path, name: str, version: str, files: list[str]) -> None:
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "RECORD").write_text("".join(f"{f},,\n" for f in [*files, f"{info.name}/METADATA", f"{info.name}/RECORD"]))


def test_the_pypi_placeholder_is_named(tmp_path):
    """`pip install flash-attn-interface` installs an empty package of FA3's module name."""
    (tmp_path / "flash_attn_interface").mkdir()
    (tmp_path / "flash_attn_interface" / "__init__.py").write_text('__version__ = "0.0.1"\n')
    _dist_info(tmp_path, "flash-attn-interface", "0.0.1", ["flash_attn_interface/__init__.py"])
    run = doctor("--only", "fa3", "--json", pythonpath=tmp_path)
    assert run.returncode == 1
    assert "pip uninstall flash-attn-interface" in findings(run)["doctor.fa3.placeholder"]["message"]


def test_a_module_no_fa3_distribution_installed_is_refused(tmp_path):
    (tmp_path / "flash_attn_interface.py").write_text("def flash_attn_func(q, k, v, causal=False):\n    return q\n")
    run = doctor("--only", "fa3", "--json", pythonpath=tmp_path)
    assert run.returncode == 1
    assert str(tmp_path / "flash_attn_interface.py") in findings(run)["doctor.fa3.origin"]["message"]


def test_a_module_the_flash_attn_3_distribution_installed_passes_the_import_check(tmp_path):
    (tmp_path / "flash_attn_interface.py").write_text("def flash_attn_func(q, k, v, causal=False):\n    return q\n")
    _dist_info(tmp_path, "flash_attn_3", "3.0.0", ["flash_attn_interface.py"])
    run = doctor("--only", "fa3", "--json", pythonpath=tmp_path)
    got = findings(run)
    assert got["doctor.fa3.import"]["status"] == "pass" and "flash_attn_3 3.0.0" in got["doctor.fa3.import"]["message"]
    if not torch.cuda.is_available():
        assert got["doctor.fa3.not_called"]["status"] == "info" and run.returncode == 0


def _sdpa_bshd(q, k, v, causal=True):
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=causal,
                                         enable_gqa=True)
    return out.transpose(1, 2)


def test_attention_comparison_passes_a_right_kernel_and_catches_wrong_ones():
    right, sdpa = attention_error(_sdpa_bshd, "cpu")
    assert right <= ATTENTION_TOLERANCE and sdpa <= ATTENTION_TOLERANCE and right > 0  # bf16 is not exact
    not_causal, _ = attention_error(lambda q, k, v: _sdpa_bshd(q, k, v, causal=False), "cpu")
    assert not_causal > 10 * ATTENTION_TOLERANCE
    with pytest.raises(TypeError, match="returned a tuple"):  # FA3 builds before 2025-07-11 returned (out, lse)
        attention_error(lambda q, k, v: (_sdpa_bshd(q, k, v), None), "cpu")
    with pytest.raises(TypeError, match="expected \\(2, 256, 8, 64\\)"):  # (batch, heads, seq, dim): SDPA's layout
        attention_error(lambda q, k, v: _sdpa_bshd(q, k, v).transpose(1, 2), "cpu")
