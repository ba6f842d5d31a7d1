"""dpo_engine.margins against hand-computed values and the identities of methods.md §1.5 and §9."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from dpo_engine.errors import UserError
from dpo_engine.margins.formulas import (
    alignment_potential,
    bayes_aggregate,
    bees,
    difficulty_gap,
    dm_add,
    dm_mul,
    dynamic_upper_bound,
    external_margin,
    fused_scores,
    implicit_margin,
    margin_to_prob,
)

nan = float("nan")


def official_upper_bound(margin: np.ndarray, divisor: float) -> int:
    """The loop of the official m_sampler.py, written out as it is there (methods.md §1.5)."""
    max_margin = np.max(margin)
    x = int(max_margin / divisor)
    while True:
        samples_above = np.sum((margin > x) & (margin <= max_margin))
        if samples_above < (max_margin - x) or samples_above < 30 or x > max_margin:
            break
        x += 1
    return x


def official_mul(external: np.ndarray, implicit: np.ndarray) -> np.ndarray:
    """The official 'mul' fusion, including its division by the largest clipped value."""
    x = official_upper_bound(implicit, 2)
    y = official_upper_bound(external, 1.5)
    margin1 = np.clip(implicit, -2, x) + 2
    margin2 = np.clip(external, -2, y) + 2
    margin1 /= max(margin1)
    margin2 /= max(margin2)
    with np.errstate(invalid="ignore"):
        return margin1 * margin2 / ((margin1 * margin2) + (1 - margin1) * (1 - margin2))


def synthetic_margins(seed: int) -> list[np.ndarray]:
    """Margin shapes that exercise different exits of the bound loop."""
    rng = np.random.default_rng(seed)
    return [
        rng.normal(5.0, 10.0, 3000),                   # Fig. 1-like implicit margins (about -40..60)
        rng.standard_t(2, 3000) * 3.0,                 # heavy upper tail: many increments
        rng.normal(2.0, 1.5, 500),                     # external-margin-like logits
        np.round(rng.normal(10.0, 4.0, 2000)),         # integer-valued with many ties at the max
        np.full(200, 7.0),                             # all equal: the loop exits at U = max
        -np.abs(rng.normal(3.0, 1.0, 300)),            # all negative: int() truncates toward zero
        rng.uniform(0.0, 1.0, 100) + 40.0,             # narrow band far from zero
    ]


# ---- external and implicit margins ------------------------------------------------------------------------------


def test_external_margin_is_the_raw_difference_with_nan_as_zero():
    result = external_margin(np.array([2.0, -1.0, nan, 1.0]), np.array([0.5, 1.0, 1.0, nan]))
    np.testing.assert_array_equal(result, [1.5, -2.0, 0.0, 0.0])


def test_external_margin_keeps_infinities():
    # The official nan_to_num would turn these into +-1.8e308; only NaN is replaced.
    assert external_margin(np.array([math.inf]), np.array([0.0]))[0] == math.inf


def test_implicit_margin_is_policy_log_ratio_minus_reference_log_ratio():
    result = implicit_margin(
        policy_chosen_logps=np.array([-10.0, -20.0, nan]),
        policy_rejected_logps=np.array([-12.0, -15.0, -1.0]),
        ref_chosen_logps=np.array([-11.0, -18.0, -1.0]),
        ref_rejected_logps=np.array([-11.0, -16.0, -1.0]),
    )
    # (pc - pr) - (rc - rr), no beta: (2 - 0), (-5 - -2); an unscored pair stays NaN.
    np.testing.assert_array_equal(result[:2], [2.0, -3.0])
    assert np.isnan(result[2])


def test_implicit_margin_rises_after_a_dpo_step_on_the_pair():
    """The sign test of methods.md §1.4: a DPO step towards y_w must increase m_im for that pair."""
    torch.manual_seed(0)
    logits = torch.randn(6, requires_grad=True)  # a context-free unigram "policy" over 6 tokens
    chosen, rejected = torch.tensor([0, 1, 2]), torch.tensor([3, 4])

    def sequence_logps(weights):
        logps = torch.log_softmax(weights, dim=-1)
        return logps[chosen].sum().reshape(1), logps[rejected].sum().reshape(1)

    ref_chosen, ref_rejected = (value.detach() for value in sequence_logps(logits))
    policy_chosen, policy_rejected = sequence_logps(logits)
    before = implicit_margin(policy_chosen.detach(), policy_rejected.detach(), ref_chosen, ref_rejected)
    h = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    loss = -torch.nn.functional.logsigmoid(0.1 * h).sum()
    loss.backward()
    with torch.no_grad():
        logits -= 1.0 * logits.grad
    after = implicit_margin(*(value.detach() for value in sequence_logps(logits)), ref_chosen, ref_rejected)
    assert before.item() == 0.0
    assert after.item() > 0.0


# ---- DM-ADD and the probability map -----------------------------------------------------------------------------


def test_dm_add_sums_the_raw_margins():
    np.testing.assert_array_equal(dm_add(np.array([1.5, -2.0]), np.array([10.0, 0.5])), [11.5, -1.5])


def test_margin_to_prob_clips_and_rescales():
    margins = np.array([-3.0, -2.0, 0.0, 2.0, 10.0, nan])
    result = margin_to_prob(margins, lower=-2.0, upper=2.0)
    np.testing.assert_allclose(result[:5], [0.0, 0.0, 0.5, 1.0, 1.0])
    assert np.isnan(result[5])
    # upper=None uses the largest finite margin: U = 10, U - L = 12.
    np.testing.assert_allclose(margin_to_prob(margins)[:5], [0.0, 0.0, 2 / 12, 4 / 12, 1.0])


def test_margin_to_prob_rejects_an_upper_bound_at_or_below_the_lower():
    with pytest.raises(UserError, match="greater than the lower"):
        margin_to_prob(np.array([0.0, 1.0]), lower=-2.0, upper=-2.0)


# ---- the dynamic upper bound ------------------------------------------------------------------------------------


def test_dynamic_upper_bound_by_hand():
    margins = np.arange(11.0)  # 0..10, max 10
    # Start int(10 / 2) = 5. With min_tail 30 the tail (5 pairs above 5) is already thin: stop at 5.
    assert dynamic_upper_bound(margins, 2.0) == 5.0
    # With min_tail 3: U=5 tail 5 (not < 5), U=6 tail 4 (not < 4), U=7 tail 3 (not < 3, not < 3), U=8 tail 2 < 3.
    assert dynamic_upper_bound(margins, 2.0, min_tail=3) == 8.0


def test_dynamic_upper_bound_truncates_toward_zero_like_int():
    # max -1.5: int(-0.75) is 0 (np.floor would give -1), and 0 > max ends the loop at once.
    assert dynamic_upper_bound(np.array([-5.0, -3.0, -1.5]), 2.0) == 0.0


@pytest.mark.parametrize("divisor", [1.5, 2.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_dynamic_upper_bound_reproduces_the_official_loop(divisor, seed):
    for margins in synthetic_margins(seed):
        assert dynamic_upper_bound(margins, divisor) == official_upper_bound(margins, divisor)


def test_dynamic_upper_bound_ignores_nan_and_stays_above_lower():
    margins = np.concatenate([synthetic_margins(0)[0], [nan, nan]])
    assert dynamic_upper_bound(margins, 2.0) == official_upper_bound(margins[:-2], 2.0)
    # All margins far below L: the loop stops at int(-10 / 1.5) = -6 <= L; the guard returns L + 1.
    assert dynamic_upper_bound(np.array([-10.0, -12.0]), 1.5, lower=-2.0) == -1.0


def test_dynamic_upper_bound_needs_finite_values():
    with pytest.raises(UserError, match="no finite values"):
        dynamic_upper_bound(np.array([nan, nan]), 2.0)


# ---- Bayesian aggregation, DM-MUL and BeeS ----------------------------------------------------------------------


def test_bayes_aggregate_with_an_uninformative_source_is_the_identity():
    p = np.array([0.01, 0.2, 0.5, 0.73, 0.999])
    np.testing.assert_allclose(bayes_aggregate([p, np.full(5, 0.5)]), p, rtol=1e-12)


def test_bayes_aggregate_is_symmetric_and_matches_the_product_formula():
    rng = np.random.default_rng(0)
    p, q = rng.uniform(0.01, 0.99, 50), rng.uniform(0.01, 0.99, 50)
    np.testing.assert_allclose(bayes_aggregate([p, q]), bayes_aggregate([q, p]), rtol=1e-15)
    np.testing.assert_allclose(bayes_aggregate([p, q]), p * q / (p * q + (1 - p) * (1 - q)), rtol=1e-12)


def test_bayes_aggregate_by_hand():
    # 0.8 * 0.8 / (0.64 + 0.04) = 16 / 17; a 0.2 source cancels a 0.8 one.
    np.testing.assert_allclose(bayes_aggregate([np.array([0.8]), np.array([0.8])]), [16 / 17])
    np.testing.assert_allclose(bayes_aggregate([np.array([0.8])] * 2 + [np.array([0.2])]), [0.8])


def test_bayes_aggregate_of_zero_and_one_is_one_half_not_nan():
    result = bayes_aggregate([np.array([0.0, 1.0, 0.0]), np.array([1.0, 0.0, 0.0])])
    np.testing.assert_allclose(result[:2], [0.5, 0.5])
    assert 0.0 < result[2] < 1e-10


def test_dm_mul_is_never_nan_where_the_official_code_is():
    """methods.md §1.5 pitfall: p_ex = 0 with p_im = 1 gives 0/0 in the official code, and argsort ranks it first."""
    rng = np.random.default_rng(3)
    external = np.concatenate([[-5.0], rng.normal(2.0, 1.5, 499)])  # pair 0 clips to L: p_ex = 0
    implicit = np.concatenate([[500.0], rng.normal(5.0, 10.0, 499)])  # and sits above U: p_im = 1
    official = official_mul(external, implicit)
    assert np.isnan(official[0])
    assert 0 in np.argsort(official)[-10:]  # the official top-10 picks the NaN pair

    ours = dm_mul(external, implicit)
    assert not np.isnan(ours).any()
    assert ours[0] == pytest.approx(0.5)


def test_dm_mul_matches_the_official_fusion_inside_the_clip_range():
    rng = np.random.default_rng(4)
    external, implicit = rng.normal(2.0, 1.5, 1000), rng.normal(5.0, 10.0, 1000)
    p_ex = margin_to_prob(external, upper=dynamic_upper_bound(external, 1.5))
    p_im = margin_to_prob(implicit, upper=dynamic_upper_bound(implicit, 2.0))
    inside = (p_ex > 0.01) & (p_ex < 0.99) & (p_im > 0.01) & (p_im < 0.99)
    assert inside.sum() > 500
    np.testing.assert_allclose(dm_mul(external, implicit)[inside], official_mul(external, implicit)[inside], rtol=1e-9)


def test_dm_mul_with_explicit_bounds_by_hand():
    # p_ex = (1 + 2) / (4 + 2) = 0.5, p_im = (6 + 2) / (8 + 2) = 0.8: fused 0.8.
    result = dm_mul(np.array([1.0]), np.array([6.0]), upper_external=4.0, upper_implicit=8.0)
    np.testing.assert_allclose(result, [0.8])


def test_dm_mul_is_bees_with_the_official_per_source_divisors():
    rng = np.random.default_rng(5)
    external, implicit = rng.normal(2.0, 1.5, 400), rng.normal(5.0, 10.0, 400)
    uppers = [dynamic_upper_bound(external, 1.5), dynamic_upper_bound(implicit, 2.0)]
    np.testing.assert_allclose(dm_mul(external, implicit), bees([external, implicit], uppers=uppers), rtol=1e-15)


def test_dm_mul_propagates_nan_only_to_that_pair():
    external, implicit = np.array([1.0, nan, 3.0]), np.array([2.0, 4.0, nan])
    result = dm_mul(external, implicit, upper_external=4.0, upper_implicit=8.0)
    assert not np.isnan(result[0]) and np.isnan(result[1:]).all()


def test_bees_with_three_sources_by_hand():
    margins = [np.array([1.0]), np.array([6.0]), np.array([-1.0])]
    # p = 0.5, 0.8, (−1 + 2) / (3 + 2) = 0.2 -> the 0.8 and 0.2 cancel.
    result = bees(margins, lowers=[-2.0, -2.0, -2.0], uppers=[4.0, 8.0, 3.0])
    np.testing.assert_allclose(result, [0.5])


def test_bees_default_upper_bound_is_the_dynamic_rule_with_divisor_two():
    rng = np.random.default_rng(6)
    margins = [rng.normal(2.0, 1.5, 300), rng.normal(5.0, 10.0, 300)]
    uppers = [dynamic_upper_bound(m, 2.0) for m in margins]
    np.testing.assert_allclose(bees(margins), bees(margins, uppers=uppers))
    np.testing.assert_allclose(bees(margins), bees(margins, uppers=[None, uppers[1]]))


# ---- other metrics ----------------------------------------------------------------------------------------------


def test_alignment_potential_by_hand():
    external = np.array([1.0, 2.0, 3.0])
    avg_chosen, avg_rejected = np.array([-1.0, -2.0, -1.5]), np.array([-1.5, -1.0, -1.5])
    # z([1, 2, 3]) = [-a, 0, a] and z(|gap| = [0.5, 1, 0]) = [0, a, -a] with a = sqrt(1.5) (population std).
    a = math.sqrt(1.5)
    np.testing.assert_allclose(alignment_potential(external, avg_chosen, avg_rejected), [-a, -a, 2 * a])
    np.testing.assert_allclose(alignment_potential(external, avg_chosen, avg_rejected, weight=0.5), [-a, -a / 2, 1.5 * a])


def test_alignment_potential_of_a_constant_gap_is_the_external_z_score():
    external = np.array([1.0, 2.0, 3.0])
    a = math.sqrt(1.5)
    np.testing.assert_allclose(alignment_potential(external, np.zeros(3), np.ones(3)), [-a, 0.0, a])


def test_difficulty_gap_by_hand():
    # 0.1 * ((-10 + 11) - (-12 + 11)) = 0.2; the second pair is "hard" (negative gap).
    result = difficulty_gap(np.array([-10.0, -9.0]), np.array([-12.0, -8.0]), np.array([-11.0, -9.0]), np.array([-11.0, -9.0]))
    np.testing.assert_allclose(result, [0.2, -0.1])
    np.testing.assert_allclose(difficulty_gap([-10.0], [-12.0], [-11.0], [-11.0], beta=1.0), [2.0])


# ---- array kinds and shapes -------------------------------------------------------------------------------------


def test_tensor_inputs_are_read_as_arrays():
    rng = np.random.default_rng(7)
    external, implicit = rng.normal(2.0, 1.5, 200), rng.normal(5.0, 10.0, 200)
    from_torch = dm_mul(torch.from_numpy(external), torch.from_numpy(implicit))
    assert isinstance(from_torch, np.ndarray)
    np.testing.assert_allclose(from_torch, dm_mul(external, implicit))
    assert dynamic_upper_bound(torch.from_numpy(implicit), 2.0) == dynamic_upper_bound(implicit, 2.0)


def test_lists_and_series_come_back_as_numpy():
    assert isinstance(dm_add([1.0, 2.0], pd.Series([3.0, 4.0])), np.ndarray)


def test_shape_errors():
    with pytest.raises(ValueError, match="same length"):
        dm_add(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="1-D"):
        external_margin(np.zeros((2, 2)), np.zeros((2, 2)))


# ---- fused scores on a margins table ----------------------------------------------------------------------------


def test_fused_scores_adds_the_three_columns_without_touching_the_input():
    rng = np.random.default_rng(8)
    table = pd.DataFrame({
        "pair_id": [f"p{i}" for i in range(100)],
        "external_margin": rng.normal(2.0, 1.5, 100),
        "implicit_margin": rng.normal(5.0, 10.0, 100),
    })
    scored = fused_scores(table)
    assert list(table.columns) == ["pair_id", "external_margin", "implicit_margin"]
    external, implicit = table["external_margin"].to_numpy(), table["implicit_margin"].to_numpy()
    np.testing.assert_allclose(scored["dm_add"], external + implicit)
    np.testing.assert_allclose(scored["dm_mul"], dm_mul(external, implicit))
    np.testing.assert_allclose(scored["bees"], bees([external, implicit]))


@pytest.mark.parametrize("columns", [{"external_margin": [1.0, 2.0]}, {"external_margin": [1.0, 2.0], "implicit_margin": [nan, nan]}])
def test_fused_scores_are_nan_when_a_source_is_missing(columns):
    scored = fused_scores(pd.DataFrame({"pair_id": ["a", "b"], **columns}))
    for column in ("dm_add", "dm_mul", "bees"):
        assert scored[column].isna().all()


def test_pair_ranks_by_hand():
    from dpo_engine.margins.ranks import pair_ranks

    table = pd.DataFrame({"pair_id": ["a", "b", "c", "d"], "external_margin": [3.0, 1.0, 3.0, np.nan],
                          "implicit_margin": [0.1, 0.4, 0.2, 0.3], "dm_mul": [np.nan] * 4})
    ranks = pair_ranks(table, "c").set_index("margin")
    assert list(ranks.index) == ["external_margin", "implicit_margin"]  # dm_mul has no values
    assert ranks.loc["external_margin", "rank"] == 1 and ranks.loc["external_margin", "of"] == 3  # tied with a
    assert ranks.loc["implicit_margin", "rank"] == 3 and ranks.loc["implicit_margin", "top_percent"] == 75.0
    assert np.isnan(pair_ranks(table, "d").set_index("margin").loc["external_margin", "rank"])
