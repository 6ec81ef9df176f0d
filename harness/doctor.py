"""`pgolf doctor`: what this machine (or container) has for a record-track run, and what is missing.

A record-track run needs the track's GPUs (rules.yaml `hardware`), a CUDA build of torch with NCCL,
FlashAttention-3 (record scripts import `flash_attn_interface` with no fallback), room in /dev/shm
for NCCL, and a C compiler with Python's headers for torch.compile (Triton builds its launchers at
run time). Each check returns Findings: FAIL is missing for a record-track run, WARN works but differs
from what the records ran, PASS and INFO are facts. With a GPU present, one FA3 call is compared with
PyTorch SDPA, so a broken or mismatched build shows here rather than as a crash 30 s into training.
"""
from __future__ import annotations

import importlib
import importlib.metadata as metadata
import os
import resource
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any, Callable

from harness.findings import FAIL, INFO, PASS, WARN, Finding, UsageError
from harness.rules import Rules

GIB = 1 << 30
MIN_SHM_BYTES = 1 * GIB  # NCCL's advice for containers (--shm-size=1g); Docker's default is 64 MiB
# FA3 against an fp32 reference, bf16 inputs: SDPA's own bf16 error at this shape is 8e-3 (H100, measured)
ATTENTION_TOLERANCE = 2e-2
# where the image's Dockerfile records how it was built (variant, FA3 wheel, lock hash, bases)
IMAGE_NOTE = Path(sys.prefix) / "pgolf-image.txt"
PLACEHOLDER = "flash-attn-interface"  # an empty PyPI package whose module shadows FA3's (docs/container.md)


def _finding(check: str, status: str, name: str, message: str, **data: Any) -> Finding:
    return Finding("doctor", status, f"doctor.{check}.{name}", f"{check}: {message}", data={"item": check, **data})


def _torch():
    try:
        return importlib.import_module("torch")
    except ImportError:
        return None


def check_python(rules: Rules, track: str) -> list[Finding]:
    version = ".".join(map(str, sys.version_info[:3]))
    if sys.version_info >= (3, 12):
        return [_finding("python", PASS, "version", f"Python {version} at {sys.executable}", version=version)]
    return [_finding("python", WARN, "old", f"Python {version}: record code written with PEP 701 f-strings needs "
                     "3.12 or newer (the records ran 3.12.3)", version=version)]


def check_torch(rules: Rules, track: str) -> list[Finding]:
    torch = _torch()
    if torch is None:
        return [_finding("torch", FAIL, "missing", "not installed")]
    cuda = torch.version.cuda
    if cuda is None:
        return [_finding("torch", FAIL, "cpu_build", f"torch {torch.__version__} is a CPU-only build; the record "
                         "track needs a CUDA build", version=torch.__version__)]
    cudnn = torch.backends.cudnn.version()
    return [_finding("torch", PASS, "version", f"torch {torch.__version__} (CUDA {cuda}, cuDNN {cudnn})",
                     version=torch.__version__, cuda=cuda, cudnn=cudnn)]


def _nvidia_smi() -> tuple[list[dict[str, str]] | None, str]:
    """One row per GPU the driver shows, or None with the reason."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None, "nvidia-smi not found: no NVIDIA driver is visible here"
    fields = ["name", "driver_version", "memory.total"]
    try:
        done = subprocess.run([exe, f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits"],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"nvidia-smi did not answer ({exc})"
    if done.returncode != 0:
        return None, f"nvidia-smi failed: {(done.stderr or done.stdout).strip().splitlines()[-1:]}"
    rows = [dict(zip(fields, (v.strip() for v in line.split(",")))) for line in done.stdout.splitlines() if line.strip()]
    return rows, ""


def check_driver(rules: Rules, track: str) -> list[Finding]:
    rows, why = _nvidia_smi()
    if rows is None:
        return [_finding("driver", FAIL, "missing", why)]
    drivers = sorted({r["driver_version"] for r in rows})
    return [_finding("driver", PASS, "version", f"NVIDIA driver {', '.join(drivers)} ({len(rows)} GPU(s) shown by "
                     "nvidia-smi)", driver=drivers)]


def check_gpu(rules: Rules, track: str) -> list[Finding]:
    """What the job will see: the GPUs torch can use, against the track's hardware."""
    want = rules.tracks[track].hardware or {}
    count, name = want.get("gpus", 1), want.get("gpu_name")
    need = f"the track runs on {count} × {name}" if name else f"the track runs on {count} GPU(s)"
    torch = _torch()
    if torch is None or torch.version.cuda is None or not torch.cuda.is_available():
        return [_finding("gpu", FAIL, "none", f"no GPU usable by torch; {need}", count=0)]
    found = [torch.cuda.get_device_properties(i) for i in range(torch.cuda.device_count())]
    names = sorted({p.name for p in found})
    memory = min(p.total_memory for p in found) / GIB
    capability = sorted({f"{p.major}.{p.minor}" for p in found})
    data = {"count": len(found), "names": names, "capability": capability}
    out = [_finding("gpu", PASS if len(found) >= count else FAIL, "count",
                    f"{len(found)} × {', '.join(names)} (compute capability {', '.join(capability)}, "
                    f"{memory:.1f} GiB each)" + ("" if len(found) >= count else f"; {need}"), **data)]
    if name and names != [name]:
        out.append(_finding("gpu", WARN, "model", f"not the record hardware ({name}): a run here works, but its "
                            "times do not compare with the track's limits", **data))
    return out


def check_nccl(rules: Rules, track: str) -> list[Finding]:
    torch = _torch()
    if torch is None or torch.version.cuda is None:
        return [_finding("nccl", FAIL, "missing", "no NCCL: torch is missing or a CPU-only build")]
    version = ".".join(map(str, torch.cuda.nccl.version()))
    settings = {k: v for k, v in sorted(os.environ.items()) if k.startswith("NCCL_")}
    shown = "; " + " ".join(f"{k}={v}" for k, v in settings.items()) if settings else ""
    return [_finding("nccl", PASS, "version", f"NCCL {version} (torch's){shown}", version=version, env=settings)]


def attention_error(attend: Callable, device: str) -> tuple[float, float]:
    """Max-abs error of `attend` and of PyTorch SDPA against an fp32 reference, in bf16 on the records'
    attention layout: (batch, seq, heads, dim) tensors as FlashAttention takes them, 8 query heads
    sharing 4 key/value heads, head dim 64, causal. `attend(q, k, v)` must return a tensor."""
    import torch
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 256, heads, 64, generator=gen).to(device, torch.bfloat16) for heads in (8, 4, 4))

    def sdpa(q, k, v):  # SDPA takes (batch, heads, seq, dim)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                             is_causal=True, enable_gqa=True)
        return out.transpose(1, 2)

    with torch.no_grad():
        got = attend(q, k, v)
        if not isinstance(got, torch.Tensor):
            raise TypeError(f"returned a {type(got).__name__}, not a tensor")
        if got.shape != q.shape:
            raise TypeError(f"returned shape {tuple(got.shape)}, expected {tuple(q.shape)}")
        reference = sdpa(q.float(), k.float(), v.float())
        return ((got.float() - reference).abs().max().item(), (sdpa(q, k, v).float() - reference).abs().max().item())


def _installed_by(distribution: str, module) -> bool:
    """Whether `module`'s file is one the named distribution installed (not a shadowing copy)."""
    try:
        dist = metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        return False
    path = Path(module.__file__ or "").resolve()
    return any(Path(dist.locate_file(f)).resolve() == path for f in dist.files or () if f.name == path.name)


def check_fa3(rules: Rules, track: str) -> list[Finding]:
    try:
        metadata.distribution(PLACEHOLDER)
        return [_finding("fa3", FAIL, "placeholder", f"the PyPI package '{PLACEHOLDER}' is installed: an empty "
                         f"placeholder whose module shadows FlashAttention-3; pip uninstall {PLACEHOLDER} and "
                         "install the flash_attn_3 wheel")]
    except metadata.PackageNotFoundError:
        pass
    try:
        module = importlib.import_module("flash_attn_interface")
    except ImportError as exc:
        return [_finding("fa3", FAIL, "missing", f"FlashAttention-3 (flash_attn_interface) does not import ({exc}); "
                         "record scripts import it without a fallback")]
    if not _installed_by("flash_attn_3", module):
        return [_finding("fa3", FAIL, "origin", f"flash_attn_interface comes from {module.__file__}, a file the "
                         "flash_attn_3 distribution did not install", file=str(module.__file__))]
    version = metadata.version("flash_attn_3")
    out = [_finding("fa3", PASS, "import", f"flash_attn_3 {version} ({module.__file__})", version=version)]
    torch = _torch()
    if torch is None or torch.version.cuda is None or not torch.cuda.is_available():
        out.append(_finding("fa3", INFO, "not_called", "no GPU here: the FA3 call against SDPA was not run"))
        return out
    if torch.cuda.get_device_capability(0) != (9, 0):
        out.append(_finding("fa3", FAIL, "arch", f"FA3 runs on Hopper (compute capability 9.0); GPU 0 is "
                            f"{'.'.join(map(str, torch.cuda.get_device_capability(0)))}"))
        return out
    try:
        fa3, sdpa = attention_error(lambda q, k, v: module.flash_attn_func(q, k, v, causal=True), "cuda")
    except Exception as exc:  # any failure of the call is the finding
        out.append(_finding("fa3", FAIL, "call", f"flash_attn_func failed: {type(exc).__name__}: {exc}"))
        return out
    status = PASS if fa3 <= ATTENTION_TOLERANCE else FAIL
    out.append(_finding("fa3", status, "compare", f"one causal GQA call in bf16: max |FA3 − fp32| {fa3:.2e}, "
                        f"max |SDPA − fp32| {sdpa:.2e} (tolerance {ATTENTION_TOLERANCE:g})", fa3=fa3, sdpa=sdpa))
    return out


def check_shm(rules: Rules, track: str) -> list[Finding]:
    try:
        stat = os.statvfs("/dev/shm")
    except OSError as exc:
        return [_finding("shm", FAIL, "missing", f"/dev/shm unavailable ({exc.strerror}); NCCL needs it")]
    size = stat.f_frsize * stat.f_blocks
    shown = f"/dev/shm {size / GIB:.2f} GiB ({stat.f_frsize * stat.f_bavail / GIB:.2f} GiB free)"
    if size < MIN_SHM_BYTES:
        return [_finding("shm", FAIL, "small", f"{shown}: NCCL needs at least {MIN_SHM_BYTES / GIB:g} GiB for ranks "
                         "on one host (docker: --shm-size 16g or --ipc host)", bytes=size)]
    return [_finding("shm", PASS, "size", shown, bytes=size)]


def check_memlock(rules: Rules, track: str) -> list[Finding]:
    soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    if soft == resource.RLIM_INFINITY:
        return [_finding("memlock", PASS, "unlimited", "locked-memory limit unlimited")]
    return [_finding("memlock", WARN, "limited", f"locked-memory limit {soft / (1 << 20):g} MiB: NCCL advises "
                     "unlimited (docker: --ulimit memlock=-1)", bytes=soft)]


def check_compiler(rules: Rules, track: str) -> list[Finding]:
    compiler = shutil.which("gcc") or shutil.which("cc")
    header = Path(sysconfig.get_paths()["include"]) / "Python.h"
    missing = [what for what, ok in (("a C compiler (gcc)", compiler), (f"Python.h ({header})", header.is_file()))
               if not ok]
    if missing:
        return [_finding("compiler", FAIL, "missing", f"no {' and no '.join(missing)}: torch.compile's Triton "
                         "backend builds C launchers at run time")]
    return [_finding("compiler", PASS, "found", f"{compiler} and {header}")]


def check_image(rules: Rules, track: str) -> list[Finding]:
    if not IMAGE_NOTE.is_file():
        return [_finding("image", INFO, "none", "not running in a pgolf image")]
    facts = dict(line.split("=", 1) for line in IMAGE_NOTE.read_text("utf-8").splitlines() if "=" in line)
    return [_finding("image", INFO, "build", "pgolf image: " + "; ".join(f"{k} {v}" for k, v in facts.items()),
                     **facts)]


CHECKS: dict[str, Callable[[Rules, str], list[Finding]]] = {
    "python": check_python, "torch": check_torch, "driver": check_driver, "gpu": check_gpu,
    "nccl": check_nccl, "fa3": check_fa3, "shm": check_shm, "memlock": check_memlock,
    "compiler": check_compiler, "image": check_image,
}


def diagnose(rules: Rules, track: str, only: list[str] | None = None) -> list[Finding]:
    """Run the named checks (all by default), in a fixed order."""
    rules.track(track)  # an unknown track stops here
    unknown = sorted(set(only or []) - set(CHECKS))
    if unknown:
        raise UsageError(f"--only {','.join(unknown)}: no such check; known: {', '.join(CHECKS)}")
    return [f for name, check in CHECKS.items() if not only or name in only for f in check(rules, track)]


def render(findings: list[Finding], track: str, partial: bool = False) -> str:
    """One line per finding, then what is missing for a record-track run (among the checks run,
    when `partial`)."""
    mark = {PASS: "ok  ", INFO: "info", WARN: "warn", FAIL: "FAIL"}
    lines = [f"pgolf doctor: this machine against {track}"]
    lines += [f"  {mark[f.status]}  {f.message}" for f in findings]
    missing = list(dict.fromkeys(f.data["item"] for f in findings if f.status == FAIL))
    among = " among the checks run" if partial else ""
    lines.append(f"missing for a record-track run{among}: {', '.join(missing)} (the FAIL lines)" if missing
                 else f"nothing missing for a record-track run{among}")
    return "\n".join(lines) + "\n"
