"""Win rate, bootstrap CI, paired comparison and length-controlled win rate (methods §8)."""

import math

import numpy as np
import pytest

from dpo_engine.evaluation.metrics import (
    bootstrap_ci,
    is_extreme_change,
    length_controlled_win_rate,
    mean_length,
    paired_difference,
    win_rate,
)


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def test_all_wins_is_100_and_all_ties_is_50():
    assert win_rate(np.ones(10))["win_rate"] == 100
    assert win_rate(np.ones(10))["standard_error"] == 0
    ties = win_rate(np.full(10, 0.5))
    assert ties["win_rate"] == 50
    assert ties["discrete_win_rate"] == 50
    assert (ties["n_wins"], ties["n_draws"], ties["n_losses"]) == (0, 10, 0)


def test_mixed_case_by_hand():
    result = win_rate([1, 0, 0.5, 1])
    assert result["win_rate"] == pytest.approx(62.5)
    # deviations from 0.625: .375, -.625, -.125, .375 -> squares sum to .6875; sd with ddof=1 (pandas .sem())
    assert result["standard_error"] == pytest.approx(100 * math.sqrt(0.6875 / 3) / math.sqrt(4))
    assert (result["n"], result["n_wins"], result["n_draws"], result["n_losses"]) == (4, 2, 1, 1)
    assert result["discrete_win_rate"] == pytest.approx(62.5)


def test_soft_preferences_and_discrete_win_rate():
    result = win_rate([0.9, 0.2, 0.5])
    assert result["win_rate"] == pytest.approx(100 * 1.6 / 3)
    assert result["discrete_win_rate"] == pytest.approx(50)


def test_nan_prompts_are_skipped_and_counted():
    result = win_rate([1, np.nan, 0, np.nan])
    assert result["win_rate"] == 50
    assert (result["n"], result["n_failed"]) == (2, 2)
    nothing = win_rate([np.nan])
    assert math.isnan(nothing["win_rate"]) and nothing["n_failed"] == 1


def test_out_of_range_preference_is_rejected():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        win_rate([1.5, 2.0])  # AlpacaEval's [1, 2] scale must be shifted first


def test_bootstrap_ci_contains_estimate_and_narrows_with_n():
    rng = np.random.default_rng(0)
    small, large = rng.beta(2, 1.5, 50), rng.beta(2, 1.5, 2000)
    for sample in (small, large):
        low, high = bootstrap_ci(sample)
        assert low <= win_rate(sample)["win_rate"] <= high
    width_small = np.subtract(*bootstrap_ci(small)[::-1])
    width_large = np.subtract(*bootstrap_ci(large)[::-1])
    assert width_large < width_small / 3  # ~ 1/sqrt(n): sqrt(2000/50) ~ 6.3
    assert bootstrap_ci(small, seed=3) == bootstrap_ci(small, seed=3)


def test_bootstrap_ci_width_matches_normal_approximation():
    sample = np.random.default_rng(1).beta(2, 2, 800)
    low, high = bootstrap_ci(sample, n_resamples=4000)
    se = win_rate(sample)["standard_error"]
    assert (high - low) == pytest.approx(2 * 1.96 * se, rel=0.1)


def test_paired_difference_of_identical_inputs_is_zero():
    sample = np.random.default_rng(2).beta(2, 1.5, 300)
    result = paired_difference(sample, sample)
    assert result["difference"] == 0
    assert result["low"] <= 0 <= result["high"]
    assert result["p_value"] == 1
    assert result["n"] == 300


def test_paired_difference_detects_a_clear_difference():
    rng = np.random.default_rng(3)
    better = rng.beta(3, 1.5, 400)
    worse = np.clip(better - rng.uniform(0.0, 0.2, 400), 0, 1)
    result = paired_difference(better, worse)
    assert result["difference"] == pytest.approx(100 * (better - worse).mean())
    assert result["low"] > 0
    assert result["p_value"] < 0.01
    reverse = paired_difference(worse, better)
    assert reverse["difference"] == pytest.approx(-result["difference"]) and reverse["high"] < 0


def test_paired_difference_uses_prompts_judged_by_both():
    result = paired_difference([1, np.nan, 0.5, 1], [0, 1, np.nan, 1])
    assert result["n"] == 2
    assert result["difference"] == pytest.approx(50)
    with pytest.raises(ValueError, match="same prompts"):
        paired_difference([1, 0], [1])


@pytest.mark.parametrize("preferences", [
    np.random.default_rng(4).beta(2, 1.5, 805),
    np.full(100, 0.5),
    np.ones(20),
])
def test_lc_equals_raw_win_rate_when_lengths_are_equal(preferences):
    lengths = np.full(preferences.size, 700.0)
    result = length_controlled_win_rate(preferences, lengths, lengths)
    raw = win_rate(preferences)
    assert abs(result["lc_win_rate"] - raw["win_rate"]) < 1
    assert result["coefficients"]["phi"] == 0
    assert "length term was dropped" in result["note"]
    if raw["standard_error"] > 0:
        assert result["lc_standard_error"] == pytest.approx(raw["standard_error"], rel=0.01)


def _length_driven_preferences(candidate_mostly_longer: bool):
    """Synthetic prompts where the judge only rewards length: P(win) = sigmoid(2 tanh(dlen / sd))."""
    rng = np.random.default_rng(5)
    baseline = rng.normal(1000, 300, 805)
    shift = 400 if candidate_mostly_longer else -400
    candidate = baseline + shift + rng.normal(0, 400, 805)
    delta = candidate - baseline
    return _sigmoid(2 * np.tanh(delta / delta.std(ddof=1))), candidate, baseline


def test_lc_removes_a_win_that_comes_only_from_length():
    preferences, candidate, baseline = _length_driven_preferences(candidate_mostly_longer=True)
    result = length_controlled_win_rate(preferences, candidate, baseline)
    assert result["win_rate"] > 60
    assert result["lc_win_rate"] < result["win_rate"] - 10
    assert result["lc_win_rate"] == pytest.approx(50, abs=2)
    assert result["coefficients"]["phi"] > 0  # longer wins more
    assert result["extreme_change"]  # AlpacaEval would warn here too


def test_lc_credits_a_shorter_candidate():
    preferences, candidate, baseline = _length_driven_preferences(candidate_mostly_longer=False)
    result = length_controlled_win_rate(preferences, candidate, baseline)
    assert result["lc_win_rate"] > result["win_rate"] + 10
    assert result["lc_win_rate"] == pytest.approx(50, abs=2)


def test_lc_skips_failed_prompts_and_accepts_instruction_difficulty():
    rng = np.random.default_rng(6)
    preferences = rng.beta(2, 2, 200)
    preferences[:5] = np.nan
    lengths = rng.normal(900, 200, (2, 200))
    difficulty = rng.normal(size=200)
    result = length_controlled_win_rate(preferences, lengths[0], lengths[1], instruction_difficulty=difficulty)
    assert result["n"] == 195
    assert set(result["coefficients"]) == {"theta", "phi", "psi"}
    assert "given instruction-difficulty" in result["note"]
    with pytest.raises(ValueError, match="candidate_lengths"):
        length_controlled_win_rate(preferences, lengths[0][:10], lengths[1])


def test_extreme_change_thresholds_follow_alpaca_eval():
    # at WR 50 the band is [37.5, 62.5]; at WR 20 it is [10, 40]
    assert not is_extreme_change(50, 40) and is_extreme_change(50, 37)
    assert not is_extreme_change(20, 39) and is_extreme_change(20, 41) and is_extreme_change(20, 9)


def test_mean_length_counts_characters():
    assert mean_length(["ab", "abcd", "é"]) == pytest.approx(7 / 3)
    assert math.isnan(mean_length([]))
