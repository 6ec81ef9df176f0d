"""`pgolf check` on the five real record folders, and on bad variants built from them."""
from __future__ import annotations

import json
import os

import pytest

from conftest import BASELINE, DGATTN, LEAKY, PHASED, SP8192, codes, edit, finding, judge
from harness.check.checker import check_folder
from harness.client import CLIENT_FILE
from harness.findings import UsageError


# --- the real folders, as they are --------------------------------------------------------

def test_sp8192_record_passes_its_claims(record, rules):
    v = judge(record(SP8192), rules)
    assert codes(v, "fail") == set()
    assert {"files.layout", "claims.seed_matches_log"} <= codes(v, "pass")
    assert {s: round(d["val_bpb"], 8) for s, d in v.seeds.items()} == {42: 1.08079352, 314: 1.08103103, 999: 1.08118408}
    assert finding(v, "claims.headline_is_mean").status == "pass"


def test_sp8192_flags_calibration_after_the_budget(record, rules):
    # 588,047 ms of training + 12.7 s of Hessians on training data ends past 600 s
    f = finding(judge(record(SP8192), rules), "train_time.calibration_overrun")
    assert f.status == "warn" and f.evidence[0].line is not None
    assert f.data["calibration_end_ms"] == pytest.approx(600_747, abs=1)


def test_sp8192_seed42_log_counts_other_code(record, rules):
    # the placeholder keeps the shipped file's 16,594 bytes; seed 42's run counted 16,630
    mismatches = [f for f in judge(record(SP8192), rules).findings if f.code == "size.code_mismatch"]
    assert [f.seed for f in mismatches] == [42]
    assert mismatches[0].data == {"logged": 16630, "recomputed": 16594}


def test_leaky_relu_scores_come_from_legal_ttt_lines(record, rules):
    v = judge(record(LEAKY), rules)
    assert {s: d["score_label"] for s, d in v.seeds.items()} == {42: "legal_ttt_exact", 1337: "legal_ttt_exact",
                                                                 2025: "legal_ttt_exact"}
    assert finding(v, "claims.headline_is_mean").status == "pass"
    assert codes(v, "fail") == set()


def test_baseline_sizes_add_up(record, rules):
    v = judge(record(BASELINE), rules)
    size = finding(v, "size.within_limit")
    assert size.data["artifact_bytes"] == 15_863_489 == size.data["model_bytes"] + size.data["code_bytes"]
    # the pre-launch export had more validation tokens than the canonical sp1024 set
    assert finding(v, "data.val_tokens").status == "warn"


def test_phased_ttt_eval_time_is_the_timed_loop(record, rules):
    v = judge(record(PHASED), rules)
    times = {f.seed: f.data["score_eval_s"] for f in v.findings if f.code == "eval_time.within_limit"}
    assert times == {42: 329.0, 0: 332.1, 1234: 332.8}


def test_dg_attention_is_not_passed(record, rules):
    v = judge(record(DGATTN), rules)
    assert v.status == "fail" and v.track == "track_non_record_16mb"
    assert {"logs.no_score", "size.over_limit"} <= codes(v, "fail")


def test_strict_profile_rejects_historic_json(record, rules):
    v = judge(record(BASELINE), rules, profile="strict")
    messages = [f.message for f in v.findings if f.code == "json.schema"]
    assert any("missing required key 'seeds'" in m for m in messages)
    assert judge(record(BASELINE, "2026-03-17_Again"), rules, profile="historic").status != "fail"


# --- files ------------------------------------------------------------------------------

def test_folder_name_must_be_dated(record, rules):
    assert "files.folder_name" in codes(judge(record(SP8192, "SP8192 with spaces"), rules), "fail")
    assert "files.folder_date" in codes(judge(record(SP8192, "2026-13-40_Bad"), rules), "fail")


@pytest.mark.parametrize("name", ["README.md", "submission.json", "train_gpt.py"])
def test_required_file_missing(record, rules, name):
    folder = record(SP8192)
    (folder / name).unlink()
    f = [f for f in judge(folder, rules).findings if f.code == "files.missing"]
    assert f and name in f[0].message and f[0].status == "fail"


def test_empty_train_gpt_fails(record, rules):
    folder = record(SP8192)
    (folder / "train_gpt.py").write_bytes(b"")
    assert "files.empty" in codes(judge(folder, rules), "fail")


def test_symlink_out_of_the_folder_fails(record, rules, tmp_path):
    folder = record(SP8192)
    (tmp_path / "secret.py").write_text("x = 1\n")
    os.symlink(tmp_path / "secret.py", folder / "helper.py")
    f = finding(judge(folder, rules), "files.escapes_folder")
    assert f.status == "fail" and "helper.py" in f.message


def test_path_leaving_the_folder_warns(record, rules):
    folder = record(SP8192)
    (folder / "train_gpt.py").write_text("import os\nDATA = '../../data/fineweb_train_000000.bin'\n")
    f = finding(judge(folder, rules), "files.path_outside")
    assert f.status == "warn" and f.evidence[0].line == 2


def test_symlink_inside_the_folder_warns(record, rules):
    folder = record(SP8192)
    os.symlink(folder / "README.md", folder / "NOTES.md")
    assert finding(judge(folder, rules), "files.symlink").status == "warn"


def test_odd_file_name_warns(record, rules):
    folder = record(SP8192)
    (folder / "my notes.md").write_text("hi")
    assert finding(judge(folder, rules), "files.odd_name").status == "warn"


@pytest.fixture
def unreadable(monkeypatch):
    """Make chosen files raise PermissionError on open, as for a non-root user with mode 000
    (the tests run as root, for whom chmod 000 changes nothing)."""
    import pathlib
    blocked: set[str] = set()
    real_open = pathlib.Path.open

    def guarded(self, *args, **kwargs):
        if self.name in blocked:
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "open", guarded)
    return blocked


def test_unreadable_files_are_findings(record, rules, unreadable):
    folder = record(SP8192)
    unreadable.update({"submission.json", "train_gpt.py", "train_seed314.log", "README.md"})
    v = judge(folder, rules)
    flagged = {f.evidence[0].file for f in v.findings if f.code == "files.unreadable"}
    assert flagged == {"submission.json", "train_gpt.py", "train_seed314.log", "README.md"}
    assert {"json.unreadable", "logs.unreadable"} <= codes(v, "fail")
    assert "cannot be read" in finding(v, "files.syntax_error").message


def test_no_logs_fails(record, rules):
    folder = record(SP8192)
    for log in folder.glob("*.log"):
        log.unlink()
    assert {"files.no_logs", "files.missing_seed_log"} <= codes(judge(folder, rules), "fail")


def test_missing_seed_log_names_the_seed(record, rules):
    folder = record(SP8192)
    (folder / "train_seed314.log").unlink()
    f = finding(judge(folder, rules), "files.missing_seed_log")
    assert f.status == "fail" and f.seed == 314


def test_third_party_import_needs_requirements(record, rules):
    folder = record(SP8192)
    (folder / "train_gpt.py").write_text("import os\nimport torch\nimport brotli\n")
    f = finding(judge(folder, rules, profile="strict"), "files.requirements_missing")
    assert f.status == "fail" and "brotli (line 3)" in f.message and "torch" not in f.message
    assert finding(judge(folder, rules, profile="historic"), "files.requirements_missing").status == "warn"
    (folder / "requirements.txt").write_text("brotli\n")
    assert "files.requirements_missing" not in codes(judge(folder, rules))


def test_shipped_event_client_is_counted_but_not_linted(record, rules):
    folder = record(SP8192)
    (folder / "train_gpt.py").write_text("from pgolf_events import Events\n")
    (folder / "pgolf_events.py").write_bytes(CLIENT_FILE.read_bytes())
    v = judge(folder, rules)
    assert not [f for f in v.findings if f.check == "lint"]
    (folder / "pgolf_events.py").write_bytes(CLIENT_FILE.read_bytes() + b"\nimport requests\n")  # no longer ours
    assert "lint.network" in codes(judge(folder, rules))


def test_unparseable_script_warns(record, rules):
    folder = record(SP8192)
    (folder / "train_gpt.py").write_text("def broken(:\n")
    f = finding(judge(folder, rules), "files.syntax_error")
    assert f.status == "warn" and "line 1" in f.message


def test_unknown_track_warns_and_defaults(rules, tmp_path):
    import shutil
    from conftest import FIXTURES
    dest = tmp_path / "elsewhere" / "2026-04-09_Copy"
    shutil.copytree(FIXTURES / SP8192, dest)
    os.chmod(dest / "submission.json", 0o644)
    edit(dest / "submission.json", '"track": "10min_16mb",', "")
    v = judge(dest, rules)
    assert finding(v, "files.track_unknown").status == "warn" and v.track == "track_10min_16mb"


# --- submission.json --------------------------------------------------------------------

@pytest.mark.parametrize("content, code", [
    (b"{\"val_bpb\": 1.08,\n  \"seeds\": [42,]\n}", "json.malformed"),
    (b"", "json.empty"),
    (b"[1, 2]", "json.not_object"),
    (b"{\"name\": \"caf\xe9\"}", "json.not_utf8"),
    (b"{\"val_bpb\": 1.0, \"val_bpb\": 2.0}", "json.malformed"),
    (b"{\"pad\": \"" + b"x" * (1024 * 1024 + 1) + b"\"}", "json.too_large"),
])
def test_bad_json_is_a_finding(record, rules, content, code):
    folder = record(SP8192)
    (folder / "submission.json").write_bytes(content)
    f = finding(judge(folder, rules), code)
    assert f.status == "fail" and f.check == "json"


def test_malformed_json_names_line_and_column(record, rules):
    folder = record(SP8192)
    (folder / "submission.json").write_bytes(b"{\n  \"val_bpb\": 1.08,\n  \"seeds\": [42,]\n}")
    f = finding(judge(folder, rules), "json.malformed")
    assert "line 3" in f.message and f.evidence[0].line == 3


def test_schema_error_names_the_json_path(record, rules):
    folder = record(SP8192)
    edit(folder / "submission.json", '"val_bpb": 1.08079', '"val_bpb": "1.08079"')
    messages = [f.message for f in judge(folder, rules).findings if f.code == "json.schema"]
    assert any("$.seed_results.42.val_bpb: expected number, got str" in m for m in messages), messages


def test_json_track_disagreeing_with_folder_warns(record, rules):
    folder = record(SP8192)
    edit(folder / "submission.json", '"track": "10min_16mb"', '"track": "non-record-16mb"')
    assert finding(judge(folder, rules), "json.track_mismatch").status == "warn"


def test_seeds_list_must_match_seed_results(record, rules):
    folder = record(SP8192)
    edit(folder / "submission.json", '"seeds": [42, 314, 999]', '"seeds": [42, 314, 1000]')
    f = finding(judge(folder, rules), "json.seeds_disagree")
    assert f.status == "fail" and "[42, 314, 1000]" in f.message


def test_json_date_differing_from_folder_is_noted(record, rules):
    folder = record(SP8192)
    edit(folder / "submission.json", '"date": "2026-04-09"', '"date": "2026-05-01"')
    assert finding(judge(folder, rules), "json.date_differs").status == "info"


# --- claims -----------------------------------------------------------------------------

def test_claim_differs_from_log(record, rules):
    folder = record(SP8192)
    edit(folder / "submission.json", '"val_bpb": 1.08103', '"val_bpb": 1.07103')
    f = finding(judge(folder, rules), "claims.mismatch")
    assert f.status == "fail" and f.seed == 314 and f.data == {"claimed": 1.07103, "logged": 1.08103103}


def test_claim_from_a_diagnostic_line_fails(record, rules):
    folder = record(SP8192)
    # seed 42's pre-quantization (not a score) line says 1.08734790
    edit(folder / "submission.json", '"val_bpb": 1.08079', '"val_bpb": 1.08735')
    assert "claims.not_post_quant" in codes(judge(folder, rules), "fail")


def test_headline_must_be_the_mean(record, rules):
    folder = record(SP8192)
    edit(folder / "submission.json", '"val_bpb": 1.08100,', '"val_bpb": 1.07900,')
    f = finding(judge(folder, rules), "claims.headline_not_mean")
    assert f.status == "fail" and f.data["mean"] == pytest.approx(1.08100288, abs=1e-8)


def test_missing_headline_fails(record, rules):
    folder = record(SP8192)
    edit(folder / "submission.json", '"val_bpb": 1.08100,', "")
    assert "claims.no_headline" in codes(judge(folder, rules), "fail")


def test_std_that_is_no_std_warns(record, rules):
    folder = record(SP8192)
    edit(folder / "submission.json", '"val_bpb_std": 0.00020', '"val_bpb_std": 0.00200')
    assert finding(judge(folder, rules), "claims.std_mismatch").status == "warn"


def test_duplicated_seed_in_json_fails(record, rules):
    folder = record(SP8192)
    edit(folder / "submission.json", '"seeds": [42, 314, 999]', '"seeds": [42, 314, 314]')
    assert "claims.duplicate_seed" in codes(judge(folder, rules), "fail")


def test_two_runs_logging_one_seed_fail(record, rules):
    folder = record(SP8192)
    edit(folder / "train_seed999.log", "  seed: 999", "  seed: 314")
    v = judge(folder, rules)
    assert {"claims.duplicate_seed", "claims.wrong_logged_seed", "files.missing_seed_log"} <= codes(v, "fail")


def test_wrong_logged_seed_fails(record, rules):
    folder = record(LEAKY)
    edit(folder / "train_seed2025.log", "seed:2025", "seed:7")
    f = finding(judge(folder, rules), "claims.wrong_logged_seed")
    assert f.status == "fail" and f.evidence[0].line == 17


def test_unreported_run_warns(record, rules):
    folder = record(SP8192)
    text = (folder / "train_seed999.log").read_text().replace("  seed: 999", "  seed: 7")
    (folder / "train_seed7.log").write_text(text)
    f = finding(judge(folder, rules), "claims.unreported_runs")
    assert f.status == "warn" and "seed 7" in f.message


def test_every_run_log_is_judged_for_size_and_time_and_a_copy_only_once(record, rules):
    folder = record(SP8192)
    text = (folder / "train_seed42.log").read_text().replace("  seed: 42", "  seed: 7")
    (folder / "train_seed7.log").write_text(text.replace("quantized+brotli: 15975300", "quantized+brotli: 16075300"))
    (folder / "train.log").write_bytes((folder / "train_seed314.log").read_bytes())  # the same run, twice
    v = judge(folder, rules)
    over = finding(v, "size.over_limit")
    assert over.status == "fail" and over.seed == 7 and "unreported run of seed 7 (train_seed7.log)" in over.message
    assert sorted(f.seed for f in v.findings if f.code.startswith("size.within")) == [42, 314, 999]
    assert sorted(f.seed for f in v.findings if f.check == "train_time" and f.status == "warn") == [7, 42, 314, 999]


def _declare_rerun(folder, key: str, bpb: str = "1.08091234") -> None:
    text = (folder / "train_seed42.log").read_text()
    text = text.replace("train_time: 588047ms", "train_time: 580011ms").replace("val_bpb:1.08079352", f"val_bpb:{bpb}")
    (folder / "train_seed42_rerun.log").write_text(text)
    edit(folder / "submission.json", '"hardware":', f'"{key}": {{"seed_results": {{"42": {{"val_bpb": 1.08091234}}}}}}, '
                                                  '"hardware":')


def test_a_declared_rerun_is_its_seed_run_again_and_settles_the_calibration_time(record, rules):
    folder = record(SP8192)
    _declare_rerun(folder, "compliance_rerun")
    v = judge(folder, rules)
    assert "claims.duplicate_seed" not in codes(v)
    paired = finding(v, "claims.rerun_matches_log")
    assert paired.status == "pass" and paired.evidence[0].file == "train_seed42_rerun.log"
    settled = finding(v, "train_time.calibration_settled_by_rerun")
    assert settled.status == "info" and settled.seed == 42 and settled.data["rerun_calibration_end_ms"] < 600_000
    assert {f.seed for f in v.findings if f.code == "train_time.calibration_overrun"} == {314, 999}
    assert any(f.message.startswith("declared re-run of seed 42 (train_seed42_rerun.log)") for f in v.findings
               if f.code == "size.within_limit")


def test_a_block_that_names_no_rerun_declares_none(record, rules):
    folder = record(SP8192)
    _declare_rerun(folder, "compliance")  # the same seed_results, under a key that is not a re-run's
    v = judge(folder, rules)
    assert "claims.rerun_matches_log" not in codes(v) and finding(v, "claims.duplicate_seed").status == "fail"


def test_a_declared_rerun_whose_score_no_log_shows_fails(record, rules):
    folder = record(SP8192)
    _declare_rerun(folder, "rerun", bpb="1.08500000")
    f = finding(judge(folder, rules), "claims.rerun_mismatch")
    assert f.status == "fail" and f.evidence[0].text == "$.rerun.seed_results.42.val_bpb"


def test_a_lone_seedless_log_backs_the_headline(record, rules):
    folder = record(BASELINE)
    edit(folder / "submission.json", '"val_bpb": 1.2243657', '"val_bpb": 1.2300')
    edit(folder / "train.log", "seed:1337", "seed:none")  # neither the JSON nor the log names a seed
    f = finding(judge(folder, rules), "claims.headline_not_mean")
    assert f.status == "fail" and f.data["mean"] == pytest.approx(1.2243657, abs=1e-4)


def test_disclosed_best_of_n_warns(record, rules):
    folder = record(SP8192)
    edit(folder / "submission.json", '"seeds": [42, 314, 999],', '"seeds": [42, 314, 999], "runs_executed": 5,')
    assert finding(judge(folder, rules), "claims.best_of_n").status == "warn"


def test_one_seed_on_record_track_warns(record, rules):
    assert finding(judge(record(BASELINE), rules), "claims.few_seeds").status == "warn"


def test_headline_of_one_run_among_several_logs(record, rules):
    # early folders claim one run's score and keep other runs' logs beside it
    folder = record(LEAKY)
    edit(folder / "submission.json", '"val_bpb": 1.1194', '"val_bpb": 1.12002')
    v = judge(folder, rules)
    assert list(v.seeds) == [42] and finding(v, "claims.headline_is_mean").status == "pass"
    assert "seed 1337" in finding(v, "claims.unreported_runs").message


def test_seeds_and_scores_from_logs_are_noted(record, rules):
    v = judge(record(LEAKY), rules)
    assert {"claims.seeds_from_logs", "claims.score_from_log"} <= codes(v, "info")


# --- logs -------------------------------------------------------------------------------

def test_binary_log_is_unreadable_not_a_crash(record, rules):
    folder = record(SP8192)
    (folder / "train_seed314.log").write_bytes(b"\x00\x01\x02" * 1000)
    v = judge(folder, rules)
    assert "logs.unreadable" in codes(v, "fail")
    assert "binary" in finding(v, "files.missing_seed_log").message


def test_non_utf8_log_is_still_read(record, rules):
    folder = record(SP8192)
    path = folder / "train_seed314.log"
    path.write_bytes(path.read_bytes().replace(b"Hyperparameters:", b"\xff\xfeHyperparameters:"))
    v = judge(folder, rules)
    assert finding(v, "logs.problem").status == "warn"
    assert v.seeds[314]["val_bpb"] == pytest.approx(1.08103103)


def test_log_without_score_fails(record, rules):
    folder = record(SP8192)
    path = folder / "train_seed314.log"
    path.write_text("\n".join(l for l in path.read_text().splitlines() if not l.startswith("quantized")))
    f = finding(judge(folder, rules), "logs.no_score")
    assert f.status == "fail" and "train_seed314.log" in f.message


def test_log_without_seed_warns(record, rules):
    folder = record(LEAKY)
    edit(folder / "train_seed42.log", "seed:42\n", "")
    assert finding(judge(folder, rules), "logs.no_seed").status == "warn"


# --- size -------------------------------------------------------------------------------

def test_over_size_by_one_byte(record, rules):
    folder = record(BASELINE)
    script = folder / "train_gpt.py"
    script.write_bytes(script.read_bytes() + b"#" * 136_512)  # 15,863,489 + 136,512 = 16,000,001
    f = finding(judge(folder, rules), "size.over_limit")
    assert f.status == "fail" and "by 1" in f.message


def test_exactly_at_the_limit_passes(record, rules):
    folder = record(BASELINE)
    script = folder / "train_gpt.py"
    script.write_bytes(script.read_bytes() + b"#" * 136_511)
    assert finding(judge(folder, rules), "size.within_limit").data["artifact_bytes"] == 16_000_000


def test_helper_file_imported_by_the_script_counts(record, rules):
    folder = record(BASELINE)
    script = folder / "train_gpt.py"
    size = script.stat().st_size
    script.write_bytes(b"import ngram_helper\n" + b"#" * (size - 20))  # same length
    (folder / "ngram_helper.py").write_text("x = 1\n" * 30_000)  # 180,000 bytes
    v = judge(folder, rules)
    assert finding(v, "size.over_limit").data["code_files"]["ngram_helper.py"] == 180_000
    assert "size.code_mismatch" in codes(v, "warn")


def test_no_model_size_in_log_fails(record, rules):
    folder = record(BASELINE)
    path = folder / "train.log"
    path.write_text("\n".join(l for l in path.read_text().splitlines()
                              if not l.startswith(("Serialized model", "Total submission"))))
    assert "size.no_model_bytes" in codes(judge(folder, rules), "fail")


def test_json_byte_claims_are_ignored_but_noted(record, rules):
    folder = record(SP8192)
    edit(folder / "submission.json", '"artifact_bytes": 15991930', '"artifact_bytes": 15000000')
    v = judge(folder, rules)
    assert finding(v, "size.json_claim_ignored").status == "info"
    assert v.seeds[42]["model_bytes"] == 15_975_300


def test_compressed_code_is_counted_as_the_regenerated_wrapper(record, rules):
    folder = record(PHASED)
    body = "import math\n\ndef area(r):\n    \"\"\"doc\"\"\"\n    return math.pi * r * r\n" * 2000
    (folder / "train_gpt.py").write_text(body)
    f = [f for f in judge(folder, rules).findings if f.code == "size.within_limit"][0]
    assert f.data["code_method"] == "regenerated wrapper"
    assert f.data["code_bytes"] < len(body) // 20


def test_unminifiable_script_warns_and_counts_as_shipped(record, rules):
    folder = record(PHASED)
    (folder / "train_gpt.py").write_text("def broken(:\n")
    assert finding(judge(folder, rules), "size.wrapper_failed").status == "warn"


# --- time and hardware ------------------------------------------------------------------

def test_over_train_time_fails(record, rules):
    folder = record(BASELINE)
    edit(folder / "train.log", "stopping_early: wallclock_cap train_time:600038ms",
         "stopping_early: wallclock_cap train_time:600151ms")
    f = finding(judge(folder, rules), "train_time.over_limit")
    assert f.status == "fail" and f.evidence[0].line == 440


def test_train_time_within_tolerance_passes(record, rules):
    folder = record(BASELINE)
    edit(folder / "train.log", "train_time:600038ms step:13780", "train_time:600150ms step:13780")
    assert "train_time.over_limit" not in codes(judge(folder, rules))


def test_train_time_falls_back_to_step_lines(record, rules):
    folder = record(BASELINE)
    path = folder / "train.log"
    path.write_text("\n".join(l for l in path.read_text().splitlines() if not l.startswith("stopping_early")))
    f = finding(judge(folder, rules), "train_time.within_limit")
    assert f.data == {"train_time_ms": 600038.0, "steps": 13780, "exact": False}


def test_missing_train_time_fails_on_record_track(record, rules):
    folder = record(BASELINE)
    path = folder / "train.log"
    path.write_text("\n".join(l for l in path.read_text().splitlines() if "train_time" not in l))
    assert "train_time.not_found" in codes(judge(folder, rules), "fail")


def test_over_eval_time_fails(record, rules):
    folder = record(PHASED)
    edit(folder / "train_seed0.log", "total_eval_time:332.1s", "total_eval_time:601.0s")
    f = finding(judge(folder, rules), "eval_time.over_limit")
    assert f.status == "fail" and f.seed == 0


def test_end_to_end_eval_over_budget_warns(record, rules):
    folder = record(LEAKY)
    edit(folder / "train_seed42.log", "eval_time:97749ms", "eval_time:197749ms")
    assert finding(judge(folder, rules), "eval_time.end_to_end_over").status == "warn"


def test_eval_time_not_found_warns(record, rules):
    folder = record(BASELINE)
    edit(folder / "train.log", " eval_time:1401ms", "")
    assert finding(judge(folder, rules), "eval_time.not_found").status == "warn"


def test_non_record_track_reports_times_without_limits(record, rules):
    folder = record(DGATTN)
    v = judge(folder, rules)
    assert finding(v, "train_time.unlimited").status == "info"
    assert "scoring took" in finding(judge(record(SP8192), rules, track_name="track_non_record_16mb"),
                                     "eval_time.unlimited").message
    edit(folder / "train.log", "stopping_early: wallclock_cap train_time:600055ms",
         "stopping_early: wallclock_cap train_time:14400000ms")
    assert finding(judge(folder, rules), "train_time.unlimited_undisclosed").status == "warn"


def test_an_unreported_long_run_must_be_disclosed_too(record, rules):
    folder = record(SP8192)
    text = (folder / "train_seed42.log").read_text().replace("  seed: 42", "  seed: 7")
    (folder / "train_seed7.log").write_text(text.replace("train_time: 588047ms", "train_time: 14400000ms"))
    v = judge(folder, rules, track_name="track_non_record_16mb")
    f = finding(v, "train_time.unlimited_undisclosed")
    assert f.status == "warn" and f.message.startswith("unreported run of seed 7 (train_seed7.log) trained past")


def test_artifact_wallclock_is_reported(record, rules):
    folder = record(SP8192)
    edit(folder / "train_seed42.log", "GPTQ:collected 67 Hessians in 12.7s",
         "GPTQ:collected 67 Hessians in 12.7s\nartifact_production_wallclock: 844.584s (must be < 600.0)")
    assert finding(judge(folder, rules), "train_time.artifact_wallclock").status == "info"


def test_wrong_world_size_fails(record, rules):
    folder = record(BASELINE)
    edit(folder / "train.log", "world_size:8 grad_accum_steps:1", "world_size:1 grad_accum_steps:8")
    assert {"hardware.world_size", "hardware.grad_accum"} <= codes(judge(folder, rules), "fail")


def test_missing_world_size_warns(record, rules):
    folder = record(BASELINE)
    edit(folder / "train.log", "world_size:8 grad_accum_steps:1\n", "")
    assert finding(judge(folder, rules), "hardware.no_world_size").status == "warn"


def _smi_rows(name: str, n: int) -> str:
    return "".join(f"|   {i}  {name}          On  |   00000000:18:00.0 Off |                    0 |\n"
                   for i in range(n))


def test_pcie_gpus_fail(record, rules):
    folder = record(BASELINE)
    edit(folder / "train.log", "world_size:8", _smi_rows("NVIDIA H100 PCIe", 8) + "world_size:8")
    f = finding(judge(folder, rules), "hardware.gpu_model")
    assert f.status == "fail" and "H100 PCIe" in f.message


def test_gpu_count_must_match(record, rules):
    folder = record(BASELINE)
    edit(folder / "train.log", "world_size:8", _smi_rows("NVIDIA H100 80GB HBM3", 4) + "world_size:8")
    assert "hardware.gpu_count" in codes(judge(folder, rules), "fail")
    folder = record(BASELINE, "2026-03-17_Eight")
    edit(folder / "train.log", "world_size:8", _smi_rows("NVIDIA H100 80GB HBM3", 8) + "world_size:8")
    assert "8× NVIDIA H100 80GB HBM3" in finding(judge(folder, rules), "hardware.matches_track").message
    plain = judge(record(BASELINE, "2026-03-17_Plain"), rules)  # a missing fact is INFO beside the PASS, not in it
    assert finding(plain, "hardware.matches_track").status == "pass"
    missing = finding(plain, "hardware.no_gpu_model")
    assert missing.status == "info" and "cannot find the GPU model in train.log" in missing.message


# --- significance -----------------------------------------------------------------------

def test_significance_against_a_record_folder(record, rules):
    v = judge(record(PHASED), rules, against=str(record(SP8192)))
    board = finding(v, "significance.leaderboard")
    assert board.status == "pass"
    # scipy's one-sided Welch test on the two sets of logged per-seed scores
    assert board.data["p_value"] == pytest.approx(0.000704, rel=1e-2)
    assert board.data["delta_bpb"] == pytest.approx(1.08100288 - 1.07192712, abs=1e-8)
    assert finding(v, "significance.readme").status == "info"


def test_not_significant_fails_on_record_track(record, rules):
    v = judge(record(SP8192), rules, against="1.0810,1.0811,1.0809")
    assert finding(v, "significance.leaderboard").status == "fail"


def test_significance_needs_two_seeds(record, rules):
    v = judge(record(BASELINE), rules, against="1.3,1.31")
    assert finding(v, "significance.too_few_seeds").status == "warn"


def test_no_frontier_is_not_assessed(record, rules):
    assert finding(judge(record(SP8192), rules), "significance.not_assessed").status == "info"


# --- unusable input ---------------------------------------------------------------------

def test_unusable_inputs_raise_usage_errors(record, rules, tmp_path):
    with pytest.raises(UsageError, match="no such folder"):
        check_folder(tmp_path / "nope", rules)
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(UsageError, match="not a folder"):
        check_folder(tmp_path / "file.txt", rules)
    with pytest.raises(UsageError, match="unknown track"):
        check_folder(record(SP8192), rules, track_name="track_5min")
    with pytest.raises(UsageError, match="neither a folder nor"):
        check_folder(record(SP8192, "2026-04-09_B"), rules, against="fast,faster")


def test_verdict_is_json_serialisable(record, rules):
    v = judge(record(PHASED), rules)
    json.dumps(v.to_dict())
