"""The fuzzer: real record folders, a real run folder and the demo dataset, mutated, through `pgolf`.

Every case must end as a tool should (tests/fuzzing.py: exit 0/1/2, no traceback, a one-line usage
error, under SLOW_S and the memory cap, strict JSON out). Each family mutates one kind of input the
issue found crashes in; hypothesis draws the mutations with a fixed seed (derandomize), so CI runs the
same cases every time. `PGOLF_FUZZ=all` runs many more per family (docs/fuzzing.md).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st

from conftest import FIXTURES, run_failures
from fuzzing import EXHAUSTIVE, NUMBER_TEXTS, TEXTS, check_case, deep_expression, deep_json, run_case
from harness.paths import DEMO_DATASET, DEMO_TOKENIZER, REPO, TINY_EXAMPLE

RECORDS = sorted(str(p.relative_to(FIXTURES)) for p in FIXTURES.glob("*/*") if p.is_dir())


def examples(ci: int) -> settings:
    """A family's budget: `ci` cases in the suite, 20x that with PGOLF_FUZZ=all."""
    return settings(max_examples=ci * 20 if EXHAUSTIVE else ci, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))


@contextmanager
def workspace() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="pgolf-fuzz-") as tmp:
        yield Path(tmp)


def copy_record(rel: str, into: Path) -> Path:
    dest = into / "records" / rel
    shutil.copytree(FIXTURES / rel, dest)
    return dest


def logs_of(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix in (".log", ".txt") and p.is_file())


def judge_record(family: str, folder: Path, tmp: Path, *extra: str) -> None:
    """check (with both outputs, each profile) and rerun --merge (which reads the claims and runs nothing)."""
    tmp.mkdir(parents=True, exist_ok=True)
    verdict, md = tmp / "out" / "verdict.json", tmp / "out" / "summary.md"
    check_case(family, ["check", folder, "--json", verdict, "--markdown", md, *extra], tmp, (verdict,))
    check_case(family, ["check", folder, "--profile", "historic", "-q", *extra], tmp)
    merge = tmp / "merge"
    merge.mkdir(exist_ok=True)
    check_case(family, ["rerun", folder, "--merge", merge, "--out", tmp / "rerun", "-q"], tmp,
               (tmp / "rerun" / "verdict.json",))


# --- recursion and memory in the walks ---------------------------------------------------------------

@examples(12)
@given(record=st.sampled_from(RECORDS), depth=st.one_of(st.integers(50, 4000), st.integers(970, 999)),
       where=st.sampled_from(["code", "json", "json_value"]))
def test_deep_nesting(record, depth, where):
    """Deep expressions in the code; deep JSON as the document, and as one value of a real submission.json
    (which parses, and then reaches the schema validator's recursion)."""
    with workspace() as tmp:
        folder = copy_record(record, tmp)
        if where == "code":
            with open(folder / "train_gpt.py", "a", encoding="utf-8") as handle:
                handle.write("\n" + deep_expression(depth))
        elif where == "json":
            (folder / "submission.json").write_text(deep_json(depth), "utf-8")
        else:
            deep_value(folder / "submission.json", depth)
        judge_record("recursion", folder, tmp)


def deep_value(path: Path, depth: int) -> None:
    """submission.json with its `compliance` object (which the historic profile's schema walks into) nested
    `depth` levels deep."""
    data = json.loads(path.read_text("utf-8"))
    data["compliance"] = PLACEHOLDER
    path.write_text(json.dumps(data).replace(f'"{PLACEHOLDER}"', deep_json(depth)), "utf-8")


def test_json_values_nested_just_under_the_parser_s_limit():
    """A value nested 970-999 levels parses (json stops near 1,000) and then met the schema validator's
    recursion, which ends ~20 levels sooner: every depth of that window, each one case."""
    with workspace() as tmp:
        for depth in range(970, 1000):
            folder = copy_record(RECORDS[2], tmp / str(depth))
            deep_value(folder / "submission.json", depth)
            check_case("recursion", ["check", folder, "-q"], tmp)


@pytest.mark.parametrize("case", ["symlink_loop", "self_link", "huge_script", "huge_literal", "deep_imports"])
def test_walks_are_bounded(case):
    with workspace() as tmp:
        folder = copy_record(RECORDS[0], tmp)
        code = folder / "train_gpt.py"
        if case == "symlink_loop":
            (folder / "a").symlink_to("b")
            (folder / "b").symlink_to("a")
            (folder / "loop").mkdir()
            (folder / "loop" / "up").symlink_to("..")
        elif case == "self_link":
            (folder / "me").symlink_to(".")
        elif case == "huge_script":  # 20 MB of ordinary statements
            code.write_text(code.read_text("utf-8") + "x = 1\n" * (20 << 20 // 6), "utf-8")
        elif case == "huge_literal":
            code.write_text(code.read_text("utf-8") + f"\nBLOB = '{'a' * (20 << 20)}'\n", "utf-8")
        else:  # a chain of 300 local modules, each importing the next
            for i in range(300):
                (folder / f"m{i}.py").write_text(f"import m{i + 1}\n", "utf-8")
            code.write_text("import m0\n" + code.read_text("utf-8"), "utf-8")
        judge_record("recursion", folder, tmp)


# --- numbers --------------------------------------------------------------------------------------

def _json_numbers(data, path=()) -> list[tuple]:
    """Paths of every number in a JSON document."""
    if isinstance(data, dict):
        return [p for k, v in data.items() for p in _json_numbers(v, (*path, k))]
    if isinstance(data, list):
        return [p for i, v in enumerate(data) for p in _json_numbers(v, (*path, i))]
    return [path] if isinstance(data, (int, float)) and not isinstance(data, bool) else []


def _set(data, path, value):
    for key in path[:-1]:
        data = data[key]
    data[path[-1]] = value


PLACEHOLDER = "__pgolf_fuzz_number__"


@examples(25)
@given(record=st.sampled_from(RECORDS), pick=st.integers(0, 10_000), number=st.sampled_from(NUMBER_TEXTS))
def test_hostile_numbers_in_submission_json(record, pick, number):
    with workspace() as tmp:
        folder = copy_record(record, tmp)
        data = json.loads((folder / "submission.json").read_text("utf-8"))
        paths = _json_numbers(data)
        _set(data, paths[pick % len(paths)], PLACEHOLDER)
        text = json.dumps(data).replace(f'"{PLACEHOLDER}"', number)  # raw: NaN, 1e400 and 400 digits as written
        (folder / "submission.json").write_text(text, "utf-8")
        judge_record("numbers", folder, tmp)


@examples(25)
@given(record=st.sampled_from(RECORDS), pick=st.integers(0, 10_000), number=st.sampled_from(NUMBER_TEXTS))
def test_hostile_numbers_in_log_lines(record, pick, number):
    """A number in a line the checker reads (seed, step, time, bytes, loss) becomes 40 digits, 1e400, NaN..."""
    import re

    with workspace() as tmp:
        folder = copy_record(record, tmp)
        log = logs_of(folder)[pick % len(logs_of(folder))]
        lines = log.read_text("utf-8", "replace").splitlines()
        wanted = re.compile(r"seed|step|time|bytes|val_bpb|val_loss|Code size|world_size|tokens")
        candidates = [i for i, line in enumerate(lines) if wanted.search(line) and re.search(r"\d", line)]
        i = candidates[(pick // 7) % len(candidates)]
        digits = list(re.finditer(r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?", lines[i]))
        hit = digits[(pick // 3) % len(digits)]
        lines[i] = lines[i][:hit.start()] + number + lines[i][hit.end():]
        log.write_text("\n".join(lines) + "\n", "utf-8")
        judge_record("numbers", folder, tmp)


@examples(15)
@given(numbers=st.lists(st.sampled_from(["1.0", "1.0", "1.1", "0", "-1", "1e400", "nan", "inf", "1e-320",
                                         "5e-324", "9" * 400, "", "x"]), min_size=1, max_size=4))
def test_hostile_against_values(numbers):
    """--against BPB,...: equal values (zero variance), underflow, overflow, not a number."""
    with workspace() as tmp:
        folder = copy_record(RECORDS[2], tmp)
        check_case("numbers", ["check", folder, "-q", "--against", ",".join(numbers)], tmp)


# --- names and text -------------------------------------------------------------------------------

@examples(25)
@given(record=st.sampled_from(RECORDS), key=st.sampled_from(TEXTS), value=st.sampled_from(TEXTS),
       field=st.sampled_from(["seed_key", "name", "author", "track", "seeds", "date", "new_key"]))
def test_hostile_text_in_submission_json(record, key, value, field):
    """Seed keys like '²' or 'abc', lone surrogates (as JSON escapes), seeds [-1], text where numbers go."""
    with workspace() as tmp:
        folder = copy_record(record, tmp)
        data = json.loads((folder / "submission.json").read_text("utf-8"))
        if field == "seed_key" and isinstance(data.get("seed_results"), dict) and data["seed_results"]:
            first = next(iter(data["seed_results"]))
            data["seed_results"][PLACEHOLDER] = data["seed_results"].pop(first)
        elif field == "seeds":
            data["seeds"] = [-1, PLACEHOLDER]
        elif field == "new_key":
            data[PLACEHOLDER] = PLACEHOLDER
        else:
            data[field] = PLACEHOLDER
        text = json.dumps(data).replace(f'"{PLACEHOLDER}"', f'"{key}"', 1).replace(f'"{PLACEHOLDER}"', f'"{value}"')
        (folder / "submission.json").write_text(text, "utf-8")
        judge_record("names_text", folder, tmp)


@pytest.mark.parametrize("case", ["latin1_rules", "non_utf8_name", "non_utf8_log", "non_utf8_json", "bom_json",
                                  "surrogate_name_output"])
def test_encodings(case):
    with workspace() as tmp:
        folder = copy_record(RECORDS[2], tmp)
        extra: list[str] = []
        if case == "latin1_rules":
            rules = tmp / "rules.yaml"
            text = (REPO / "harness/rules/rules.yaml").read_text("utf-8").replace("# Sources", "# Sources caf\u00e9")
            rules.write_bytes(text.encode("latin-1", "replace"))
            extra = ["--rules", rules]
        elif case == "non_utf8_name":
            Path(os.fsdecode(os.fsencode(folder) + b"/notes\xff\xfe.py")).write_bytes(b"x = 1\n")
        elif case == "non_utf8_log":
            log = logs_of(folder)[0]
            log.write_bytes(log.read_bytes().replace(b"val_bpb", b"val_\xff\xfebpb", 3))
        elif case == "non_utf8_json":
            path = folder / "submission.json"
            path.write_bytes(path.read_bytes().replace(b'"author": "', b'"author": "\xff\xfe'))
        elif case == "bom_json":
            path = folder / "submission.json"
            path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
        else:  # an output file whose name is not valid UTF-8
            out = Path(os.fsdecode(os.fsencode(tmp) + b"/out\xff.json"))
            check_case("names_text", ["check", folder, "-q", "--json", out], tmp, (out,))
            return
        judge_record("names_text", folder, tmp, *extra)


# --- special files --------------------------------------------------------------------------------

@pytest.mark.parametrize("target", ["submission.json", "train_gpt.py", "README.md", "log", "rules", "rules_dev_zero",
                                    "log_dir", "json_dev_zero", "huge_log_line", "empty_log"])
def test_special_files(target):
    """FIFOs (a reader that waits forever), /dev/zero (an endless file), a 50 MB line, folders for files."""
    with workspace() as tmp:
        folder = copy_record(RECORDS[2], tmp)
        extra: list[str] = []
        log = logs_of(folder)[0]
        if target in ("submission.json", "train_gpt.py", "README.md"):
            (folder / target).unlink()
            os.mkfifo(folder / target)
        elif target == "log":
            log.unlink()
            os.mkfifo(log)
        elif target == "rules":
            os.mkfifo(tmp / "rules.yaml")
            extra = ["--rules", tmp / "rules.yaml"]
        elif target == "rules_dev_zero":
            extra = ["--rules", "/dev/zero"]
        elif target == "log_dir":
            log.unlink()
            log.mkdir()
        elif target == "json_dev_zero":
            (folder / "submission.json").unlink()
            (folder / "submission.json").symlink_to("/dev/zero")
        elif target == "huge_log_line":
            with open(log, "a", encoding="utf-8") as handle:
                handle.write("step:1/2 " + "x" * (50 << 20) + "\n")
        else:
            log.write_text("", "utf-8")
        judge_record("special_files", folder, tmp, *extra)


# --- run records ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def real_run(tmp_path_factory) -> Path:
    """One finished seed of examples/tiny (5 steps, 1 rank): the run folder verify, export and rerun read."""
    out = tmp_path_factory.mktemp("fuzz_run") / "run"
    done = subprocess.run([sys.executable, "-m", "harness", "run", "--submission", TINY_EXAMPLE, "--out", out,
                           "--seeds", "1", "--nproc", "1", "-q"], capture_output=True, text=True, timeout=600,
                          cwd=REPO, env={**os.environ, "TINY_STEPS": "5"})
    assert done.returncode in (0, 1), run_failures(out) + done.stderr[-2000:]
    return out


def _hostile_value(data):
    """A JSON value that replaces what was there: missing, another type, hostile numbers and text."""
    return data.draw(st.one_of(
        st.just(None), st.booleans(), st.integers(-2, 10 ** 40), st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from(TEXTS), st.just([]), st.just({}), st.lists(st.integers(-1, 3), max_size=3),
        st.dictionaries(st.sampled_from(["a", "1", "code", "seed"]), st.integers(), max_size=2)))


def _paths(data, path=()) -> list[tuple]:
    """Every key path of a JSON document, containers included."""
    out = [path] if path else []
    if isinstance(data, dict):
        out += [p for k, v in data.items() for p in _paths(v, (*path, k))]
    elif isinstance(data, list):
        out += [p for i, v in enumerate(data[:5]) for p in _paths(v, (*path, i))]
    return out


RECORD_FILES = ["phase_train.json", "phase_eval.json", "verdict.json", "run_id"]


@examples(40)
@given(data=st.data(), file=st.sampled_from(RECORD_FILES), how=st.sampled_from(["delete", "replace", "whole"]),
       command=st.sampled_from(["verify", "export", "merge", "phase_eval"]))
def test_mutated_run_records(real_run, data, file, how, command):
    """verify, export, rerun --merge and phase eval (refused: the seed holds an eval phase, after its train
    record was read) on a real run whose phase records, verdict or run id were edited:
    a missing or mistyped field (older runs lack code_digest and artifact_digest) is a one-line error."""
    with workspace() as tmp:
        run = tmp / "run"
        shutil.copytree(real_run, run, symlinks=True)
        path = run / "seed_1" / file
        if file == "run_id" or how == "whole":
            path.write_text(json.dumps(_hostile_value(data)) if file != "run_id" else data.draw(st.sampled_from(TEXTS)),
                            "utf-8")
        else:
            document = json.loads(path.read_text("utf-8"))
            where = data.draw(st.sampled_from(_paths(document)))
            parent = document
            for key in where[:-1]:
                parent = parent[key]
            if how == "delete":
                del parent[where[-1]]
            else:
                parent[where[-1]] = _hostile_value(data)
            path.write_text(json.dumps(document), "utf-8")
        if command == "verify":
            check_case("run_records", ["verify", run / "seed_1", "-q"], tmp, (run / "seed_1" / "verdict.json",))
        elif command == "phase_eval":
            (tmp / "val").mkdir()
            check_case("run_records", ["phase", "eval", "--data", tmp / "val", "--out", run / "seed_1", "-q"], tmp)
        elif command == "export":
            check_case("run_records", ["export", run, "--name", "Fuzz", "--date", "2026-05-01", "--dest",
                                       tmp / "records" / "track_non_record_16mb", "-q"], tmp)
        else:
            check_case("run_records", ["rerun", claims(real_run), "--merge", run, "--out", tmp / "rerun", "-q"], tmp,
                       (tmp / "rerun" / "verdict.json",))


def claims(real_run: Path) -> Path:
    """A records folder exported once from the untouched run: the claims rerun --merge judges mutated runs against."""
    folder = real_run.parent / "claims" / "track_non_record_16mb" / "2026-05-01_Claims"
    if not folder.exists():
        outcome = run_case(["export", real_run, "--name", "Claims", "--date", "2026-05-01", "--dest", folder.parent,
                            "--force", "-q"], real_run.parent)
        assert outcome.rc == 0, outcome.stderr
    return folder


@pytest.fixture(scope="module")
def real_rerun(real_run) -> Path:
    """A finished `pgolf rerun` of the run's own export: the folder (rerun.json, seed_1/) --resume reads."""
    out = real_run.parent / "rerun"
    done = subprocess.run([sys.executable, "-m", "harness", "rerun", claims(real_run), "--out", out, "--nproc", "1",
                           "-q"], capture_output=True, text=True, timeout=600, cwd=REPO,
                          env={**os.environ, "TINY_STEPS": "5"})
    assert done.returncode in (0, 1) and (out / "seed_1" / "verdict.json").is_file(), done.stderr[-2000:]
    return out


@examples(25)
@given(data=st.data(), how=st.sampled_from(["delete", "replace", "whole", "extra"]))
def test_mutated_rerun_plan(real_run, real_rerun, data, how):
    """rerun --resume on a rerun folder whose rerun.json was edited: refused naming what changed, or (an edit
    that leaves the options as they were) judged again without running the finished seed."""
    with workspace() as tmp:
        out = tmp / "rerun"
        shutil.copytree(real_rerun, out, symlinks=True)
        plan = json.loads((out / "rerun.json").read_text("utf-8"))
        key = data.draw(st.sampled_from(sorted(plan)))
        if how == "delete":
            del plan[key]
        elif how == "replace":
            plan[key] = _hostile_value(data)
        elif how == "extra":
            plan[data.draw(st.sampled_from(TEXTS))] = _hostile_value(data)
        else:
            plan = _hostile_value(data)
        (out / "rerun.json").write_text(json.dumps(plan), "utf-8")
        check_case("run_records", ["rerun", claims(real_run), "--out", out, "--resume", "--nproc", "1", "-q"], tmp,
                   (out / "verdict.json",))


# --- outputs --------------------------------------------------------------------------------------

@pytest.mark.parametrize("flag", ["--json", "--markdown"])
def test_output_onto_a_symlink_keeps_the_link(flag):
    """--json/--markdown onto a symlink writes through it (the link stays a link, its target gets the text)."""
    with workspace() as tmp:
        folder = copy_record(RECORDS[2], tmp)
        target, link = tmp / "target.txt", tmp / "link"
        target.write_text("old", "utf-8")
        link.symlink_to(target)
        check_case("outputs", ["check", folder, "-q", flag, link], tmp)
        assert link.is_symlink() and os.readlink(link) == str(target)
        assert target.read_text("utf-8") != "old"
        dangling = tmp / "dangling"
        dangling.symlink_to(tmp / "nowhere" / "file")
        check_case("outputs", ["check", folder, "-q", flag, dangling], tmp)
        assert dangling.is_symlink()


# --- arguments ------------------------------------------------------------------------------------

VALUES = ["0", "-1", "nan", "inf", "-inf", "1e400", "1" * 40, "", " ", "abc", "\u00b2", "1,,2", "1,1", "20260101",
          "2026-13-01", "2026-02-30", "../x", "/dev/null", "/dev/zero", "--", "-q", "0.0", "1e-9", "1.5"]
# the values `pgolf run` may rightly accept for an option (each other one must be refused before a job starts)
ACCEPTED = {"--seeds": {"0", "1" * 40, "20260101"}, "--nproc": {"1" * 40, "20260101"},
            "--train-limit": {"1" * 40, "20260101", "1e-9", "1.5"},
            "--eval-limit": {"1" * 40, "20260101", "1e-9", "1.5"}}
COMMANDS = {
    "check": ["--profile", "--track", "--against", "--json", "--markdown", "--rules"],
    "run": ["--seeds", "--nproc", "--data", "--tokenizer", "--track", "--train-limit", "--eval-limit", "--submission",
            "--image", "--gpus", "--memory"],
    "rerun": ["--seeds", "--nproc", "--data", "--track", "--train-limit", "--eval-limit", "--against", "--merge",
              "--gpus", "--memory"],
    "export": ["--name", "--date", "--dest", "--author", "--github-id"],
    "verify": ["--rules"],
    "data verify": ["--variant", "--tokenizer"],
    "phase eval": ["--data", "--out", "--limit", "--artifact"],
}


@examples(60)
@given(data=st.data(), command=st.sampled_from(sorted(COMMANDS)))
def test_arguments(real_run, data, command):
    """Every option with a hostile value; nothing may start a job on one (a run refused must exit 2 at once)."""
    with workspace() as tmp:
        folder = copy_record(RECORDS[2], tmp)
        positional = {"check": [folder], "run": [], "rerun": [folder], "export": [real_run],
                      "verify": [real_run / "seed_1"], "data verify": [DEMO_DATASET], "phase eval": []}[command]
        options = data.draw(st.lists(st.sampled_from(COMMANDS[command]), min_size=1, max_size=3, unique=True))
        chosen = {option: data.draw(st.sampled_from(VALUES)) for option in options}
        if command == "run":  # a run whose every option is acceptable would start a real job: not this family's
            assume(not all(value in ACCEPTED.get(option, ()) for option, value in chosen.items()))
        argv = [*command.split(), *positional, *(x for pair in chosen.items() for x in pair)]
        if command == "run":
            argv += ["--out", tmp / "run"]
        if command == "rerun" and "--merge" not in options:
            argv += ["--out", tmp / "rerun"]
        if command == "export" and "--name" not in options:
            argv += ["--name", "Fuzz"]
        if command == "export" and "--dest" not in options:
            argv += ["--dest", tmp / "records" / "track_non_record_16mb"]
        outcome = check_case("arguments", argv, tmp)
        if command == "run":
            assert outcome.rc == 2, outcome.stdout[-2000:]


@pytest.mark.parametrize("argv, blamed", [
    (["rerun", "FOLDER", "--nproc", "0"], "--nproc"),
    (["run", "--nproc", "0"], "--nproc"),
    (["run", "--train-limit", "nan"], "--train-limit"),
    (["rerun", "FOLDER", "--train-limit", "nan"], "--train-limit"),
    (["export", "RUN", "--name", "X", "--date", "20260101"], "--date"),
    (["run", "--seeds", "1,,2"], "--seeds"),
    (["phase", "train", "--submission", "FOLDER", "--data", "FOLDER", "--seed", "-1"], "--seed"),
])
def test_bad_arguments_are_refused_naming_the_option(real_run, argv, blamed):
    with workspace() as tmp:
        folder = copy_record(RECORDS[2], tmp)
        argv = [folder if a == "FOLDER" else real_run if a == "RUN" else a for a in argv]
        argv += ["--out", tmp / "out"] if argv[0] in ("run", "rerun", "phase") else ["--dest", tmp / "records"]
        outcome = check_case("arguments", argv, tmp)
        assert outcome.rc == 2 and blamed in outcome.stderr, outcome.stderr


# --- data verify ----------------------------------------------------------------------------------

@examples(25)
@given(data=st.data(), how=st.sampled_from(["header", "truncate", "extend", "fifo", "empty", "dir"]))
def test_mutated_shards(data, how):
    with workspace() as tmp:
        dataset = tmp / "data" / "datasets" / DEMO_DATASET.name
        shutil.copytree(DEMO_DATASET, dataset)
        (tmp / "data" / "tokenizers").mkdir()
        shutil.copy(DEMO_TOKENIZER, tmp / "data" / "tokenizers" / DEMO_TOKENIZER.name)
        shard = data.draw(st.sampled_from(sorted(dataset.iterdir())))
        raw = bytearray(shard.read_bytes())
        if how == "header":
            at = data.draw(st.integers(0, 255)) * 4
            raw[at:at + 4] = data.draw(st.sampled_from([0, 1, -1, 2 ** 31 - 1, -2 ** 31, 20240520, 256])).to_bytes(
                4, "little", signed=True)
            shard.write_bytes(raw)
        elif how == "truncate":
            shard.write_bytes(raw[:data.draw(st.integers(0, len(raw)))])
        elif how == "extend":
            shard.write_bytes(raw + b"\x01" * data.draw(st.integers(1, 5000)))
        elif how == "fifo":
            shard.unlink()
            os.mkfifo(shard)
        elif how == "empty":
            shard.write_bytes(b"")
        else:
            shard.unlink()
            shard.mkdir()
        check_case("data_verify", ["data", "verify", dataset, "--tokenizer", tmp / "data" / "tokenizers" /
                                   DEMO_TOKENIZER.name], tmp)
        check_case("data_verify", ["data", "verify", dataset, "--json"], tmp)


# --- bounds ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("megabytes", [2, 5])
def test_big_code_is_bounded(megabytes):
    """A script of MB whose log counts the compressed wrapper: minifying it must not take minutes or GBs."""
    with workspace() as tmp:
        folder = copy_record(RECORDS[2], tmp)
        code = folder / "train_gpt.py"
        body = "".join(f"def f{i}(a, b):\n    return a * {i} + b\n" for i in range((megabytes << 20) // 36))
        code.write_text(code.read_text("utf-8") + body, "utf-8")
        for log in logs_of(folder):
            log.write_text(log.read_text("utf-8") + "Code size (compressed): 20000 bytes\n", "utf-8")
        judge_record("bounds", folder, tmp)


def test_unmodified_records_are_clean():
    """The oracle's baseline: every fixture record checks without a problem."""
    with workspace() as tmp:
        for record in RECORDS:
            judge_record("baseline", copy_record(record, tmp), tmp / record.replace("/", "_"))
