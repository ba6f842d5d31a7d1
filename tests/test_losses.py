"""dpo_engine.losses against hand-computed numbers and the identities in methods.md §9."""

import json
import math

import pytest
import torch

from dpo_engine.errors import ConfigError
from dpo_engine.losses.catalog import LOSS_DEFAULTS, LOSS_DOCS, LOSS_NAMES
from dpo_engine.losses.functions import (
    AlphaDPOLoss,
    is_stateful,
    make_loss,
    uses_reference,
)


def t(*values):
    return torch.tensor(values, dtype=torch.float64)


def softplus(x):
    """log(1 + e^x), so −log σ(x) = softplus(−x) and log σ(−x) = −softplus(x)."""
    return math.log(1 + math.exp(x))


def assert_values(actual, expected):
    torch.testing.assert_close(actual, t(*expected))


# Three pairs of summed log-probs: log-ratios chosen (1, 0, 2), rejected (−1, 1, −5), so h = (2, −1, 7).
POLICY_CHOSEN = t(-10.0, -5.0, -20.0)
POLICY_REJECTED = t(-12.0, -4.0, -30.0)
REF_CHOSEN = t(-11.0, -5.0, -22.0)
REF_REJECTED = t(-11.0, -5.0, -25.0)
CHOSEN_LENGTHS = torch.tensor([2, 4, 10])
REJECTED_LENGTHS = torch.tensor([4, 2, 5])
H = (2.0, -1.0, 7.0)


def run(loss_fn, policy_chosen=POLICY_CHOSEN, policy_rejected=POLICY_REJECTED, ref_chosen=REF_CHOSEN,
        ref_rejected=REF_REJECTED, chosen_lengths=CHOSEN_LENGTHS, rejected_lengths=REJECTED_LENGTHS):
    return loss_fn(policy_chosen, policy_rejected, ref_chosen, ref_rejected, chosen_lengths, rejected_lengths)


# ---- each loss against hand-computed numbers ----

def test_dpo_by_hand():
    out = run(make_loss("dpo", beta=0.1))
    assert_values(out.loss, [softplus(-0.1 * h) for h in H])
    assert_values(out.chosen_rewards, [0.1 * 1, 0.1 * 0, 0.1 * 2])
    assert_values(out.rejected_rewards, [0.1 * -1, 0.1 * 1, 0.1 * -5])


def test_ipo_by_hand_uses_per_token_averages():
    out = run(make_loss("ipo", beta=0.1))
    # h̄ = chosen log-ratio / chosen length − rejected log-ratio / rejected length; target 1/(2β) = 5
    h_avg = [1 / 2 - (-1) / 4, 0 / 4 - 1 / 2, 2 / 10 - (-5) / 5]
    assert_values(out.loss, [(h - 5) ** 2 for h in h_avg])
    assert_values(out.loss, [18.0625, 30.25, 14.44])
    assert_values(out.chosen_rewards, [0.1, 0.0, 0.2])  # summed log-ratios, as TRL logs them


def test_cdpo_by_hand():
    out = run(make_loss("cdpo", beta=0.1, label_smoothing=0.1))
    assert_values(out.loss, [0.9 * softplus(-0.1 * h) + 0.1 * softplus(0.1 * h) for h in H])


def test_robust_by_hand():
    out = run(make_loss("robust", beta=0.1, label_smoothing=0.1))
    assert_values(out.loss, [(0.9 * softplus(-0.1 * h) - 0.1 * softplus(0.1 * h)) / 0.8 for h in H])


def test_hinge_by_hand_and_zero_beyond_margin():
    out = run(make_loss("hinge", beta=0.1))
    assert_values(out.loss, [1 - 0.2, 1 + 0.1, 1 - 0.7])
    # The margin is 1/β = 10 in h units: h = 10 and beyond give exactly 0.
    beyond = run(make_loss("hinge", beta=0.1), policy_chosen=t(-1.0, 0.5, 20.0), policy_rejected=t(-11.0, -10.0, 0.0),
                 ref_chosen=t(0.0, 0.0, 0.0), ref_rejected=t(0.0, 0.0, 0.0))
    assert_values(beyond.loss, [0.0, 0.0, 0.0])


def test_simpo_by_hand():
    # avg log-probs: chosen −4/4 = −1 and −6/3 = −2; rejected −9/3 = −3 and −5/5 = −1
    out = run(make_loss("simpo", beta=2.0, gamma_beta_ratio=0.5), policy_chosen=t(-4.0, -6.0),
              policy_rejected=t(-9.0, -5.0), ref_chosen=t(0.0, 0.0), ref_rejected=t(0.0, 0.0),
              chosen_lengths=torch.tensor([4, 3]), rejected_lengths=torch.tensor([3, 5]))
    assert_values(out.loss, [softplus(-2.0 * ((-1 + 3) - 0.5)), softplus(-2.0 * ((-2 + 1) - 0.5))])
    assert_values(out.chosen_rewards, [2.0 * -1, 2.0 * -2])
    assert_values(out.rejected_rewards, [2.0 * -3, 2.0 * -1])


def test_dpop_by_hand():
    # pair 1: policy above reference on chosen, no penalty, h = 2.
    # pair 2: chosen dropped 0.5 below reference; h = (−0.5) − (−1) = 0.5; penalty 50 · 0.5 inside the sigmoid.
    out = run(make_loss("dpop", beta=0.3, dpop_lambda=50.0), policy_chosen=t(-10.0, -5.5),
              policy_rejected=t(-12.0, -7.0), ref_chosen=t(-11.0, -5.0), ref_rejected=t(-11.0, -6.0))
    assert_values(out.loss, [softplus(-0.3 * 2), softplus(-0.3 * (0.5 - 50 * 0.5))])


def test_alpha_dpo_by_hand_over_two_steps():
    loss_fn = make_loss("alpha_dpo", beta=2.5, gamma_beta_ratio=0.5, alpha=0.2, momentum=0.9)
    # Step 1. avg log-probs: policy chosen (−1, −2), rejected (−3, −1); reference chosen (−2, −2), rejected (−3, −2).
    # u = (2, −1), reference gap (1, 0), g = (1, −1): mean 0, unbiased std √2.
    # μ = 0.1·0 = 0, s = 0.1·√2, z = ±1/(0.1·√2), margin = 0.5 ± 0.2/(0.1·√2) = 0.5 ± √2.
    out = loss_fn(t(-2.0, -8.0), t(-3.0, -2.0), t(-4.0, -8.0), t(-3.0, -4.0), torch.tensor([2, 4]),
                  torch.tensor([1, 2]))
    root2 = math.sqrt(2)
    assert_values(out.loss, [softplus(-2.5 * (2 - (0.5 + root2))), softplus(-2.5 * (-1 - (0.5 - root2)))])
    assert loss_fn.state_dict() == pytest.approx({"gap_mean": 0.0, "gap_std": 0.1 * root2})
    # rewards β·(avg π − α·(avg π − avg π_ref))
    assert_values(out.chosen_rewards, [2.5 * (-1 - 0.2 * 1), 2.5 * (-2 - 0.2 * 0)])
    assert_values(out.rejected_rewards, [2.5 * (-3 - 0.2 * 0), 2.5 * (-1 - 0.2 * 1)])

    # Step 2, lengths 1: u = g = (3, 1): mean 2, std √2. μ = 0.9·0 + 0.1·2 = 0.2, s = 0.9·0.1·√2 + 0.1·√2 = 0.19·√2.
    out = loss_fn(t(3.0, 1.0), t(0.0, 0.0), t(0.0, 0.0), t(0.0, 0.0), torch.tensor([1, 1]), torch.tensor([1, 1]))
    s = 0.19 * root2
    margins = [0.2 * (3 - 0.2) / s + 0.5, 0.2 * (1 - 0.2) / s + 0.5]
    assert_values(out.loss, [softplus(-2.5 * (3 - margins[0])), softplus(-2.5 * (1 - margins[1]))])
    assert loss_fn.state_dict() == pytest.approx({"gap_mean": 0.2, "gap_std": s})


# ---- identities ----

def test_dpo_at_zero_margin_is_log_2():
    out = run(make_loss("dpo"), policy_chosen=REF_CHOSEN, policy_rejected=REF_REJECTED)
    assert_values(out.loss, [math.log(2)] * 3)


@pytest.mark.parametrize("name", ["robust", "cdpo"])
def test_label_smoothed_variants_equal_dpo_at_zero_smoothing(name):
    torch.testing.assert_close(run(make_loss(name, beta=0.2, label_smoothing=0.0)).loss,
                               run(make_loss("dpo", beta=0.2)).loss)


def test_simpo_ignores_reference_logps():
    simpo = make_loss("simpo")
    shifted = run(simpo, ref_chosen=REF_CHOSEN + 3.0, ref_rejected=REF_REJECTED - 7.0)
    skipped = run(simpo, ref_chosen=None, ref_rejected=None)
    torch.testing.assert_close(shifted.loss, run(simpo).loss)
    torch.testing.assert_close(skipped.loss, run(simpo).loss)
    assert not uses_reference("simpo")
    assert all(uses_reference(name) for name in LOSS_NAMES if name != "simpo")


def test_dpop_equals_dpo_while_chosen_stays_above_reference_and_exceeds_it_otherwise():
    dpop, dpo = make_loss("dpop", beta=0.3), make_loss("dpo", beta=0.3)
    torch.testing.assert_close(run(dpop).loss, run(dpo).loss)  # POLICY_CHOSEN >= REF_CHOSEN
    below = REF_CHOSEN - t(0.1, 1.0, 5.0)
    assert torch.all(run(dpop, policy_chosen=below).loss > run(dpo, policy_chosen=below).loss)


def test_alpha_dpo_at_alpha_zero_is_simpo():
    alpha_zero = run(make_loss("alpha_dpo", beta=2.0, gamma_beta_ratio=0.5, alpha=0.0))
    simpo = run(make_loss("simpo", beta=2.0, gamma_beta_ratio=0.5))
    for alpha_value, simpo_value in zip(alpha_zero, simpo):
        torch.testing.assert_close(alpha_value, simpo_value)


def test_ipo_depends_on_lengths_and_dpo_does_not():
    longer = CHOSEN_LENGTHS * 3
    ipo, dpo = make_loss("ipo"), make_loss("dpo")
    assert not torch.allclose(run(ipo, chosen_lengths=longer).loss, run(ipo).loss)
    torch.testing.assert_close(run(dpo, chosen_lengths=longer).loss, run(dpo).loss)


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_gradients_reach_policy_but_not_reference(name):
    policy_chosen, policy_rejected, ref_chosen, ref_rejected = (
        x.clone().requires_grad_() for x in (POLICY_CHOSEN - 2.0, POLICY_REJECTED, REF_CHOSEN, REF_REJECTED)
    )
    out = run(make_loss(name), policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    out.loss.sum().backward()
    assert policy_chosen.grad.abs().sum() > 0
    assert policy_rejected.grad.abs().sum() > 0
    assert ref_chosen.grad is None and ref_rejected.grad is None
    assert not out.chosen_rewards.requires_grad and not out.rejected_rewards.requires_grad
    assert out.loss.shape == out.chosen_rewards.shape == out.rejected_rewards.shape == (3,)


# ---- α-DPO state ----

def test_alpha_dpo_state_dict_round_trip_makes_next_loss_identical():
    trained = make_loss("alpha_dpo")
    run(trained)
    run(trained, policy_chosen=POLICY_CHOSEN + 1.0)
    resumed = make_loss("alpha_dpo")
    resumed.load_state_dict(json.loads(json.dumps(trained.state_dict())))

    next_batch = {"policy_chosen": POLICY_CHOSEN - 0.5, "policy_rejected": POLICY_REJECTED + 0.25}
    expected = run(trained, **next_batch)
    assert torch.equal(run(resumed, **next_batch).loss, expected.loss)
    assert resumed.state_dict() == trained.state_dict()
    assert not torch.equal(run(make_loss("alpha_dpo"), **next_batch).loss, expected.loss)


def test_alpha_dpo_single_pair_batch_keeps_std_and_stays_finite():
    loss_fn = make_loss("alpha_dpo")
    one_pair = {name: x[:1] for name, x in [("policy_chosen", POLICY_CHOSEN), ("policy_rejected", POLICY_REJECTED),
                                            ("ref_chosen", REF_CHOSEN), ("ref_rejected", REF_REJECTED),
                                            ("chosen_lengths", CHOSEN_LENGTHS), ("rejected_lengths", REJECTED_LENGTHS)]}
    # No spread seen yet: std is not updated (Tensor.std of one value is NaN), z = 0, the loss is SimPO's.
    first = run(loss_fn, **one_pair)
    assert loss_fn.state_dict()["gap_std"] == 0.0 and loss_fn.state_dict()["gap_mean"] != 0.0
    simpo = make_loss("simpo", beta=2.5, gamma_beta_ratio=0.5)
    torch.testing.assert_close(first.loss, run(simpo, **one_pair).loss)

    run(loss_fn)
    std_after_full_batch = loss_fn.state_dict()["gap_std"]
    assert std_after_full_batch > 0
    later = run(loss_fn, **one_pair)
    assert loss_fn.state_dict()["gap_std"] == std_after_full_batch
    assert torch.isfinite(later.loss).all()


def test_alpha_dpo_identical_gaps_give_finite_loss():
    # At step 0 the policy equals the reference: g = 0 everywhere, std 0, so z is taken as 0.
    out = run(make_loss("alpha_dpo"), ref_chosen=POLICY_CHOSEN, ref_rejected=POLICY_REJECTED)
    assert torch.isfinite(out.loss).all()


def test_only_alpha_dpo_is_stateful():
    assert isinstance(make_loss("alpha_dpo"), AlphaDPOLoss)
    assert [name for name in LOSS_NAMES if is_stateful(make_loss(name))] == ["alpha_dpo"]


# ---- configuration ----

def test_defaults_and_docs_cover_every_loss():
    assert set(LOSS_DEFAULTS) == set(LOSS_DOCS) == set(LOSS_NAMES)
    assert LOSS_DEFAULTS["simpo"] == {"beta": 2.0, "gamma_beta_ratio": 0.5}
    assert LOSS_DEFAULTS["dpop"] == {"beta": 0.3, "dpop_lambda": 50.0}
    assert LOSS_DEFAULTS["alpha_dpo"] == {"beta": 2.5, "gamma_beta_ratio": 0.5, "alpha": 0.2, "momentum": 0.9}


@pytest.mark.parametrize(
    ("name", "hparams", "field"),
    [
        ("dpo", {"beta": 0.0}, "beta"),
        ("ipo", {"beta": -0.1}, "beta"),
        ("dpo", {"beta": float("nan")}, "beta"),
        ("simpo", {"beta": "2"}, "beta"),
        ("robust", {"label_smoothing": 0.5}, "label_smoothing"),
        ("robust", {"label_smoothing": -0.1}, "label_smoothing"),
        ("cdpo", {"label_smoothing": 1.5}, "label_smoothing"),
        ("dpo", {"label_smoothing": 0.1}, "label_smoothing"),
        ("simpo", {"gamma": 1.0}, "gamma"),
        ("dpop", {"dpop_lambda": -50.0}, "dpop_lambda"),
        ("alpha_dpo", {"alpha": -0.2}, "alpha"),
        ("alpha_dpo", {"momentum": 1.0}, "momentum"),
        ("alpha_dpo", {"gamma_beta_ratio": -0.5}, "gamma_beta_ratio"),
        ("kto", {}, "loss"),
    ],
)
def test_bad_config_raises_naming_the_field(name, hparams, field):
    with pytest.raises(ConfigError) as raised:
        make_loss(name, **hparams)
    assert raised.value.field == field
    assert f"'{field}'" in str(raised.value)


def test_boundary_values_are_accepted():
    make_loss("cdpo", label_smoothing=1.0)
    make_loss("robust", label_smoothing=0.49)
    make_loss("alpha_dpo", alpha=0, momentum=0)


def test_uses_reference_rejects_unknown_loss():
    with pytest.raises(ConfigError, match="'loss'"):
        uses_reference("kto")


def test_a_bad_hyperparameter_is_refused_by_the_config_without_torch():
    """TrainConfig.from_dict checks loss hyperparameters with the torch-free catalog: a form refuses a bad beta at
    once instead of a launch job failing seconds later."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from dpo_engine.errors import ConfigError\n"
        "from dpo_engine.training.config import TrainConfig\n"
        "try:\n"
        "    TrainConfig.from_dict({'loss': 'robust', 'loss_params': {'beta': 0.1, 'label_smoothing': 0.5}})\n"
        "except ConfigError as error:\n"
        "    print(error.field if hasattr(error, 'field') else error, 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "label_smoothing" in out and out.strip().endswith("False")
