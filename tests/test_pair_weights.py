"""Per-pair weights (every loss), MADPO weights, MixDPO routing and curriculum order, against hand computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dpo_engine.errors import ConfigError
from dpo_engine.losses.catalog import LOSS_NAMES
from dpo_engine.losses.functions import madpo_weights, make_loss, weighted_batch_loss
from dpo_engine.training.curriculum import curriculum_order
from dpo_engine.training.routing import PairRouting, routed_batch_loss, sft_losses


def t(*values):
    return torch.tensor(values, dtype=torch.float64)


def softplus(x):
    return math.log1p(math.exp(x))


# The pairs of tests/test_losses.py: log-ratios chosen (1, 0, 2), rejected (-1, 1, -5), so h = (2, -1, 7).
POLICY_CHOSEN = t(-10.0, -5.0, -20.0)
POLICY_REJECTED = t(-12.0, -4.0, -30.0)
REF_CHOSEN = t(-11.0, -5.0, -22.0)
REF_REJECTED = t(-11.0, -5.0, -25.0)
CHOSEN_LENGTHS = torch.tensor([2, 4, 10])
REJECTED_LENGTHS = torch.tensor([4, 2, 5])
H = (2.0, -1.0, 7.0)
H_AVG = (1 / 2 + 1 / 4, 0 / 4 - 1 / 2, 2 / 10 + 5 / 5)  # per-token log-ratio gaps
U = (-10 / 2 + 12 / 4, -5 / 4 + 4 / 2, -20 / 10 + 30 / 5)  # SimPO's average log-prob gaps
WEIGHTS = (2.0, 0.5, 1.0)

# Per-pair losses with the engine's defaults, computed by hand (methods.md §2-§5).
HAND = {
    "dpo": [softplus(-0.1 * h) for h in H],
    "ipo": [(h - 5.0) ** 2 for h in H_AVG],
    "cdpo": [0.9 * softplus(-0.1 * h) + 0.1 * softplus(0.1 * h) for h in H],
    "robust": [(0.9 * softplus(-0.1 * h) - 0.1 * softplus(0.1 * h)) / 0.8 for h in H],
    "hinge": [max(0.0, 1 - 0.1 * h) for h in H],
    "simpo": [softplus(-2.0 * (u - 0.5)) for u in U],
    # DPOP: the chosen log-prob fell below the reference by (0, 0, 0): -10 > -11, -5 = -5, -20 > -22
    "dpop": [softplus(-0.3 * h) for h in H],
}


def run(loss_fn):
    return loss_fn(POLICY_CHOSEN, POLICY_REJECTED, REF_CHOSEN, REF_REJECTED, CHOSEN_LENGTHS, REJECTED_LENGTHS)


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_every_loss_honours_the_weight_as_a_batch_normalised_weighted_mean(name):
    per_pair = HAND.get(name)
    out = run(make_loss(name))
    if per_pair is None:  # alpha_dpo: its per-pair numbers are checked by hand in test_losses.py
        per_pair = out.loss.tolist()
    torch.testing.assert_close(out.loss, t(*per_pair))
    expected = sum(w * loss for w, loss in zip(WEIGHTS, per_pair)) / sum(WEIGHTS)
    assert weighted_batch_loss(out.loss, t(*WEIGHTS)).item() == pytest.approx(expected, rel=1e-12)
    assert weighted_batch_loss(out.loss).item() == pytest.approx(sum(per_pair) / 3, rel=1e-12)
    # Scaling all weights changes nothing: only their ratios within the batch matter.
    assert weighted_batch_loss(out.loss, 10 * t(*WEIGHTS)).item() == pytest.approx(expected, rel=1e-12)


def test_weight_two_is_the_pair_counted_twice_in_the_gradient():
    policy = POLICY_CHOSEN.clone().requires_grad_(True)
    loss_fn = make_loss("dpo")
    weighted = weighted_batch_loss(
        loss_fn(policy, POLICY_REJECTED, REF_CHOSEN, REF_REJECTED, CHOSEN_LENGTHS, REJECTED_LENGTHS).loss, t(2.0, 1.0, 0.0))
    (grad_weighted,) = torch.autograd.grad(weighted, policy)
    duplicated = torch.cat([policy[:1], policy[:2]])  # pair 0 twice, pair 1 once, pair 2 not at all
    out = loss_fn(duplicated, POLICY_REJECTED[[0, 0, 1]], REF_CHOSEN[[0, 0, 1]], REF_REJECTED[[0, 0, 1]],
                  CHOSEN_LENGTHS[[0, 0, 1]], REJECTED_LENGTHS[[0, 0, 1]])
    (grad_duplicated,) = torch.autograd.grad(out.loss.mean(), policy)
    torch.testing.assert_close(grad_weighted, grad_duplicated)
    assert grad_weighted[2].item() == 0.0


def test_all_zero_weights_give_a_zero_loss_not_nan():
    loss = weighted_batch_loss(t(1.0, 2.0), t(0.0, 0.0))
    assert loss.item() == 0.0


def test_madpo_weights_by_hand():
    weights = madpo_weights([0.0, 2.0, -2.0, float("nan")], strength=0.5, scale=1.0)
    expected = [1.0, 1 - 0.5 * math.tanh(1.0), 1 + 0.5 * math.tanh(1.0), 1.0]
    torch.testing.assert_close(weights, torch.tensor(expected, dtype=torch.float64))
    assert madpo_weights([100.0], strength=0.9).item() > 0  # easy pairs are damped, never dropped


@pytest.mark.parametrize("kwargs,field", [({"strength": 1.0}, "madpo_strength"), ({"scale": 0.0}, "madpo_scale")])
def test_madpo_weights_reject_bad_settings(kwargs, field):
    with pytest.raises(ConfigError) as error:
        madpo_weights([1.0], **kwargs)
    assert error.value.field == field


# ---- MixDPO routing ---------------------------------------------------------------------------------------------


def test_sft_loss_is_the_chosen_response_nll_per_token():
    torch.testing.assert_close(sft_losses(POLICY_CHOSEN, CHOSEN_LENGTHS), t(10 / 2, 5 / 4, 20 / 10))


def test_routing_sends_low_margin_pairs_to_sft_and_the_rest_to_the_preference_loss():
    dpo = run(make_loss("dpo")).loss
    use_sft = torch.tensor([False, True, False])  # pair 1 is below the margin threshold
    loss = routed_batch_loss(dpo, POLICY_CHOSEN, CHOSEN_LENGTHS, PairRouting(use_sft=use_sft))
    expected = (HAND["dpo"][0] + 5 / 4 + HAND["dpo"][2]) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-12)

    weighted = routed_batch_loss(dpo, POLICY_CHOSEN, CHOSEN_LENGTHS, PairRouting(weight=t(*WEIGHTS), use_sft=use_sft))
    expected = (2.0 * HAND["dpo"][0] + 0.5 * 5 / 4 + 1.0 * HAND["dpo"][2]) / 3.5
    assert weighted.item() == pytest.approx(expected, rel=1e-12)
    assert routed_batch_loss(dpo, POLICY_CHOSEN, CHOSEN_LENGTHS, PairRouting()).item() == pytest.approx(sum(HAND["dpo"]) / 3)


def test_routing_threshold_from_margins():
    routing = PairRouting.from_margins(np.array([0.1, 2.0, np.nan, 0.5]), threshold=0.5)
    assert routing.use_sft.tolist() == [True, False, False, False]  # below the threshold only; NaN stays on DPO


# ---- curriculum -------------------------------------------------------------------------------------------------


def test_curriculum_is_a_stable_easy_to_hard_order_with_nan_last():
    score = np.array([0.3, np.nan, 0.1, 0.3, 0.2])
    assert curriculum_order(score).tolist() == [2, 4, 0, 3, 1]
    assert curriculum_order(score, descending=True).tolist() == [0, 3, 4, 2, 1]
