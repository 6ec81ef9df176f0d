"""The reference submission end to end on the demo data, PRESET=cpu-tiny, two gloo ranks.

Once through `pgolf run` (the harness measures it and must agree with the script), once as a plain
`torchrun` job like a challenge record, whose log `pgolf check`'s parser must read.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

from harness.claims import pick_score
from harness.cli import DEMO_DATASET, DEMO_TOKENIZER, REPO
from harness.code import counted_bytes, scan_code
from harness.logs import read_log

SUBMISSION = REPO / "submission"
LIMIT = 16_000_000


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGOLF_")}
    return {**env, "PRESET": "cpu-tiny", **extra}


def _train_losses(text: str) -> list[float]:
    return [float(m) for m in re.findall(r"^(?:\[train\] )?step:\d+/\d+ train_loss:(\d+\.\d+)", text, re.M)]


def test_pgolf_run_passes_and_the_harness_measures_what_the_script_reports(tmp_path):
    out = tmp_path / "run"
    # the README's main job: `pgolf run --submission submission` (the demo data and 2 ranks by default)
    run = subprocess.run([sys.executable, "-m", "harness", "run", "--submission", str(SUBMISSION), "--seeds", "1",
                          "--out", str(out), "-q"], env=_env(), capture_output=True, text=True, timeout=900)
    seed = out / "seed_1"
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    verdict = json.loads((seed / "verdict.json").read_text())
    codes = {f["code"]: f["status"] for f in verdict["findings"]}
    assert verdict["status"] == "pass", codes
    for code in ("phase.completed", "ledger.single_pass", "ledger.score_before_update", "ledger.normalized",
                 "metric.matches_submission", "size.within_limit", "train_time.within_limit", "eval_time.within_limit"):
        assert codes[code] == "pass", code

    facts = verdict["seeds"]["1"]
    own = re.search(r"^quantized_ttt val_loss:(\d+\.\d+) val_bpb:(\d+\.\d+) eval_time:\d+ms$",
                    (seed / "eval.log").read_text(), re.M)
    assert own, "the eval phase printed no quantized_ttt line"
    assert abs(facts["val_bpb"] - float(own[2])) < 1e-7 and abs(facts["val_loss"] - float(own[1])) < 1e-7
    assert facts["tokens"] == 50_018
    assert 0 < facts["artifact_bytes"] < LIMIT
    assert [p.name for p in (seed / "artifact").iterdir()] == ["final_model.int6.ptz"]
    losses = _train_losses((seed / "train.log").read_text())
    assert len(losses) >= 3 and losses[-1] < losses[0] - 0.5


def test_standalone_torchrun_prints_record_log_lines_pgolf_check_reads(tmp_path, rules):
    folder = tmp_path / "submission"
    shutil.copytree(SUBMISSION, folder, ignore=shutil.ignore_patterns("*.log", "__pycache__"))
    data = tmp_path / "data"
    shutil.copytree(DEMO_DATASET, data)
    shutil.copy(DEMO_TOKENIZER, data / DEMO_TOKENIZER.name)  # the tokenizer found in DATA_PATH
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "train_gpt.py"], cwd=folder, env=_env(DATA_PATH=str(data), SEED="7"),
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    log_path = folder / "train_seed7.log"
    log_path.write_text(run.stdout)

    log = read_log(log_path, folder, rules)
    assert not log.problems and log.seed == 7
    assert log.get("world_size").value == 2 and log.get("grad_accum_steps").value == 1
    assert log.train_stop_exact and log.steps > 0 and log.get("hessian_s") is not None
    score = pick_score(log, rules)
    assert score is not None and score.label == "quantized_ttt" and score.stage == "ttt"
    assert score.decimals == 8 and score.eval_time_s > 0
    model, total = log.get("model_bytes").value, log.get("total_bytes").value
    assert (folder / "final_model.int6.ptz").stat().st_size == model
    code = counted_bytes(folder, scan_code(folder, rules), compressed=True, rules=rules).total
    assert log.get("code_bytes_compressed").value == code and total == model + code < LIMIT
    losses = _train_losses(run.stdout)
    assert len(losses) >= 3 and losses[-1] < losses[0] - 0.5
