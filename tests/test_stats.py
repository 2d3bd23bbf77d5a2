"""Seed statistics on hand-made scores: the mean, sample std and t interval worked out by hand, the
paired t-test checked against the closed-form t distribution with 2 degrees of freedom and against
scipy's ttest_rel, the verdict strings, and the refusals (mismatched lengths, None, NaN)."""

from __future__ import annotations

import math

import pytest
from scipy import stats as scipy_stats

from ernie_cl.evaluation.stats import all_pairs, format_p, paired_comparison, summarize_scores

T_975_DF2 = 4.302653  # Student t 0.975 quantile, 2 degrees of freedom (tables)


def p_two_sided_df2(t: float) -> float:
    """Closed form for 2 degrees of freedom: CDF(t) = 1/2 + t / (2 sqrt(2 + t^2))."""
    return 1.0 - abs(t) / math.sqrt(2.0 + t * t)


def test_summary_of_one_two_three_is_mean_2_std_1_and_the_t_interval():
    s = summarize_scores([1, 2, 3])
    assert s["n"] == 3 and s["mean"] == 2.0 and s["std"] == pytest.approx(1.0)
    half = T_975_DF2 * 1.0 / math.sqrt(3)  # 2.484138
    assert s["ci95"] == pytest.approx([2 - half, 2 + half], abs=1e-6)
    assert s["ci95"][0] == pytest.approx(-0.484138, abs=1e-6)
    assert s["values"] == [1.0, 2.0, 3.0]


def test_summary_of_one_seed_has_no_std_and_no_interval():
    assert summarize_scores([0.61]) == {"n": 1, "mean": 0.61, "std": None, "ci95": None, "values": [0.61]}


def test_summary_of_two_values_uses_sample_std_and_the_df1_quantile():
    s = summarize_scores([0.60, 0.62])
    assert s["std"] == pytest.approx(0.02 / math.sqrt(2))  # ddof=1
    half = 12.706205 * s["std"] / math.sqrt(2)  # t_{0.975, 1} = 12.706205
    assert s["ci95"] == pytest.approx([0.61 - half, 0.61 + half], abs=1e-6)


def test_summary_refuses_empty_none_and_nan_naming_the_position():
    with pytest.raises(ValueError, match="at least one"):
        summarize_scores([])
    with pytest.raises(ValueError, match=r"values\[1\] is None"):
        summarize_scores([0.5, None, 0.6])
    with pytest.raises(ValueError, match=r"values\[2\] is nan"):
        summarize_scores([0.5, 0.6, float("nan")])


def test_paired_comparison_with_consistent_gains_is_shown_with_t_28():
    a, b = [0.80, 0.82, 0.84], [0.70, 0.73, 0.75]
    r = paired_comparison(a, b, names=("sequential", "joint"))
    # d = [0.10, 0.09, 0.09]: mean 0.28/3, deviations (2, -1, -1)/300, so std = sqrt(6/2)/300
    mean, std = 0.28 / 3, math.sqrt(3.0) / 300
    assert r["n"] == 3 and r["wins"] == 3
    assert r["mean_diff"] == pytest.approx(mean) and r["std_diff"] == pytest.approx(std)
    assert r["t"] == pytest.approx(28.0)  # mean / (std / sqrt 3) = (0.28/3) / (1/300)
    assert r["p"] == pytest.approx(p_two_sided_df2(28.0), rel=1e-9)
    assert r["p"] == pytest.approx(0.0012735, abs=1e-6)
    assert r["p"] == pytest.approx(scipy_stats.ttest_rel(a, b).pvalue, rel=1e-9)
    half = T_975_DF2 * std / math.sqrt(3)
    assert r["ci95"] == pytest.approx([mean - half, mean + half], abs=1e-6)
    assert r["verdict"] == "sequential > joint: shown (p=0.0013, 3 seeds)"


def test_paired_comparison_the_other_way_round_is_shown_below():
    r = paired_comparison([0.70, 0.73, 0.75], [0.80, 0.82, 0.84], names=("joint", "sequential"))
    assert r["t"] == pytest.approx(-28.0) and r["wins"] == 0
    assert r["ci95"][1] < 0
    assert r["verdict"] == "joint < sequential: shown (p=0.0013, 3 seeds)"


def test_mixed_sign_differences_are_not_shown():
    a, b = [0.70, 0.75, 0.72], [0.72, 0.71, 0.73]
    r = paired_comparison(a, b, names=("x", "y"))
    # d = [-0.02, 0.04, -0.01]: mean 0.01/3, sum of squared deviations (49 + 121 + 16)/90000 = 186/90000
    mean, std = 0.01 / 3, math.sqrt(186 / 90000 / 2)
    t = mean / (std / math.sqrt(3))
    assert r["mean_diff"] == pytest.approx(mean) and r["std_diff"] == pytest.approx(std)
    assert r["t"] == pytest.approx(t) and t == pytest.approx(0.17961, abs=1e-5)
    assert r["p"] == pytest.approx(p_two_sided_df2(t), rel=1e-9)
    assert r["p"] == pytest.approx(scipy_stats.ttest_rel(a, b).pvalue, rel=1e-9)
    assert r["ci95"][0] < 0 < r["ci95"][1] and r["wins"] == 1
    assert r["verdict"] == "x vs y: not shown at this scale (p=0.87, 3 seeds)"


def test_identical_lists_have_no_p_and_are_not_shown():
    r = paired_comparison([0.6, 0.7, 0.8], [0.6, 0.7, 0.8])
    assert (r["mean_diff"], r["std_diff"], r["ci95"]) == (0.0, 0.0, [0.0, 0.0])
    assert (r["t"], r["p"], r["wins"]) == (None, None, 0)
    assert r["verdict"] == "a vs b: not shown at this scale (identical on all 3 seeds)"


def test_the_same_nonzero_difference_on_every_seed_is_shown_with_p_zero():
    # dyadic numbers, so every difference is exactly 0.25
    r = paired_comparison([0.5, 0.75, 0.625], [0.25, 0.5, 0.375], names=("m", "n"))
    assert r["std_diff"] == 0.0 and r["p"] == 0.0 and r["t"] == math.inf
    assert r["ci95"] == [0.25, 0.25]
    assert r["verdict"] == "m > n: shown (p<0.001, 3 seeds)"


def test_one_seed_is_not_testable():
    r = paired_comparison([0.8], [0.7], names=("sequential", "random init"))
    assert r["n"] == 1 and r["mean_diff"] == pytest.approx(0.1) and r["wins"] == 1
    assert (r["std_diff"], r["ci95"], r["t"], r["p"]) == (None, None, None, None)
    assert r["verdict"] == "sequential vs random init: not testable with one seed"


def test_paired_comparison_refuses_mismatched_empty_and_missing_scores():
    with pytest.raises(ValueError, match="a has 3 scores and b has 2"):
        paired_comparison([0.1, 0.2, 0.3], [0.1, 0.2])
    with pytest.raises(ValueError, match="no scores"):
        paired_comparison([], [])
    with pytest.raises(ValueError, match=r"joint\[0\] is None"):
        paired_comparison([0.1, 0.2], [None, 0.2], names=("seq", "joint"))
    with pytest.raises(ValueError, match=r"seq\[1\] is nan"):
        paired_comparison([0.1, float("nan")], [0.1, 0.2], names=("seq", "joint"))


def test_alpha_moves_the_threshold_of_the_verdict():
    a, b = [0.70, 0.75, 0.72], [0.72, 0.71, 0.73]  # p = 0.87
    assert "shown (p=0.87" in paired_comparison(a, b, alpha=0.9)["verdict"]
    assert "not shown" in paired_comparison(a, b, alpha=0.5)["verdict"]


def test_all_pairs_covers_every_unordered_pair_in_insertion_order():
    scores = {"s": [0.80, 0.82, 0.84], "j": [0.70, 0.73, 0.75], "r": [0.70, 0.75, 0.72]}
    pairs = all_pairs(scores)
    assert [(p["a"], p["b"]) for p in pairs] == [("s", "j"), ("s", "r"), ("j", "r")]
    assert pairs[0]["t"] == pytest.approx(28.0)
    assert pairs[1]["mean_diff"] == pytest.approx((0.10 + 0.07 + 0.12) / 3)
    assert all_pairs({"only": [0.5]}) == []


def test_p_values_are_printed_with_two_significant_digits():
    assert [format_p(p) for p in (0.0123, 0.41, 0.0009, 1.0, None)] == ["p=0.012", "p=0.41", "p<0.001", "p=1",
                                                                        "p=n/a"]
