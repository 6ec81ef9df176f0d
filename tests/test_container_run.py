"""`pgolf run --container` on the real Docker engine: every phase its own container of the CPU image
that tools/build-image makes (pgolf:cpu), driven through the Docker SDK.

The demo passes and scores exactly what the native runner scores for the same seed. Planted
violations each get their own FAIL: a network call, training shards read and the artifact written
in eval, the time limit, OOM, a crash. Nothing of a killed phase survives, neither a process nor a
container. A stopped engine, a refused socket, a missing image, an interrupted or a killed harness
each get their clear message. No engine is a failure that says to run tools/setup-host, never a skip.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from harness.paths import DEMO_DATASET, DEMO_TOKENIZER, REPO
from harness.run.container import LABEL, ContainerJob, connect, container_config, containers, prepare
from harness.data.shards import train_shards, val_shards
from harness.findings import UsageError
from harness.run.jobs import start_ticks
from harness.rules import load_rules
from harness.run.container import Container
from harness.run.judge import verify
from harness.run.phases import PhaseSpec, eval_phase, train_phase
from harness.run.seed import RunSpec, run_seed
from tiny_variants import stage_broken_tiny

IMAGE = "pgolf:cpu"
TINY = REPO / "examples" / "tiny"
CASES = Path(__file__).parent / "container_cases"
TRACK = "track_10min_16mb"
RULES = load_rules()


@pytest.fixture(scope="module")
def engine():
    """A client of the engine, with the CPU image built (or found up to date) by tools/build-image."""
    try:
        client = connect()
    except UsageError as exc:
        pytest.fail(f"{exc}\nthe container tests need a Docker engine: run tools/setup-host (as root) first")
    built = subprocess.run([sys.executable, str(REPO / "tools" / "build-image"), "cpu"], capture_output=True,
                           text=True, timeout=1800)
    assert built.returncode == 0, f"tools/build-image cpu failed: {built.stdout[-1000:]}{built.stderr[-2000:]}"
    yield client
    client.close()


def pgolf(*args: str, env: dict[str, str] | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True, text=True, timeout=timeout,
                          env=env)


def labelled(client, run: Path) -> list:
    """Every container, running or not, of the run folder `run`."""
    return containers(client, {"label": f"{LABEL}.run={run}"})


def statuses(verdict) -> dict[str, str]:
    found = verdict["findings"] if isinstance(verdict, dict) else [f.to_dict() for f in verdict.findings]
    return {f["code"]: f["status"] for f in found}


def finding(verdict, code: str):
    return next(f for f in verdict.findings if f.code == code)


def _views(seed_dir: Path) -> tuple[Path, Path]:
    """The data views `pgolf run` makes, for the phase-level tests."""
    views = []
    for name, shards in (("train", train_shards(DEMO_DATASET)), ("val", val_shards(DEMO_DATASET))):
        folder = seed_dir / "data" / name
        folder.mkdir(parents=True)
        for path in [*shards, DEMO_TOKENIZER]:
            os.link(path, folder / path.name)
        views.append(folder)
    return views[0], views[1]


def _names(folder: Path) -> tuple[str, ...]:
    return tuple(sorted(p.name for p in folder.glob("fineweb_*")))


def _wait_for_container(client, run: Path, timeout: float = 180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = [c for c in labelled(client, run) if c.status == "running"]
        if running:
            return running[0]
        time.sleep(0.2)
    pytest.fail(f"no container of {run} started within {timeout:g} s")


# ------------------------------------------------------------------ the demo, end to end

def test_demo_passes_in_containers_and_scores_what_the_native_runner_scores(engine, tmp_path, monkeypatch):
    monkeypatch.setenv("TINY_STEPS", "40")  # passed into the containers like any hyperparameter
    out = tmp_path / "run"
    run = pgolf("run", "--container", "--image", IMAGE, "--seeds", "1,2", "--out", str(out))
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-3000:]
    assert "[train:0] step:1/40 train_loss:" in run.stdout and "[eval:0] final_tiny_ttt" in run.stdout  # phase, rank
    for seed in (1, 2):
        verdict = json.loads((out / f"seed_{seed}" / "verdict.json").read_text())
        found = statuses(verdict)
        assert verdict["status"] == "pass", {k: v for k, v in found.items() if v != "pass"}
        for code in ("ledger.single_pass", "ledger.score_before_update", "metric.matches_submission",
                     "isolation.network", "isolation.data_view", "isolation.non_root_user",
                     "isolation.all_capabilities_dropped", "isolation.no_new_privileges", "isolation.pid_limit",
                     "isolation.artifact_read_only", "isolation.root_filesystem_read_only"):
            assert found[code] == "pass", code
        for phase, view in (("train", "/data/train"), ("eval", "/data/val")):
            config = verdict["phases"][phase]["container"]["config"]  # as the engine inspected it
            mounts = {m["target"]: m for m in config["mounts"]}
            assert config["network_mode"] == "none" and config["cap_drop"] == ["ALL"]
            assert config["user"].split(":")[0] not in ("", "0", "root") and config["pids_limit"] > 0
            assert "no-new-privileges:true" in config["security_opt"] and config["init"] is True
            assert mounts[view]["rw"] is False and mounts["/code"]["rw"] is False
            assert mounts["/artifact"]["rw"] is (phase == "train")
            assert config["read_only_root"] is True  # every phase: scratch is /tmp only
            assert not any(DEMO_DATASET.is_relative_to(m["source"]) for m in config["mounts"])  # only tripwires there
        for clocks in (f for f in verdict["findings"] if f["code"] == "container.clocks"):
            engine_s, harness_s = clocks["data"]["engine_s"], clocks["data"]["harness_s"]
            assert 0 < engine_s <= harness_s + 0.25 and harness_s - engine_s < 10, clocks["message"]
    log = (out / "seed_1" / "train.log").read_text()
    assert "\nstep:40/40 train_loss:" in log and "[default" not in log  # saved as the job wrote it
    assert labelled(engine, out) == []

    native = run_seed(RunSpec(TINY, DEMO_DATASET, DEMO_TOKENIZER, 1, 2, tmp_path / "native" / "seed_1", TRACK,
                              300, 300, 2, echo=False), RULES)
    container_bpb = json.loads((out / "seed_1" / "verdict.json").read_text())["seeds"]["1"]["val_bpb"]
    assert native.status == "pass" and native.seeds[1]["val_bpb"] == container_bpb


# ------------------------------------------------------------------ planted violations in eval

@pytest.fixture(scope="module")
def trained(engine, tmp_path_factory):
    """One train phase in a container (5 steps) of examples/tiny's broken variant (TINY_BUG unset: it trains as the
    example), shared by the eval tests below, which switch its violations on."""
    seed_dir = tmp_path_factory.mktemp("trained") / "seed_1"
    broken = stage_broken_tiny(seed_dir.parent / "broken")
    train_view, val_view = _views(seed_dir)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TINY_STEPS", "5")
        record = train_phase(PhaseSpec(seed_dir, train_view, seed_dir / "artifact", 300, 2, echo=False,
                                       hide=((DEMO_DATASET, _names(val_view)), (val_view, _names(val_view))),
                                       backend=Container(IMAGE)), broken, 1, 2, TRACK, RULES)
    assert record["process"]["returncode"] == 0, (seed_dir / "train.log").read_text()[-3000:]
    return seed_dir


def evaluate_copy(trained: Path, dest: Path, limit_s: float = 300):
    """Evaluate a copy of the trained seed in a container, as `pgolf phase eval` + `pgolf verify` do."""
    shutil.copytree(trained, dest)
    record = json.loads((dest / "phase_train.json").read_text())
    record["artifact"] = str(dest / "artifact")
    (dest / "phase_train.json").write_text(json.dumps(record))
    train_view = dest / "data" / "train"
    eval_phase(PhaseSpec(dest, dest / "data" / "val", dest / "artifact", limit_s, 2, echo=False,
                         hide=((DEMO_DATASET, _names(train_view)), (train_view, _names(train_view))), backend=Container(IMAGE)),
               RULES)
    return verify(dest, RULES)


def test_network_call_in_eval_is_refused_by_the_engine_and_reported(engine, trained, tmp_path, monkeypatch):
    monkeypatch.setenv("TINY_BUG", "network")  # the submission swallows the refusal
    verdict = evaluate_copy(trained, tmp_path / "seed_1")
    attempt = finding(verdict, "isolation.network_attempt")
    assert attempt.status == "fail" and attempt.data["phase"] == "eval" and attempt.data["count"] >= 1
    assert statuses(verdict)["isolation.network"] == "pass"  # network_mode none, as inspected


def test_training_shards_read_in_eval_are_not_there_and_the_attempt_is_reported(engine, trained, tmp_path,
                                                                                 monkeypatch):
    monkeypatch.setenv("TINY_BUG", "read_train")
    monkeypatch.setenv("TINY_TRAIN_DIR", str(DEMO_DATASET))  # the dataset's host path, as a script could know it
    verdict = evaluate_copy(trained, tmp_path / "seed_1")
    read = finding(verdict, "isolation.data_read")
    assert read.status == "fail" and read.data["phase"] == "eval"
    assert {str(Path(f).parent) for f in read.data["files"]} == {"/data/train", str(DEMO_DATASET)}
    assert statuses(verdict)["metric.matches_submission"] == "pass"  # it got no training token to use


def test_writing_the_artifact_in_eval_is_refused_and_reported(engine, trained, tmp_path, monkeypatch):
    before = hashlib.sha256((trained / "artifact" / "model.pt").read_bytes()).hexdigest()
    monkeypatch.setenv("TINY_BUG", "write_artifact")
    verdict = evaluate_copy(trained, tmp_path / "seed_1")
    refused = finding(verdict, "isolation.write_refused")
    assert refused.status == "fail" and refused.data["phase"] == "eval"
    assert refused.evidence[0].file == "eval.log" and "/artifact/model.pt" in refused.evidence[0].text
    assert hashlib.sha256((tmp_path / "seed_1" / "artifact" / "model.pt").read_bytes()).hexdigest() == before
    assert statuses(verdict)["phase.crashed"] == "fail"


def test_crash_mid_eval_fails_the_eval_phase(engine, trained, tmp_path, monkeypatch):
    monkeypatch.setenv("TINY_BUG", "crash")
    verdict = evaluate_copy(trained, tmp_path / "seed_1")
    crashed = finding(verdict, "phase.crashed")
    assert crashed.status == "fail" and crashed.data["phase"] == "eval"
    assert "deliberate crash" in (tmp_path / "seed_1" / "eval.log").read_text()
    assert labelled(engine, tmp_path) == []


def test_eval_past_its_limit_is_killed_and_nothing_of_it_is_left(engine, trained, tmp_path, monkeypatch):
    monkeypatch.setenv("TINY_BUG", "slow")
    verdict = evaluate_copy(trained, tmp_path / "seed_1", limit_s=20)
    timeout = finding(verdict, "phase.timeout")
    assert timeout.status == "fail" and timeout.data["phase"] == "eval" and "hard limit of 20 s" in timeout.message
    assert "phase.survivors" not in statuses(verdict)
    assert verdict.extra["phases"]["eval"]["wall_s"] < 20 + 2 + 10
    assert labelled(engine, tmp_path) == []  # docker ps -a by label: empty


# ------------------------------------------------------------------ faults of the train phase

def test_ranks_that_ignore_sigterm_go_with_the_container(engine, tmp_path):
    """Each rank ignores SIGTERM and leaves a grandchild in its own session; at the limit the
    container is killed, and every process seen in it (host pids, via the engine) is gone."""
    seen: dict[int, str] = {}
    stop = threading.Event()

    def watch():
        container = _wait_for_container(engine, tmp_path)
        while not stop.is_set():
            try:
                top = container.top()
            except Exception:  # the container is gone
                return
            column = top["Titles"].index("PID")
            for row in top["Processes"] or []:
                ticks = start_ticks(int(row[column]))
                if ticks:
                    seen.setdefault(int(row[column]), ticks)
            time.sleep(0.5)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    verdict = run_seed(RunSpec(CASES / "stubborn", DEMO_DATASET, DEMO_TOKENIZER, 1, 2, tmp_path / "seed_1", TRACK,
                               30, 300, 2, echo=False, backend=Container(IMAGE)), RULES)
    stop.set()
    watcher.join(10)
    timeout = finding(verdict, "phase.timeout")
    assert timeout.status == "fail" and timeout.data["phase"] == "train"
    log = (tmp_path / "seed_1" / "train.log").read_text()
    assert "rank 0 ready" in log and "rank 1 ready" in log, log[-2000:]
    assert len(seen) >= 6  # init, timeout, torchrun, 2 ranks, their sleeps
    assert [pid for pid, ticks in seen.items() if start_ticks(pid) == ticks] == []
    assert "phase.survivors" not in statuses(verdict) and labelled(engine, tmp_path) == []


def test_out_of_memory_is_named_as_such(engine, tmp_path):
    verdict = run_seed(RunSpec(CASES / "hog", DEMO_DATASET, DEMO_TOKENIZER, 1, 1, tmp_path / "seed_1", TRACK, 300,
                               300, 2, echo=False, backend=Container(IMAGE, memory="1g")), RULES)
    oom = finding(verdict, "phase.oom")
    assert oom.status == "fail" and oom.data["phase"] == "train" and "out of memory" in oom.message
    assert oom.data["memory"] == 1 << 30
    assert statuses(verdict)["phase.eval_skipped"] == "fail"


# ------------------------------------------------------------------ the harness's own faults

def test_ctrl_c_stops_and_removes_the_running_container(engine, tmp_path):
    out = tmp_path / "run"
    harness = subprocess.Popen([sys.executable, "-m", "harness", "run", "--container", "--out", str(out), "-q"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_container(engine, out)
        harness.send_signal(signal.SIGINT)
        try:
            _, stderr = harness.communicate(timeout=60)
        except subprocess.TimeoutExpired:  # keep the evidence: where every thread of the harness is
            harness.send_signal(signal.SIGUSR1)
            time.sleep(2)
            harness.kill()
            pytest.fail("pgolf run did not exit 60 s after SIGINT; its threads:\n" + harness.communicate()[1])
    finally:
        harness.kill()
    assert harness.returncode == 130 and "interrupted" in stderr and "Traceback" not in stderr, stderr
    assert labelled(engine, out) == []


def test_a_killed_harness_leaves_nothing_that_clean_does_not_remove(engine, tmp_path):
    out = tmp_path / "run"
    harness = subprocess.Popen([sys.executable, "-m", "harness", "run", "--container", "--out", str(out), "-q"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        left = _wait_for_container(engine, out)
    finally:
        harness.kill()  # SIGKILL: no cleanup of its own
        harness.wait()
    assert [c.name for c in labelled(engine, out)] == [left.name]  # the container outlived its harness
    cleaned = pgolf("clean")
    assert cleaned.returncode == 0 and left.name in cleaned.stdout, cleaned.stdout + cleaned.stderr
    assert labelled(engine, out) == []
    seed_dir = out / "seed_1"  # half a run: nothing in it claims to be finished
    assert not (seed_dir / "phase_train.json").exists() and not (seed_dir / "verdict.json").exists()
    verified = pgolf("verify", str(seed_dir))
    assert verified.returncode == 2 and "no phase_train.json" in verified.stderr


def test_the_next_run_removes_what_a_killed_harness_left(engine, tmp_path, capsys):
    """A container labelled by a harness process that no longer exists (created, never started)."""
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    code = tmp_path / "code"
    code.mkdir()
    job = ContainerJob(IMAGE, "train", ["true"], {}, code, code, code, None, tmp_path / "x.log", 60, 1,
                       {"run": str(tmp_path), "seed": "1"})
    config = container_config(job, gpus=0, user="65534:65534", name=f"pgolf-leftover-{uuid.uuid4().hex[:8]}")
    config["labels"][f"{LABEL}.owner"] = f"{socket.gethostname()}/{gone.stdout.strip()}/1"  # that process, dead
    engine.containers.create(**config)
    assert len(labelled(engine, tmp_path)) == 1
    prepare(IMAGE, None)  # what `pgolf run --container` does first
    assert "removed 1 container(s) left by a pgolf run that was killed" in capsys.readouterr().err
    assert labelled(engine, tmp_path) == []


def test_a_container_removed_between_listing_and_inspection_is_left_out(engine, tmp_path, monkeypatch):
    """Two pgolf runs on one engine: one's `clean` lists the other's container just as that run removes it."""
    code = tmp_path / "code"
    code.mkdir()
    for k in range(2):
        job = ContainerJob(IMAGE, "train", ["true"], {}, code, code, code, None, tmp_path / "x.log", 60, 1,
                           {"run": str(tmp_path), "seed": str(k)})
        engine.containers.create(**container_config(job, gpus=0, user="65534:65534",
                                                    name=f"pgolf-race-{uuid.uuid4().hex[:8]}"))
    listing = engine.api.containers

    def list_then_remove(*args, **kwargs):  # the other run's removal, for real, right after the listing
        summaries = listing(*args, **kwargs)
        engine.api.remove_container(summaries[0]["Id"], force=True)
        return summaries

    monkeypatch.setattr(engine.api, "containers", list_then_remove)
    try:
        assert len(containers(engine, {"label": f"{LABEL}.run={tmp_path}"})) == 1
    finally:
        monkeypatch.undo()
        for left in labelled(engine, tmp_path):
            left.remove(force=True)


@pytest.mark.parametrize("how", ["stopped", "absent"])
def test_an_engine_that_is_not_running_is_a_clear_usage_error(tmp_path, how):
    sock = tmp_path / "docker.sock"
    if how == "stopped":  # the socket file of an engine that died: nothing listens on it
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(str(sock))
        listener.close()
    env = {**os.environ, "DOCKER_HOST": f"unix://{sock}"}
    for args in (["run", "--container", "--out", str(tmp_path / "run")], ["clean"]):
        done = pgolf(*args, env=env)
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        assert "the Docker engine is not running" in done.stderr and "tools/setup-host" in done.stderr
    assert not (tmp_path / "run").exists()


def test_a_socket_this_user_may_not_use_says_how_to_get_access(engine, tmp_path):
    sock = tmp_path / "docker.sock"  # a socket file nobody may write (connect needs write permission)
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(sock))
    sock.chmod(0)
    # root passes every permission check: drop the capabilities that let it
    unprivileged = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"] if os.geteuid() == 0 else []
    done = subprocess.run([*unprivileged, sys.executable, "-m", "harness", "clean"], capture_output=True, text=True,
                          env={**os.environ, "DOCKER_HOST": f"unix://{sock}"})
    listener.close()
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "refused this user" in done.stderr and "docker group" in done.stderr


def test_a_missing_image_says_how_to_build_it(engine, tmp_path):
    done = pgolf("run", "--container", "--image", "pgolf:no-such-tag", "--out", str(tmp_path / "run"))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "image pgolf:no-such-tag not found" in done.stderr and "tools/build-image" in done.stderr
    assert not (tmp_path / "run").exists()


def test_container_options_need_container_and_gpus_need_a_gpu_image(engine, tmp_path):
    alone = pgolf("run", "--image", IMAGE, "--out", str(tmp_path / "a"))
    assert alone.returncode == 2 and "--image: only with --container" in alone.stderr
    gpus = pgolf("run", "--container", "--gpus", "1", "--out", str(tmp_path / "b"))
    assert gpus.returncode == 2 and "CPU variant" in gpus.stderr


# ------------------------------------------------------------------ the GPU request, as the engine records it

def test_the_gpu_request_as_the_engine_records_it(engine, tmp_path):
    """No engine here has GPUs: the request is created (not started) and read back by inspection."""
    code = tmp_path / "code"
    code.mkdir()
    job = ContainerJob("pgolf:cpu", "train", ["true"], {}, code, code, code, None, tmp_path / "x.log", 60, 1,
                       {"run": str(tmp_path), "seed": "1"})
    for gpus in (-1, 2, 0):  # all (the GPU image's default), --gpus 2, none (the CPU image)
        config = container_config(job, gpus=gpus, user="65534:65534", name=f"pgolf-gpu-{uuid.uuid4().hex[:8]}")
        created = engine.containers.create(**config)
        try:
            host = created.attrs["HostConfig"]
            requests = [(r["Count"], r["Capabilities"]) for r in host["DeviceRequests"] or []]
            limits = {u["Name"]: (u["Soft"], u["Hard"]) for u in host["Ulimits"] or []}
            if gpus:
                assert requests == [(gpus, [["gpu"]])]
                assert limits == {"memlock": (-1, -1), "stack": (67108864, 67108864)}
            else:
                assert requests == [] and limits == {}
            assert host["ShmSize"] == 16 << 30 and host["IpcMode"] == "private"
        finally:
            created.remove(force=True)


# ------------------------------------------------------------------ a legacy record folder

def test_legacy_runs_as_one_container_without_network_and_lists_what_it_cannot_enforce(engine, tmp_path):
    out = tmp_path / "run"
    done = pgolf("run", "--container", "--legacy", "--submission", str(REPO / "tests" / "legacy_cases" / "plain"),
                 "--nproc", "1", "--out", str(out), "-q")
    assert done.returncode in (0, 1), done.stderr
    verdict = json.loads((out / "seed_1" / "verdict.json").read_text())
    found = statuses(verdict)
    assert {found[f"guarantees.{g}"] for g in ("separate_phases", "data_isolation", "harness_bpb", "score_ledger")} \
        == {"warn"}
    assert found["isolation.network"] == "pass" and found["metric.from_log"] == "info"
    config = verdict["phases"]["legacy"]["container"]["config"]
    mounts = {m["target"]: m for m in config["mounts"]}
    assert config["network_mode"] == "none" and mounts["/data/all"]["rw"] is False
    assert mounts["/code"]["rw"] is True  # such scripts write beside themselves
    assert labelled(engine, out) == []
