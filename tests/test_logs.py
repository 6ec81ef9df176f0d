"""Log parsing across the format generations of rules.md §4, on synthetic logs written here."""
from __future__ import annotations

from pathlib import Path

import pytest

from harness import logs
from harness.logs import read_log, tokenizer_of

SEP = "=" * 100


def parse(tmp_path: Path, text: str, rules, name: str = "train_seed1.log"):
    path = tmp_path / name
    path.write_text(text)
    return read_log(path, tmp_path, rules)


def test_root_format_with_source_code_echoed(tmp_path, rules):
    log = parse(tmp_path, "\n".join([
        "import os",
        "def report(q_val_loss, q_val_bpb):",
        '    log0(f"final_int8_zlib_roundtrip_exact val_loss:{q_val_loss:.8f} val_bpb:{q_val_bpb:.8f}")',
        'final_int8_zlib_roundtrip_exact val_loss:9.99999999 val_bpb:9.99999999',  # a line inside the source
        SEP, "Running PyTorch 2.9.1+cu128", SEP,
        "world_size:8 grad_accum_steps:1", "seed:1",
        "step:100/200 val_loss:2.5 val_bpb:1.5 train_time:1000ms step_avg:10.00ms",
        "stopping_early: wallclock_cap train_time:600038ms step:13780/20000",
        "final_int8_zlib_roundtrip val_loss:2.0727 val_bpb:1.2244 eval_time:1401ms",
        "final_int8_zlib_roundtrip_exact val_loss:2.07269931 val_bpb:1.22436570",
    ]), rules)
    assert [(m.label, m.val_bpb, m.line) for m in log.scores] == [
        ("final_int8_zlib_roundtrip", 1.2244, 12), ("final_int8_zlib_roundtrip_exact", 1.2243657, 13)]
    assert len(log.metrics) == 2  # the step line is training progress, never a metric
    assert log.get("pytorch").value == "2.9.1+cu128" and log.seed == 1
    assert (log.train_stop.value, log.steps, log.train_stop_exact) == (600038, 13780, True)


def test_hyperparameter_dump_format_with_source_section(tmp_path, rules):
    log = parse(tmp_path, "\n".join([
        SEP, "Hyperparameters:", "  seed: 42", "  world_size: 8", "  grad_accum_steps: 1", "  vocab_size: 8192",
        SEP, "Source code:", SEP,
        '    log(f"quantized_ttt val_loss:{a:.8f} val_bpb:{b:.8f}")',
        "quantized_ttt val_loss:0.00000001 val_bpb:0.00000001",
        SEP,
        "500/20000 train_loss: 2.5656 train_time: 0.8m tok/s: 8346897",
        "4000/20000 val_loss: 2.4329 val_bpb: 1.1117",
        "pre-quantization post-ema val_loss:2.80873254 val_bpb:1.08734790 eval_time:7440ms",
        "quantized_ttt val_loss:2.79180191 val_bpb:1.08079352 eval_time:366525ms",
    ]), rules)
    assert [(m.label, m.val_bpb) for m in log.scores] == [("quantized_ttt", 1.08079352)]
    assert [m.stage for m in log.metrics] == [None, "ttt"]  # "4000/20000 val_loss" is not even a metric label
    assert (log.seed, log.get("world_size").value, log.get("vocab_size").value) == (42, 8, 8192)
    # no stopping_early line: the last step line, in minutes
    assert log.train_stop.value == pytest.approx(48_000) and not log.train_stop_exact


def test_timestamp_prefix_and_equals_sign_forms(tmp_path, rules):
    log = parse(tmp_path, "\n".join([
        "1776144156.999 seed:3",
        "1776144157.123 ttt_sliding:done val_loss=1.891102 val_bpb=1.120020 elapsed=407.5s",
        "1776144157.200 ttp: b234/782 bl:2.1 bb:1.1 rl:2.0 rb:1.0 dl:3 gd:1",
        "1776144158.000 quantized_ttt_phased val_loss:2.77115720 val_bpb:1.07280131 eval_time:329031ms",
        "1776144158.001 total_eval_time:329.0s",
    ]), rules)
    assert [(m.label, m.stage, m.eval_time_s) for m in log.scores] == [
        ("ttt_sliding:done", "legal_ttt", 407.5), ("quantized_ttt_phased", "ttt_phased", 329.031)]
    assert log.seed == 3 and log.get("total_eval_time_s").value == 329.0


def test_sizes_take_the_last_total_and_code_sizes(tmp_path, rules):
    log = parse(tmp_path, "\n".join([
        "Serialized model: 67224983 bytes", "Code size: 47642 bytes", "Total submission size: 67272625 bytes",
        "Serialized model int8+zlib: 15815847 bytes (payload:1 raw_torch:2 payload_ratio:3.91x)",
        "Total submission size int8+zlib: 15863489 bytes",
        "Code size (uncompressed): 122168 bytes", "Code size (compressed): 27610 bytes",
        "gptq:reserving 4s, effective=596000ms", "GPTQ:collected 67 Hessians in 3.4s",
    ]), rules)
    values = {k: v.value for k, v in log.facts.items()}
    assert values["model_bytes"] == 15815847 and values["total_bytes"] == 15863489
    assert values["code_bytes_compressed"] == 27610 and values["code_bytes_uncompressed"] == 122168
    assert values["hessian_s"] == 3.4 and values["gptq_reserve_s"] == 4


def test_several_runs_in_one_log_judge_the_last(tmp_path, rules):
    log = parse(tmp_path, "\n".join([
        "val_bpb:enabled tokenizer_kind=sentencepiece", "seed:1",
        "final_sliding_window_exact val_loss:2.0 val_bpb:1.20000000",
        "val_bpb:enabled tokenizer_kind=sentencepiece", "seed:1",
        "final_sliding_window_exact val_loss:1.9 val_bpb:1.10000000",
    ]), rules)
    assert log.runs == 2 and [m.val_bpb for m in log.scores] == [1.1]
    assert "2 runs" in log.problems[0]


@pytest.mark.parametrize("content, problem", [
    (b"", "empty"), (b"  \n\n", "empty"), (b"abc\x00def", "binary"),
])
def test_unusable_files_are_problems_not_exceptions(tmp_path, rules, content, problem):
    path = tmp_path / "train.log"
    path.write_bytes(content)
    log = read_log(path, tmp_path, rules)
    assert log.unreadable and problem in log.problems[0]


def test_tokenizer_is_read_from_path_vocab_or_token_count(tmp_path, rules):
    by_path = parse(tmp_path, "val_bpb:enabled tokenizer_kind=sentencepiece tokenizer_path=/d/fineweb_1024_bpe.model",
                    rules, "a.log")
    by_vocab = parse(tmp_path, "Hyperparameters:\n  vocab_size: 4096", rules, "b.log")
    by_count = parse(tmp_path, "val_tokens: 40540160", rules, "c.log")
    caseops = parse(tmp_path, "Hyperparameters:\n  caseops_enabled: True\n  vocab_size: 8192", rules, "d.log")
    assert [tokenizer_of([l], rules)[0] for l in (by_path, by_vocab, by_count, caseops)] == [
        "sp1024", "sp4096", "sp8192", "caseops_sp8192"]
    assert tokenizer_of([parse(tmp_path, "nothing", rules, "e.log")], rules)[0] is None


def test_what_pgolf_writes_it_reads_back(tmp_path, rules):
    """The lines `pgolf export` writes come from logs.py and read back as the values they were written with;
    quoted output is never evidence, except a quoted train phase's loss curve."""
    values = {"seed": 7, "world_size": 2, "model_bytes": 12345, "code_bytes_plain": 678, "total_bytes": 13023}
    own = "\n".join(["step:1/2 train_loss:3.5000 train_time:10ms", "step:2/2 train_loss:3.2500 train_time:20ms",
                     "final_int8_zlib_roundtrip_exact val_loss:9.00000000 val_bpb:9.00000000", "seed: 99"])
    path = tmp_path / "train_seed7.log"
    path.write_text("\n".join([*(logs.fact_line(name, value) for name, value in values.items()),
                               logs.train_stop_line(1500, 2),
                               logs.metric_line("final_pgolf_roundtrip_exact", 2.5, 1.25, 3000),
                               logs.SEPARATOR, *logs.quoted("train", own),
                               *logs.quoted("eval", "step:3/3 train_loss:1.0000 train_time:5ms")]) + "\n")
    log = read_log(path, tmp_path, rules)
    assert {name: log.get(name).value for name in values} == values
    assert (log.train_stop.value, log.train_stop_exact, log.steps) == (1500, True, 2)
    [score] = log.metrics
    assert (score.label, score.val_loss, score.val_bpb, score.decimals, score.eval_time_s) == \
        ("final_pgolf_roundtrip_exact", 2.5, 1.25, 8, 3.0)
    assert logs.loss_curve(path) == [(1, 3.5), (2, 3.25)]
