"""run_phase against real process trees: torchrun ranks, setsid'd children, ignored SIGTERMs."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from harness.run.native import PhaseStartError, Sandbox, bwrap_works, run_phase

CASES = Path(__file__).parent / "process_cases"
ROOT = Path(__file__).parent.parent
# the torchrun of the interpreter running the tests (.venv/bin is not on PATH under `.venv/bin/python
# -m pytest`); torch is a test dependency, so a missing one is a failure, never a skip
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
ENFORCED = bwrap_works()
MODES = pytest.mark.parametrize("isolate", [True, False], ids=["sandbox", "fallback"])


def alive(marker: str) -> list[int]:
    """Pids of live processes whose environment carries `marker`: the test's own survivor scan."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
            if marker.encode() in (entry / "environ").read_bytes() and stat[stat.rindex(")") + 2] != "Z":
                pids.append(int(entry.name))
        except (OSError, ValueError):
            pass
    return pids


def marked_env() -> tuple[dict[str, str], str]:
    """An environment every process of a job inherits, and the marker that finds them in /proc."""
    token = uuid.uuid4().hex
    return {**os.environ, "TEST_MARKER": token, "PYTHONPATH": str(ROOT)}, f"TEST_MARKER={token}"


def run(tmp_path, cmd, isolate=True, network=True, **kw):
    """run_phase with a marked environment, sandboxed unless isolate=False; returns (result, marker)."""
    env, marker = marked_env()
    kw = {"cwd": CASES, "log_path": tmp_path / "phase.log", "limit_s": 30, "grace_s": 1.0,
          "sandbox": Sandbox(read_only=(ROOT,), network=network) if isolate else None, **kw}
    return run_phase(cmd, env=env, **kw), marker


def start_harness(tmp_path, isolate: bool) -> tuple[subprocess.Popen, str]:
    """A harness process running a SIGTERM-ignoring tree; returns once the tree is up."""
    env, marker = marked_env()
    argv = python(str(CASES / "interruptible.py"), str(tmp_path / "log"), str(int(isolate)))
    harness = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, text=True)
    lines = [harness.stdout.readline() for _ in range(2)]
    if lines[1] != "[job] child ready\n":
        harness.kill()
        pytest.fail(f"harness did not start its job: {lines}")
    return harness, marker


def python(*args: str) -> list[str]:
    return [sys.executable, *args]


def test_torchrun_deadline_kills_ranks_that_ignore_sigterm(tmp_path):
    """Workers live in their own sessions; only the namespace (or full tracking) takes them down."""
    result, marker = run(tmp_path, [TORCHRUN, "--standalone", "--nproc_per_node=2", "ddp.py", "hang"],
                         limit_s=10, grace_s=2, echo=False)
    log = (tmp_path / "phase.log").read_text()
    assert "rank 0 started" in log and "rank 1 started" in log, log  # the ranks ran at the deadline
    assert result.timed_out and result.signal == "SIGKILL"
    assert 12 <= result.wall_s < 13.5
    assert result.sigterm_at - result.started == pytest.approx(10, abs=0.3)
    assert result.survivors == [] and alive(marker) == []


def test_torchrun_without_network_has_localhost_only(tmp_path, capsys):
    """network=False: gloo rendezvous on localhost works, the internet is unreachable."""
    result, _ = run(tmp_path, [TORCHRUN, "--standalone", "--nproc_per_node=2", "ddp.py", "net"],
                    network=False, prefix="[eval] ")
    out = capsys.readouterr().out
    assert result.returncode == 0, out
    for rank in (0, 1):
        assert f"[eval] rank {rank} all_reduce 2\n" in out
        assert f"[eval] rank {rank} localhost: ping\n" in out
        if ENFORCED:
            assert f"[eval] rank {rank} internet: OSError: Network is unreachable\n" in out
    assert result.isolation["network"] == ("enforced" if ENFORCED else "observed")
    assert "rank 1 localhost: ping\n" in (tmp_path / "phase.log").read_text()


def test_network_disabled_in_plain_job(tmp_path):
    """The same guarantee without torch installed."""
    result, _ = run(tmp_path, python("netcheck.py"), network=False, echo=False)
    log = (tmp_path / "phase.log").read_text()
    assert result.returncode == 0 and "solo localhost: ping" in log
    if ENFORCED:
        assert "solo internet: OSError: Network is unreachable" in log
        assert result.isolation["pid_namespace"] == result.isolation["network"] == "enforced"


@MODES
def test_exit_code_output_and_wall_time(tmp_path, capsys, isolate):
    """A failing job is data: its code, every line prefixed and logged, its wall time measured."""
    script = "import os, sys, time; print('out', os.getpid(), flush=True); time.sleep(0.5); " \
             "print('err line', file=sys.stderr); sys.exit(3)"
    result, _ = run(tmp_path, python("-c", script), prefix="[train] ", isolate=isolate)
    out = capsys.readouterr().out
    assert result.returncode == 3 and result.signal is None and not result.timed_out
    own_pid = next(line for line in out.splitlines() if line.startswith("[train] out ")).split()[-1]
    assert (own_pid == "2") == (isolate and ENFORCED)  # in a namespace, pid 1 is the init
    assert "[train] err line\n" in out
    assert (tmp_path / "phase.log").read_text().splitlines()[-1] == "err line"
    assert 0.5 <= result.wall_s < 2.5 and result.wall_s == pytest.approx(result.ended - result.started)
    assert result.isolation["pid_namespace"] == ("enforced" if isolate and ENFORCED else "observed")
    assert result.isolation["network"] == "not enforced"


@MODES
def test_death_by_signal_is_reported(tmp_path, isolate):
    """In the sandbox the job is not bwrap's child: the init must relay the exact signal."""
    result, _ = run(tmp_path, python("-c", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"),
                    isolate=isolate, echo=False)
    assert (result.returncode, result.signal, result.timed_out) == (-11, "SIGSEGV", False)


@MODES
def test_deadline_kills_setsid_children_that_ignore_sigterm(tmp_path, isolate):
    """A child that left the session and ignores SIGTERM still dies at limit + grace."""
    result, marker = run(tmp_path, python("tree.py", "hang"), limit_s=1.5, grace_s=0.5,
                         isolate=isolate, echo=False)
    assert "child ready" in (tmp_path / "phase.log").read_text()
    assert result.timed_out and result.signal == "SIGKILL"
    assert 2.0 <= result.wall_s < 2.5
    assert result.survivors == [] and alive(marker) == []


@MODES
def test_stragglers_are_killed_after_a_clean_exit(tmp_path, isolate):
    """The main process exits 0 but leaves a setsid'd orphan: it must not outlive the phase."""
    result, marker = run(tmp_path, python("tree.py", "exit"), isolate=isolate, echo=False)
    assert "child ready" in (tmp_path / "phase.log").read_text()
    assert result.returncode == 0 and not result.timed_out
    assert result.survivors == [] and alive(marker) == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@MODES
def test_interrupted_harness_leaves_no_survivors(tmp_path, sig, isolate):
    """Ctrl-C or SIGTERM to the harness: the job is stopped, then KeyboardInterrupt reaches the caller."""
    harness, marker = start_harness(tmp_path, isolate)
    with harness:
        try:
            harness.send_signal(sig)
            sent = time.monotonic()
            assert harness.wait(timeout=10) == 130
            assert time.monotonic() - sent < 2  # SIGTERM, 0.5 s grace, SIGKILL
            assert harness.stdout.read() == "interrupted\n"
            assert alive(marker) == []
        finally:
            harness.kill()


def test_a_compiler_outside_usr_works_in_the_sandbox_and_shows_only_its_own_tree(tmp_path):
    """torch.compile builds with the CC/CXX of the job's environment; a toolchain such as /opt/gcc must run
    in the sandbox with its lib/, while what lies beside the toolchain stays hidden."""
    prefix = tmp_path / "opt" / "gcc"
    (prefix / "bin").mkdir(parents=True)
    (prefix / "lib").mkdir()
    (prefix / "lib" / "specs").write_text("toolchain ok\n")
    (prefix / "notes").mkdir()
    (prefix / "notes" / "x").write_text("not part of a toolchain")
    (tmp_path / "opt" / "beside.txt").write_text("someone else's file")
    cc = prefix / "bin" / "cc"
    cc.write_text(f"#!/bin/sh\ncat {prefix / 'lib' / 'specs'}\n")
    cc.chmod(0o755)
    env, _ = marked_env()
    probe = ("import os, subprocess; print(subprocess.run(os.environ['CC'].split(), capture_output=True, "
             f"text=True).stdout.strip()); print([os.path.exists(p) for p in {[str(prefix / 'notes'), str(tmp_path / 'opt' / 'beside.txt')]}])")
    result = run_phase(python("-c", probe), env={**env, "CC": f"{cc} -m64"}, cwd=CASES, log_path=tmp_path / "phase.log",
                       limit_s=30, grace_s=1.0, echo=False, sandbox=Sandbox(read_only=(ROOT,), network=False))
    assert result.returncode == 0, (tmp_path / "phase.log").read_text()
    assert (tmp_path / "phase.log").read_text().splitlines() == ["toolchain ok", str([not ENFORCED] * 2)]


@pytest.mark.skipif(not ENFORCED, reason="needs PID namespaces")
def test_killed_harness_takes_the_namespace_down(tmp_path):
    """SIGKILL to the harness runs no cleanup: the init notices its lifeline close and exits."""
    harness, marker = start_harness(tmp_path, isolate=True)
    with harness:
        harness.kill()
    deadline = time.monotonic() + 2
    while alive(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert alive(marker) == []


def test_usage_errors_raise(tmp_path):
    with pytest.raises(PhaseStartError, match="command not found"):
        run(tmp_path, ["no-such-command-pgolf"])
    with pytest.raises(PhaseStartError, match="working directory not found"):
        run(tmp_path, ["true"], cwd=tmp_path / "missing")
