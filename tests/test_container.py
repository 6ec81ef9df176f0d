"""The container path for real: compose.yaml against the Compose schema, the CPU image built by
tools/build-image, and `docker compose --profile cpu up` end to end on a real engine.

Three containers run the three phases (train, eval, verify) after a prepare container made the
data views; the eval container has no network; verify says PASS on the demo and FAIL on a planted
score-before-update violation, in a run whose eval also makes a planted network call. No engine
here is a failure that says to run tools/setup-host, never a skip: CI must have one.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tomllib
import uuid
from pathlib import Path

import jsonschema
import pytest
import yaml

from harness.data.views import make_views, sync_view
from harness.findings import UsageError
from tiny_variants import stage_broken_tiny

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "data" / "demo"
PHASES = ("train-cpu", "eval-cpu", "verify-cpu")
PLANTED_CALL = '''import os as _os, socket as _socket
if _os.environ.get("PGOLF_PHASE") == "eval" and _os.environ.get("RANK") == "0":  # planted by the test
    try:
        _socket.create_connection(("203.0.113.7", 443), timeout=5)
        print("planted network call: connected", flush=True)
    except OSError as _exc:
        print(f"planted network call: {_exc}", flush=True)
'''


def compose_file() -> dict:
    return yaml.safe_load((REPO / "compose.yaml").read_text("utf-8"))


# ------------------------------------------------------------------ the files, without an engine

def test_compose_file_is_valid_against_the_compose_specification_schema():
    schema = json.loads((REPO / "schemas" / "compose-spec.json").read_text("utf-8"))
    errors = sorted(e.message for e in jsonschema.Draft7Validator(schema).iter_errors(compose_file()))
    assert errors == []


def test_compose_file_isolates_the_phases():
    services = compose_file()["services"]
    for suffix, profile in (("", "gpu"), ("-cpu", "cpu")):
        train, evaluate, verify = (services[f"{name}{suffix}"] for name in ("train", "eval", "verify"))
        assert all(s["profiles"] == [profile] for s in (train, evaluate, verify))
        assert evaluate["network_mode"] == "none" and train["network_mode"] == "none"
        assert evaluate["depends_on"] == {f"train{suffix}": {"condition": "service_completed_successfully"}}
        assert verify["depends_on"] == {f"eval{suffix}": {"condition": "service_completed_successfully"}}
        assert any(v.endswith("/train:/data:ro") for v in train["volumes"])
        assert any(v.endswith("/val:/data:ro") for v in evaluate["volumes"])
        run = "${CPU_RUN_NAME}" if suffix else "${RUN_NAME}"  # the artifact: the seed folder's, read-only after train
        artifact = f"${{RUNS}}/{run}/seed_${{SEED}}/artifact:/runs/{run}/seed_${{SEED}}/artifact:ro"
        assert all(artifact in services[f"{name}{suffix}"]["volumes"] for name in ("eval", "verify", "export"))
        assert f"${{RUNS}}/{run}:/runs/{run}" in train["volumes"] and artifact not in train["volumes"]
        for service in (train, evaluate, verify):
            assert service["user"] != "0:0" and service["read_only"] and service["cap_drop"] == ["ALL"]
    gpu = services["train"]["deploy"]["resources"]["reservations"]["devices"]
    assert gpu == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    assert services["train"]["ulimits"]["memlock"] == -1 and "deploy" not in services["train-cpu"]
    assert not any("gpus" in s for s in services.values())  # Compose ≥ 2.30 only; docker-compose 1.29 refuses it


def test_every_variable_compose_uses_has_a_default_in_dot_env():
    used = set(re.findall(r"\$\{(\w+)\}", (REPO / "compose.yaml").read_text("utf-8")))
    defined = {line.split("=", 1)[0] for line in (REPO / ".env").read_text("utf-8").splitlines()
               if line and not line.startswith("#")}
    assert used - defined == set()
    assert {"SEED", "NPROC", "SUBMISSION", "DATA_ROOT", "COMPOSE_PROFILES"} <= defined


@pytest.mark.parametrize("variant", ["cuda", "cpu"])
def test_lock_pins_every_dependency_with_hashes(variant):
    """The image installs only the lock (--require-hashes): a dependency added to pyproject.toml or
    to the variant's .in file without `tools/build-image lock` would be missing from the image."""
    lock = (REPO / "docker" / f"requirements-{variant}.lock").read_text("utf-8")
    pinned = {m.group(1).lower(): m.group(2) for m in re.finditer(r"^([A-Za-z0-9_.-]+)==(\S+) \\$", lock, re.M)}
    blocks = re.split(r"\n(?=[A-Za-z])", lock.split("\n", 2)[2])
    assert all("--hash=sha256:" in block for block in blocks if block.strip())
    project = tomllib.loads((REPO / "pyproject.toml").read_text("utf-8"))["project"]["dependencies"]
    extras = [line for line in (REPO / "docker" / f"requirements-{variant}.in").read_text("utf-8").splitlines()
              if line and not line.startswith("#")]
    wanted = {re.match(r"[A-Za-z0-9_.-]+", spec).group(0).lower().replace("_", "-") for spec in [*project, *extras]}
    assert wanted - set(pinned) == set(), "run tools/build-image lock"
    assert pinned["torch"] == {"cuda": "2.9.1", "cpu": "2.13.0+cpu"}[variant]


# ------------------------------------------------------------------ data views (no engine needed)

def _demo_copy(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(DEMO / "datasets", root / "datasets")
    shutil.copytree(DEMO / "tokenizers", root / "tokenizers")
    return root


def test_views_hold_one_split_each_as_hard_links_and_sync_in_place(tmp_path):
    root = _demo_copy(tmp_path)
    dataset = root / "datasets" / "fineweb10B_demo1024"
    views = make_views(root, "fineweb10B_demo1024", "demo_1024_bpe.model")
    assert sorted(p.name for p in views.train.iterdir()) == ["demo_1024_bpe.model", "fineweb_train_000000.bin",
                                                             "fineweb_train_000001.bin", "fineweb_train_000002.bin"]
    assert sorted(p.name for p in views.val.iterdir()) == ["demo_1024_bpe.model", "fineweb_val_000000.bin"]
    assert (views.val / "fineweb_val_000000.bin").stat().st_ino == (dataset / "fineweb_val_000000.bin").stat().st_ino
    inode = views.train.stat().st_ino  # a bind mount holds this inode: the folder must survive a re-sync
    (views.train / "stale.bin").write_bytes(b"x")
    (dataset / "fineweb_train_000002.bin").unlink()
    again = make_views(root, "fineweb10B_demo1024", "demo_1024_bpe.model")
    assert again.train.stat().st_ino == inode
    assert sorted(p.name for p in again.train.iterdir()) == ["demo_1024_bpe.model", "fineweb_train_000000.bin",
                                                             "fineweb_train_000001.bin"]


def test_a_replaced_source_file_is_relinked(tmp_path):
    source, view = tmp_path / "a.bin", tmp_path / "view"
    view.mkdir()
    source.write_bytes(b"old")
    sync_view(view, [source])
    source.unlink()
    source.write_bytes(b"new")
    sync_view(view, [source])
    assert (view / "a.bin").read_bytes() == b"new" and (view / "a.bin").stat().st_ino == source.stat().st_ino


def test_views_say_what_is_missing(tmp_path):
    root = _demo_copy(tmp_path)
    with pytest.raises(UsageError, match="no such tokenizer file"):
        make_views(root, "fineweb10B_demo1024", "sp8192.model")
    for shard in (root / "datasets" / "fineweb10B_demo1024").glob("fineweb_val_*"):
        shard.unlink()
    with pytest.raises(UsageError, match="found 3 training and 0 validation shard"):
        make_views(root, "fineweb10B_demo1024", "demo_1024_bpe.model")


# ------------------------------------------------------------------ the real engine

def _run(command: list[str], env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def compose_command() -> list[str]:
    """The Compose this machine has, as README.md gives both: v2's `docker compose`, else docker-compose 1.29."""
    try:
        v2 = _run(["docker", "compose", "version"], timeout=60).returncode == 0
    except FileNotFoundError:
        v2 = False
    return ["docker", "compose"] if v2 else ["docker-compose"]


COMPOSE = compose_command()


@pytest.fixture(scope="module")
def engine():
    """The engine, Compose and an up-to-date pgolf:cpu image (built here when it is not)."""
    for command in (["docker", "version", "--format", "{{.Server.Version}}"], [*COMPOSE, "version"]):
        try:
            answer = _run(command, timeout=60)
        except FileNotFoundError:
            pytest.fail(f"{command[0]} is not installed: run tools/setup-host (as root) first")
        if answer.returncode != 0:
            pytest.fail(f"{' '.join(command)} failed ({answer.stderr.strip()}): run tools/setup-host (as root) first")
    built = _run([str(REPO / "tools" / "build-image"), "cpu"], timeout=1200)
    assert built.returncode == 0, built.stdout + built.stderr
    again = _run([str(REPO / "tools" / "build-image"), "cpu"])
    assert again.returncode == 0 and "pgolf:cpu: up to date" in again.stdout  # cached by content label
    return "pgolf:cpu"


class Project:
    """One `docker compose --profile cpu` project of its own (name, runs folder, data copy)."""

    def __init__(self, tmp: Path, run_name: str, submission: Path, env_lines: list[str], nproc: int):
        self.name = f"pgolftest{uuid.uuid4().hex[:8]}"
        self.runs, self.data = tmp / "runs", _demo_copy(tmp)
        env_file = tmp / "submission.env"
        env_file.write_text("".join(f"{line}\n" for line in env_lines))
        uid, gid = (os.getuid(), os.getgid()) if os.getuid() else (1000, 1000)
        self.env = {**os.environ, "COMPOSE_PROJECT_NAME": self.name, "RUNS": str(self.runs),
                    "CPU_DATA_ROOT": str(self.data), "CPU_SUBMISSION": str(submission),
                    "CPU_SUBMISSION_ENV": str(env_file), "CPU_RUN_NAME": run_name, "SEED": "7",
                    "CPU_NPROC": str(nproc),
                    "PGOLF_UID": str(uid), "PGOLF_GID": str(gid)}
        self.seed_dir = self.runs / run_name / "seed_7"

    def compose(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return _run([*COMPOSE, "--profile", "cpu", *args], self.env, timeout)

    def container(self, service: str) -> dict:
        ids = self.compose("ps", "-a", "-q", service).stdout.split()
        assert len(ids) == 1, f"{service}: containers {ids}"
        return json.loads(_run(["docker", "inspect", ids[0]]).stdout)[0]

    def verdict(self) -> dict:
        return json.loads((self.seed_dir / "verdict.json").read_text("utf-8"))

    def down(self) -> None:
        self.compose("down", "-v", "--remove-orphans", timeout=120)


@pytest.fixture
def project(engine, tmp_path):
    made: list[Project] = []

    def make(run_name: str, submission: Path = REPO / "examples" / "tiny", env_lines: list[str] = (),
             nproc: int = 2) -> Project:
        made.append(Project(tmp_path, run_name, submission, ["PRESET=cpu-tiny", *env_lines], nproc))
        return made[-1]

    yield make
    for p in made:
        p.down()


def test_demo_runs_three_phases_in_three_containers_and_passes(project):
    demo = project("demo")
    up = demo.compose("up")
    phases = {s: demo.container(s) for s in ("prepare-cpu", *PHASES, "export-cpu")}
    exits = {s: c["State"]["ExitCode"] for s, c in phases.items()}
    assert exits == dict.fromkeys(phases, 0), up.stdout[-4000:] + up.stderr[-2000:]
    assert len({phases[s]["Id"] for s in PHASES}) == 3
    assert [phases[s]["Config"]["Cmd"][0] for s in PHASES] == ["phase", "phase", "verify"]
    evaluate = phases["eval-cpu"]
    assert evaluate["HostConfig"]["NetworkMode"] == "none" and evaluate["HostConfig"]["ReadonlyRootfs"]
    mounts = {m["Destination"]: m for m in evaluate["Mounts"]}
    assert not mounts["/data"]["RW"] and not mounts["/runs/demo/seed_7/artifact"]["RW"] and mounts["/runs/demo"]["RW"]
    assert mounts["/data"]["Source"].endswith("/.pgolf/fineweb10B_demo1024/val")
    assert all(phases[s]["Config"]["User"] == demo.env["PGOLF_UID"] + ":" + demo.env["PGOLF_GID"] for s in PHASES)
    verdict = demo.verdict()
    assert verdict["status"] == "pass", [f["message"] for f in verdict["findings"] if f["status"] != "pass"]
    codes = {f["code"]: f["status"] for f in verdict["findings"]}
    # what the engine enforces is recognised from inside: its PID namespace, no network, the mounted view
    assert codes["isolation.pid_namespace"] == codes["isolation.network"] == codes["isolation.data_view"] == "pass"
    assert codes["ledger.score_before_update"] == codes["ledger.single_pass"] == codes["metric.computed"] == "pass"
    assert "PASS metric" in demo.compose("logs", "--no-color", "verify-cpu").stdout
    exported = list((demo.runs / "demo" / "records" / "track_local").glob("*_Demo/submission.json"))
    assert len(exported) == 1 and json.loads(exported[0].read_text())["val_bpb"] > 0
    assert [p.name for p in (demo.seed_dir / "artifact").iterdir()] == ["model.pt"]  # on the host, beside the logs


def test_planted_violation_fails_verify_and_a_planted_network_call_in_eval_is_refused(project, tmp_path):
    submission = stage_broken_tiny(tmp_path / "submission")
    script = submission / "train_gpt.py"
    script.write_text(PLANTED_CALL + script.read_text("utf-8"))
    # one rank and few steps: this run is about the verdict, not the model (CI time on 2 cores)
    bad = project("bad", submission, ["TINY_BUG=update_before_score", "TINY_STEPS=20"], nproc=1)
    up = bad.compose("up")
    exits = {s: bad.container(s)["State"]["ExitCode"] for s in PHASES}
    assert exits == {"train-cpu": 0, "eval-cpu": 0, "verify-cpu": 1}, up.stdout[-4000:] + up.stderr[-2000:]
    assert bad.compose("ps", "-a", "-q", "export-cpu").stdout.strip() == ""  # no records folder for a failed run
    verdict = bad.verdict()
    failed = {f["code"] for f in verdict["findings"] if f["status"] == "fail"}
    assert verdict["status"] == "fail" and "ledger.update_before_score" in failed, verdict["findings"]
    assert "isolation.network_attempt" in failed  # refused by the engine, and counted all the same
    eval_log = (bad.seed_dir / "eval.log").read_text("utf-8")
    assert "planted network call: [Errno 101] Network is unreachable" in eval_log
    assert "planted network call" not in (bad.seed_dir / "train.log").read_text("utf-8")


def test_compose_up_tool_starts_a_new_run_folder_each_time_owned_by_the_caller_with_host_paths(engine, tmp_path):
    runs, data, env_file = tmp_path / "runs", _demo_copy(tmp_path), tmp_path / "submission.env"
    env_file.write_text("PRESET=cpu-tiny\nTINY_STEPS=20\n")  # one rank, few steps: CI time on 2 cores
    env = {**os.environ, "COMPOSE_PROJECT_NAME": f"pgolftest{uuid.uuid4().hex[:8]}", "RUNS": str(runs),
           "CPU_DATA_ROOT": str(data), "CPU_SUBMISSION_ENV": str(env_file), "CPU_NPROC": "1"}
    try:
        done = _run([str(REPO / "tools" / "compose-up"), "cpu", "7"], env, timeout=900)
        assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
        [run] = runs.iterdir()
        assert run.name.startswith("demo-") and json.loads((run / "seed_7" / "verdict.json").read_text())["status"] == "pass"
        [records] = (run / "records" / "track_local").glob("*_Demo")
        assert f"seed 7: {run}/seed_7 " in done.stdout and f"then pgolf check {records}\n" in done.stdout  # host paths
        assert {p.stat().st_uid for p in [run, *run.rglob("*")]} == {os.getuid()}
        assert (run / "seed_7" / "run_id").read_text() == f"compose-{run.name}\n"

        trained = (run / "seed_7" / "phase_train.json").stat().st_mtime_ns
        taken = {**env, "CPU_RUN_NAME": run.name}
        again = _run([str(REPO / "tools" / "compose-up"), "cpu", "7"], taken, timeout=120)
        assert again.returncode == 2 and f"{run} already exists; a run folder is never extended" in again.stderr
        raw = _run([*COMPOSE, "--profile", "cpu", "up", "--no-color"], {**taken, "SEED": "7"}, timeout=300)
        refusal = f"{runs}/{run.name}/seed_7 already holds a run and a run is never extended"
        # refused by prepare; docker-compose 1.29 shows a dependency's exit code only, v2 its output too
        shown = raw.stdout + raw.stderr if COMPOSE[0] == "docker" else _run(
            [*COMPOSE, "--profile", "cpu", "logs", "--no-color", "prepare-cpu"], taken).stdout
        assert refusal in shown, raw.stdout + raw.stderr
        assert (run / "seed_7" / "phase_train.json").stat().st_mtime_ns == trained  # no phase ran again
    finally:
        _run([*COMPOSE, "--profile", "cpu", "down", "-v", "--remove-orphans"], env, timeout=120)


def test_doctor_in_the_image_reports_shared_memory_as_the_engine_sets_it(engine):
    def doctor(*flags: str) -> dict:
        done = _run(["docker", "run", "--rm", "--network", "none", *flags, engine, "doctor", "--json",
                     "--only", "shm,torch,image"], timeout=120)
        return {f["data"]["item"]: f for f in json.loads(done.stdout)["findings"]}

    small, large = doctor(), doctor("--shm-size", "2g")
    assert small["shm"]["status"] == "fail" and small["shm"]["data"]["bytes"] == 64 * 2**20  # Docker's default
    assert large["shm"]["status"] == "pass" and large["shm"]["data"]["bytes"] == 2 * 2**30
    assert large["torch"]["code"] == "doctor.torch.cpu_build" and "variant cpu" in large["image"]["message"]
