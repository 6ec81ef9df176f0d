"""The event channel and the score ledger, with real Unix sockets and the real client."""
from __future__ import annotations

import io
import socket
import struct
import threading

import numpy as np
import pytest

from harness.client.pgolf_events import Events, audit_positions
from harness.run.events import EventServer
from harness.run.ledger import KEPT_FOR_PROBES, Ledger

N = 2001  # stream positions; targets are 1 … 2000
TOKENS = np.random.default_rng(0).integers(0, 50, size=N).astype(np.uint16)
TOKENS[0] = 1
VOCAB = 50


def distribution(position: int, normalised: bool = True) -> np.ndarray:
    logits = np.random.default_rng(position).normal(size=VOCAB)
    logprobs = logits - np.log(np.exp(logits).sum())
    return (logprobs if normalised else logits).astype(np.float32)


def nll_at(position: int) -> float:
    return float(-distribution(position)[TOKENS[position]])


def serve(tmp_path, ranks):
    """Run `ranks` (functions of an Events client) concurrently against a fresh server."""
    ledger = Ledger(TOKENS, [])
    log = io.StringIO()
    with EventServer(tmp_path / "events.sock", log, ledger) as server:
        threads = [threading.Thread(target=_rank, args=(tmp_path / "events.sock", r, len(ranks), fn))
                   for r, fn in enumerate(ranks)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    return server.received, {f.code: f for f in ledger.findings()}, log.getvalue()


def _rank(path, rank, world, fn):
    events = Events(str(path), rank, world)
    fn(events)
    events.close()


def score_range(events, lo, hi):
    """Score [lo, hi) and send the distribution at each position the harness asks for."""
    for p in events.scores(lo, [nll_at(p) for p in range(lo, hi)]):
        events.audit(p, distribution(p))


def test_score_first_two_ranks_pass(tmp_path):
    barrier = threading.Barrier(2)

    def rank(events):
        for chunk in range(4):  # 500-position chunks, split between the two ranks
            lo = 1 + chunk * 500
            mid = lo + 250
            mine = (lo, mid) if events.rank == 0 else (mid, min(lo + 500, N))
            score_range(events, *mine)
            barrier.wait()  # the collective before a TTT step
            if chunk < 3:  # the last chunk is never trained on
                events.update(lo, lo + 500)
            barrier.wait()
        events.mark("eval_end")

    received, found, log = serve(tmp_path, [rank, rank])
    assert {"ledger.single_pass", "ledger.score_before_update", "ledger.normalized"} == set(found)
    assert received.score_values == N - 1 and set(received.marks["eval_end"]) == {0, 1}
    assert '"type": "update"' in log and received.problems == []


def test_update_before_score_fails(tmp_path):
    def cheat(events):
        events.update(1, 501)  # adapt on the chunk first (pre-quant TTT)
        score_range(events, 1, N)

    found = serve(tmp_path, [cheat])[1]
    assert found["ledger.update_before_score"].status == "fail"
    assert "first: 1" in found["ledger.update_before_score"].message


def test_double_and_missing_positions_fail(tmp_path):
    def sloppy(events):
        score_range(events, 1, 1001)
        score_range(events, 900, 1500)  # overlap, and 1500 … 2000 never scored

    found = serve(tmp_path, [sloppy])[1]
    assert found["ledger.double_scored"].status == "fail" and "900" in found["ledger.double_scored"].message
    assert found["ledger.missing"].data == {"missing": 501}


def test_out_of_range_and_non_finite_fail(tmp_path):
    def wrong(events):
        events.scores(0, [1.0] * 5)  # position 0 is not a target
        events.scores(5, [float("nan")])

    found = serve(tmp_path, [wrong])[1]
    assert {"ledger.out_of_range", "ledger.not_finite", "ledger.missing"} <= set(found)


def test_unnormalised_and_mismatched_audits_fail(tmp_path):
    def audited(events):
        events.scores(1, [nll_at(p) for p in range(1, N)])  # sends none of the distributions asked for
        events.audit(10, distribution(10, normalised=False))
        good = distribution(20)
        good[TOKENS[20]] -= 0.5  # reported NLL no longer -log p(target)
        events.audit(20, good - np.log(np.exp(good.astype(np.float64)).sum()))

    found = serve(tmp_path, [audited])[1]
    assert found["ledger.unnormalized"].status == "fail" and "position 10" in found["ledger.unnormalized"].message
    assert found["ledger.audit_mismatch"].status == "fail" and "at 2 audited" in found["ledger.audit_mismatch"].message
    assert found["ledger.audit_missing"].status == "warn"


def test_overlapping_updates_warn(tmp_path):
    def rank(events):
        score_range(events, 1, N)
        events.update(1, 1001)
        events.update(500, 1500)

    assert serve(tmp_path, [rank])[1]["ledger.update_order"].status == "warn"


@pytest.mark.parametrize("world", [2, 8])
def test_cross_rank_order_is_judged_on_what_was_sent(tmp_path, world):
    """Ranks' scores are sent before the barrier; rank 0's update after it must see them all, even
    from a rank whose connection still waits in the listener's backlog."""
    bounds = np.linspace(1, N, world + 1).astype(int)
    for _ in range(20):  # a race would show within a few repetitions
        barrier = threading.Barrier(world)

        def rank(events):
            score_range(events, bounds[events.rank], bounds[events.rank + 1])
            barrier.wait()
            if events.rank == 0:
                events.update(1, N)

        found = serve(tmp_path, [rank] * world)[1]
        assert "ledger.update_before_score" not in found, found


def test_protocol_violations_are_recorded(tmp_path):
    import time

    ledger = Ledger(TOKENS, [])
    now = time.monotonic()
    with EventServer(tmp_path / "e.sock", io.StringIO(), ledger) as server:
        raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        raw.connect(str(tmp_path / "e.sock"))
        raw.sendall(b"J" + struct.pack("<Id", 15, now) + b'{"type":"mark"}')  # no hello, no name
        raw.sendall(b"S" + struct.pack("<Id", 16, now) + struct.pack("<qq", 1, 2))  # data before hello
        raw.sendall(b"J" + struct.pack("<Id", 15, now + 3600) + b"{\"type\":\"log\"}")  # sent in the future
        raw.sendall(b"X" + struct.pack("<Id", 3, now) + b"abc")
        raw.close()
    problems = " | ".join(server.received.problems)
    assert "missing required key 'name'" in problems and "before its hello" in problems
    assert "is not between its previous frame's" in problems and "malformed frame" in problems


def test_c3_is_judged_on_send_times_not_arrival(tmp_path):
    """A score sent before an update but read after it (another rank's connection) still counts;
    a score sent after the update is a violation even if it arrives first."""
    ledger = Ledger(TOKENS, [])
    ledger.update(1, 1001, rank=0, sent=10.0)
    ledger.score(1, np.ones(500, np.float32), rank=1, sent=9.0)      # arrives late, sent early
    ledger.score(501, np.ones(500, np.float32), rank=1, sent=11.0)   # sent after the update
    ledger.score(1001, np.ones(N - 1001, np.float32), rank=0, sent=12.0)
    found = {f.code: f for f in ledger.findings()}
    assert "first: 501" in found["ledger.update_before_score"].message
    again = {f.code: f for f in ledger.findings()}  # judging twice must not count twice
    assert again["ledger.update_before_score"].data["count"] == 1


def test_train_phase_must_not_score(tmp_path):
    with EventServer(tmp_path / "t.sock", io.StringIO(), ledger=None) as server:
        events = Events(str(tmp_path / "t.sock"), 0, 1)
        events.mark("train_start")
        events.scores(1, [0.5, 0.5])
        events.close()
    assert any("train phase" in p for p in server.received.problems)
    assert 0 in server.received.marks["train_start"]


def test_client_is_a_no_op_outside_the_harness(monkeypatch):
    monkeypatch.delenv("PGOLF_EVENTS", raising=False)
    events = Events.from_env()
    assert not events.active
    events.scores(1, [1.0]), events.update(1, 2), events.mark("eval_start"), events.close()


def test_audit_positions_are_shared_and_valid():
    chosen = audit_positions(7, N)
    assert chosen == audit_positions(7, N) and len(chosen) == 64 and chosen == sorted(set(chosen))
    assert 1 <= chosen[0] and chosen[-1] < N
    assert audit_positions(7, 10) == list(range(1, 10))


@pytest.mark.parametrize("bad", [b"\x00" * 10])
def test_short_score_frame_is_a_problem(tmp_path, bad):
    with EventServer(tmp_path / "s.sock", io.StringIO(), Ledger(TOKENS, [])) as server:
        events = Events(str(tmp_path / "s.sock"), 0, 1)
        events._frame(b"S", bad)
        events.close()
    assert "not a range + float32s" in server.received.problems[0]


def _direct(events):
    """Feed a ledger directly: (kind, rank, start, end) in send order; returns its finding codes."""
    ledger = Ledger(TOKENS, [])
    for t, (kind, rank, lo, hi) in enumerate(events):
        if kind == "score":
            ledger.score(lo, np.array([nll_at(p) for p in range(lo, hi)], np.float32), rank, float(t))
        else:
            ledger.update(lo, hi, rank, float(t))
    return {f.code: f.status for f in ledger.findings()}


def test_fitting_on_each_window_before_scoring_it_is_slot():
    windows = [(lo, lo + 100) for lo in range(1, N, 100)]
    found = _direct([step for lo, hi in windows for step in (("update", 0, lo, hi), ("score", 0, lo, hi))])
    assert found["ledger.fit_on_scored_window"] == "fail" and "ledger.update_before_score" not in found


def test_sliding_window_slot_fitting_on_its_context_is_slot():
    """Each window fits on its whole context (mostly scored already), then scores its new tail."""
    tails = [(lo, lo + 100) for lo in range(1, N, 100)]
    found = _direct([step for lo, hi in tails for step in (("update", 0, max(1, lo - 300), hi), ("score", 0, lo, hi))])
    assert found["ledger.fit_on_scored_window"] == "fail" and "ledger.update_before_score" not in found


def test_training_on_a_chunk_scored_by_both_ranks_is_update_before_score():
    """Pre-quantization-TTT style: one rank trains on a whole chunk that both ranks then score."""
    found = _direct([("update", 0, 1, 1001), ("score", 0, 1, 501), ("score", 1, 501, 1001),
                     ("score", 0, 1001, N)])
    assert found["ledger.update_before_score"] == "fail" and "ledger.fit_on_scored_window" not in found


def test_an_update_partly_scored_is_not_slot():
    found = _direct([("score", 0, 1, 51), ("update", 0, 1, 101), ("score", 0, 51, N)])
    assert found["ledger.update_before_score"] == "fail" and "ledger.fit_on_scored_window" not in found


def test_protocol_2_audits_are_chosen_after_the_scores_and_differ_per_run(tmp_path):
    """The harness answers each scores frame with positions of that frame: about 64 over the stream, drawn
    from its own secret generator, so two runs of the same stream are asked for different positions."""
    asked = []

    def rank(events):
        for lo in range(1, N, 100):
            got = events.scores(lo, [nll_at(p) for p in range(lo, min(lo + 100, N))])
            assert all(lo <= p < lo + 100 for p in got)
            asked.append(got)
            for p in got:
                events.audit(p, distribution(p))

    runs = []
    for _ in range(2):
        asked.clear()
        found = serve(tmp_path, [rank])[1]
        runs.append({p for got in asked for p in got})
        assert "ledger.audit_missing" not in found and "ledger.audits_foreseeable" not in found
        assert f"{len(runs[-1])} audited distributions" in found["ledger.normalized"].message
    assert 30 <= len(runs[0]) <= 110 and runs[0] != runs[1]


def test_the_evaluation_keeps_its_first_asked_rows_for_probes_and_no_row_it_did_not_ask_for():
    ledger = Ledger(TOKENS, [9], keep_rows=True)  # 9: foreseen by a protocol-1 client
    asked = ledger.ask_audits(1, N)
    for p in range(1, N):
        ledger.score(p, np.array([nll_at(p)], np.float32), 0, 0.0)
    for p in sorted({*asked, 9, 1, 500, 1999}):  # 1, 500, 1999: sent without being asked (unless drawn)
        ledger.audit(p, distribution(p), 0)
    assert set(ledger.rows) == ({*asked, 9} & set(range(1, N)))  # memory bounded by what the harness asked
    basis = ledger.probes_basis()
    kept = sorted(p for p in ledger.rows if p >= 2)[:KEPT_FOR_PROBES]
    assert basis["positions"].tolist() == kept and basis["nll"].size == kept[-1] + 1
    assert basis["nll"][kept[0]] == pytest.approx(nll_at(kept[0])) and (basis[f"row_{kept[0]}"] == distribution(kept[0])).all()
    assert set(kept) <= set(basis["audited"].tolist()) and max(basis["audited"]) <= kept[-1]
    assert Ledger(TOKENS, [9]).probes_basis()["positions"].size == 0  # a probe run keeps nothing


def test_a_protocol_1_client_audits_what_it_foresaw_and_the_verdict_says_so(tmp_path):
    class Old(Events):
        protocol = 1

    foreseen = audit_positions(5, N)
    ledger = Ledger(TOKENS, foreseen)
    with EventServer(tmp_path / "o.sock", io.StringIO(), ledger) as server:
        events = Old(str(tmp_path / "o.sock"), 0, 1)
        assert events.scores(1, [nll_at(p) for p in range(1, N)]) == []  # no answer is read, none is sent
        for p in foreseen:
            events.audit(p, distribution(p))
        events.close()
    found = {f.code: f.status for f in ledger.findings()}
    assert server.received.problems == [] and found["ledger.audits_foreseeable"] == "info"
    assert found["ledger.normalized"] == "pass" and "ledger.audit_missing" not in found
