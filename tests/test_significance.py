"""The Welch test and the policy arithmetic, against scipy.stats and the leaderboard's own numbers."""
from __future__ import annotations

import math

import pytest
from scipy import stats

from harness.check.significance import compare, parse_bpb_list

MLPCLIP12 = [1.06356801, 1.0641313, 1.06466993, 1.06509678, 1.06516558]  # PR #1769, 5 reported seeds
PR1736 = [1.0661, 1.06473, 1.06563]
A2 = [1.07928348, 1.07996676, 1.08024795]  # PR #1514
PR1493 = [1.08079, 1.08103, 1.08118]


@pytest.mark.parametrize("new, old, published", [(MLPCLIP12, PR1736, 0.063), (A2, PR1493, 0.020)])
def test_matches_the_leaderboard_recomputations(new, old, published):
    assert round(compare(new, old, 3.727).p_value, 3) == published


@pytest.mark.parametrize("new, old", [
    (MLPCLIP12, PR1736), (A2, PR1493), (PR1493, A2), ([1.2, 1.25, 1.3], [1.21, 1.22]), ([1.0, 1.0001], [1.1, 1.3, 1.2])])
def test_agrees_with_scipy_stats(new, old):
    ours = compare(new, old, 2.436)
    ref = stats.ttest_ind(new, old, equal_var=False, alternative="less")
    assert ours.p_value == pytest.approx(ref.pvalue, rel=1e-9)
    assert ours.t_stat == pytest.approx(ref.statistic, rel=1e-9)


def test_nats_and_threshold_units():
    c = compare([1.0700, 1.0702], [1.0800, 1.0802], bytes_per_token=3.727)
    assert c.delta_bpb == pytest.approx(0.01)
    assert c.delta_nats == pytest.approx(0.01 * math.log(2) * 3.727)
    assert c.threshold_bpb == pytest.approx(0.0019355, abs=1e-6)  # 0.005 nats in BPB for sp8192


def test_zero_spread_is_decided_by_the_sign():
    assert compare([1.0, 1.0], [1.1, 1.1], 1.0).p_value == 0.0
    assert compare([1.1, 1.1], [1.0, 1.0], 1.0).p_value == 1.0


def test_parse_bpb_list():
    assert parse_bpb_list("1.08, 1.07,1.09") == [1.08, 1.07, 1.09]
    assert parse_bpb_list("records/x") is None and parse_bpb_list("1.0,-2") is None and parse_bpb_list("") is None
