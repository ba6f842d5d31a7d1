"""Preference losses: eight variants behind `make_loss(name, **hparams)`.

Formulas follow docs/methods.md §2 (α-DPO, as in its code), §3 (SimPO), §4 (DPOP) and §5 (DPO, cDPO,
robust DPO, IPO and hinge, as in TRL). Every loss has the same call signature:

    loss_fn(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
            chosen_lengths, rejected_lengths) -> LossOutput

Log-probs are summed over response tokens, shape (B,); lengths are response token counts, shape (B,). Losses that
work on per-token averages (ipo, simpo, alpha_dpo) divide by the lengths themselves (clamped at 1, as TRL does).
Reference log-probs are constants: they are detached, so no gradient reaches them. SimPO ignores them, and the
caller may pass None (see `uses_reference`).

The returned loss is per pair, shape (B,); the caller reduces it with `weighted_batch_loss` (the mean, or with
per-pair weights their weighted mean), so a per-pair ``weight`` is honoured by every loss alike. `madpo_weights`
turns a reward margin into such weights. Only α-DPO keeps state (an EMA of the gap statistics):
`is_stateful(loss_fn)` says when `loss_fn.state_dict()` has to be saved with checkpoints.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from dpo_engine.errors import ConfigError
from dpo_engine.losses.catalog import check_loss_name, resolved_loss_params


class LossOutput(NamedTuple):
    """Per-pair loss (B,) and the detached per-pair rewards (B,) to log."""

    loss: Tensor
    chosen_rewards: Tensor
    rejected_rewards: Tensor


def _per_token(logps: Tensor, lengths: Tensor) -> Tensor:
    """Summed log-probs -> per-token averages; an empty response counts as one token, as in TRL."""
    return logps / lengths.clamp(min=1)


def _log_ratio_rewards(beta, policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps):
    """Implicit DPO rewards β·(log π − log π_ref) for chosen and rejected, detached, for logging."""
    chosen_rewards = beta * (policy_chosen_logps - ref_chosen_logps).detach()
    rejected_rewards = beta * (policy_rejected_logps - ref_rejected_logps).detach()
    return chosen_rewards, rejected_rewards


def _log_ratio_gap(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps) -> Tensor:
    """h = [log π(y_w) − log π_ref(y_w)] − [log π(y_l) − log π_ref(y_l)], with the reference held constant."""
    return (policy_chosen_logps - ref_chosen_logps.detach()) - (policy_rejected_logps - ref_rejected_logps.detach())


def dpo_loss(
    policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
    chosen_lengths, rejected_lengths, *, beta,
) -> LossOutput:
    """DPO: −log σ(β·h) on summed log-probs; lengths are unused."""
    h = _log_ratio_gap(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    loss = -F.logsigmoid(beta * h)
    return LossOutput(loss, *_log_ratio_rewards(
        beta, policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps))


def ipo_loss(
    policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
    chosen_lengths, rejected_lengths, *, beta,
) -> LossOutput:
    """IPO: (h̄ − 1/(2β))², where h̄ uses per-token-averaged log-probs (TRL's choice, confirmed with the authors).

    Logged rewards are β·(summed) log-ratios, as TRL logs them.
    """
    h_avg = (
        _per_token(policy_chosen_logps - ref_chosen_logps.detach(), chosen_lengths)
        - _per_token(policy_rejected_logps - ref_rejected_logps.detach(), rejected_lengths)
    )
    loss = (h_avg - 1 / (2 * beta)) ** 2
    return LossOutput(loss, *_log_ratio_rewards(
        beta, policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps))


def cdpo_loss(
    policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
    chosen_lengths, rejected_lengths, *, beta, label_smoothing,
) -> LossOutput:
    """Conservative DPO: −(1−ε)·log σ(β·h) − ε·log σ(−β·h), ε = label_smoothing; summed log-probs."""
    h = _log_ratio_gap(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    loss = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    return LossOutput(loss, *_log_ratio_rewards(
        beta, policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps))


def robust_loss(
    policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
    chosen_lengths, rejected_lengths, *, beta, label_smoothing,
) -> LossOutput:
    """Robust DPO: [−(1−ε)·log σ(β·h) + ε·log σ(−β·h)] / (1−2ε), unbiased under label-flip rate ε < 0.5."""
    h = _log_ratio_gap(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    loss = (
        -(1 - label_smoothing) * F.logsigmoid(beta * h) + label_smoothing * F.logsigmoid(-beta * h)
    ) / (1 - 2 * label_smoothing)
    return LossOutput(loss, *_log_ratio_rewards(
        beta, policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps))


def hinge_loss(
    policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
    chosen_lengths, rejected_lengths, *, beta,
) -> LossOutput:
    """Hinge: max(0, 1 − β·h) on summed log-probs; zero once h ≥ 1/β."""
    h = _log_ratio_gap(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    loss = torch.relu(1 - beta * h)
    return LossOutput(loss, *_log_ratio_rewards(
        beta, policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps))


def simpo_loss(
    policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
    chosen_lengths, rejected_lengths, *, beta, gamma_beta_ratio,
) -> LossOutput:
    """SimPO: −log σ(β·((avg log π(y_w) − avg log π(y_l)) − gamma_beta_ratio)).

    Reference-free: the reference log-probs are ignored (may be None). Rewards are β·(average log-prob).
    """
    chosen_avg = _per_token(policy_chosen_logps, chosen_lengths)
    rejected_avg = _per_token(policy_rejected_logps, rejected_lengths)
    loss = -F.logsigmoid(beta * ((chosen_avg - rejected_avg) - gamma_beta_ratio))
    return LossOutput(loss, beta * chosen_avg.detach(), beta * rejected_avg.detach())


def dpop_loss(
    policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
    chosen_lengths, rejected_lengths, *, beta, dpop_lambda,
) -> LossOutput:
    """DPOP: −log σ(β·(h − λ·max(0, log π_ref(y_w) − log π(y_w)))), summed log-probs.

    The penalty sits inside the sigmoid and is scaled by β (subtracting it outside is the known sign trap).
    It is zero while the policy keeps log π(y_w) ≥ log π_ref(y_w), so DPOP then equals DPO.
    """
    h = _log_ratio_gap(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    chosen_drop = torch.relu(ref_chosen_logps.detach() - policy_chosen_logps)
    loss = -F.logsigmoid(beta * (h - dpop_lambda * chosen_drop))
    return LossOutput(loss, *_log_ratio_rewards(
        beta, policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps))


class AlphaDPOLoss:
    """α-DPO, exactly as `junkangwu/alpha-DPO` codes it (methods §2), on per-token-averaged log-probs.

        u   = avg log π(y_w) − avg log π(y_l)                 (policy)
        g   = u − [avg log π_ref(y_w) − avg log π_ref(y_l)]   (policy-vs-reference gap, no grad)
        μ  ← m·μ + (1−m)·mean(g);   s ← m·s + (1−m)·std(g)    (EMA, updated BEFORE use; μ₀ = s₀ = 0)
        z   = (g − μ) / s
        loss = −log σ(β·(u − sg[α·z + gamma_beta_ratio]))

    Rewards logged as in the original: β·(avg log π(y) − α·(avg log π(y) − avg log π_ref(y))).

    Like the original, the statistics are updated on every call, evaluation included. Differences, all for
    degenerate batches the original turns into NaN:
    - std(g) is `Tensor.std()` (unbiased), which is NaN for a single pair; a batch of one pair updates μ only and
      leaves s as it was. So with one pair per batch, s stays 0 and α-DPO reduces to SimPO (see next point).
    - While s is 0 (no spread seen yet: the first batch of one pair, or g identical across the batch, as at step 0
      when the policy still equals the reference), z is taken as 0, so the margin is just gamma_beta_ratio.
    Statistics are per process (the original all-gathers g across data-parallel ranks).
    As in the original, s₀ = 0 makes the first step's s = (1−m)·std(g), which inflates z about 10×.
    """

    def __init__(self, *, beta: float, gamma_beta_ratio: float, alpha: float, momentum: float):
        self.beta = beta
        self.gamma_beta_ratio = gamma_beta_ratio
        self.alpha = alpha
        self.momentum = momentum
        self.gap_mean = 0.0
        self.gap_std = 0.0

    def __call__(
        self, policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
        chosen_lengths, rejected_lengths,
    ) -> LossOutput:
        policy_chosen_avg = _per_token(policy_chosen_logps, chosen_lengths)
        policy_rejected_avg = _per_token(policy_rejected_logps, rejected_lengths)
        ref_chosen_avg = _per_token(ref_chosen_logps.detach(), chosen_lengths)
        ref_rejected_avg = _per_token(ref_rejected_logps.detach(), rejected_lengths)

        policy_gap = policy_chosen_avg - policy_rejected_avg
        gap = (policy_gap - (ref_chosen_avg - ref_rejected_avg)).detach()
        self._update_gap_stats(gap)
        if self.gap_std > 0:
            z = (gap - self.gap_mean) / self.gap_std
        else:
            z = torch.zeros_like(gap)
        margin = (self.alpha * z + self.gamma_beta_ratio).detach()
        loss = -F.logsigmoid(self.beta * (policy_gap - margin))

        chosen_rewards = self.beta * (policy_chosen_avg - self.alpha * (policy_chosen_avg - ref_chosen_avg)).detach()
        rejected_rewards = self.beta * (
            policy_rejected_avg - self.alpha * (policy_rejected_avg - ref_rejected_avg)
        ).detach()
        return LossOutput(loss, chosen_rewards, rejected_rewards)

    @torch.no_grad()
    def _update_gap_stats(self, gap: Tensor) -> None:
        keep = self.momentum
        self.gap_mean = keep * self.gap_mean + (1 - keep) * gap.mean().item()
        if gap.numel() > 1:  # the unbiased std of one value is NaN: keep the previous spread
            self.gap_std = keep * self.gap_std + (1 - keep) * gap.std().item()

    def state_dict(self) -> dict[str, float]:
        """The EMA statistics, to save with a checkpoint (plain floats, JSON-safe)."""
        return {"gap_mean": self.gap_mean, "gap_std": self.gap_std}

    def load_state_dict(self, state: dict[str, float]) -> None:
        """Restore the EMA statistics saved by `state_dict()` (on resume)."""
        self.gap_mean = float(state["gap_mean"])
        self.gap_std = float(state["gap_std"])


def weighted_batch_loss(loss: Tensor, weight: Tensor | None = None) -> Tensor:
    """One batch loss from per-pair losses ``loss`` (B,): the mean, or with ``weight`` (B,) ``Σ wᵢ·lᵢ / Σ wᵢ``.

    Normalising by the batch's weight sum keeps the loss scale (and so the learning rate's meaning) independent of
    the weights' scale; only their ratios within the batch matter. Weights are constants (detached); a batch whose
    weights are all zero contributes a zero loss with zero gradient rather than 0/0.
    """
    if weight is None:
        return loss.mean()
    weight = weight.detach().to(loss.dtype)
    return (loss * weight).sum() / weight.sum().clamp(min=torch.finfo(loss.dtype).tiny)


def madpo_weights(reward_margin, *, strength: float = 0.5, scale: float = 1.0) -> Tensor:
    """MADPO-style per-pair weights from a reward-model margin: ``1 − strength·tanh(margin / (2·scale))``, (B,).

    Continuous and positive for ``0 <= strength < 1``, in ``(1 − strength, 1 + strength)``: pairs the reward model
    finds easy (large margin, in its logits) are damped, hard or mislabelled-looking ones (small or negative margin)
    amplified, and a zero margin keeps weight 1. This has the shape Rho (arXiv 2510.05342) describes; the paper's
    exact weight function was not available here, so check it before quoting MADPO numbers. NaN margins give weight 1.
    """
    margin = torch.from_numpy(np.array(reward_margin, dtype=np.float64))  # a copy: inputs may be read-only
    if not 0 <= strength < 1:
        raise ConfigError("madpo_strength", f"must be in [0, 1), got {strength!r}")
    if not scale > 0:
        raise ConfigError("madpo_scale", f"must be > 0, got {scale!r}")
    weights = 1.0 - strength * torch.tanh(margin / (2.0 * scale))
    return torch.where(torch.isnan(margin), torch.ones_like(weights), weights)


_LOSS_FUNCTIONS: dict[str, Callable[..., LossOutput]] = {
    "dpo": dpo_loss,
    "ipo": ipo_loss,
    "cdpo": cdpo_loss,
    "robust": robust_loss,
    "hinge": hinge_loss,
    "simpo": simpo_loss,
    "dpop": dpop_loss,
    "alpha_dpo": AlphaDPOLoss,
}


def make_loss(name: str, **hparams: float) -> Callable[..., LossOutput]:
    """The loss `name` with `hparams` over LOSS_DEFAULTS[name]; raises ConfigError naming a bad field.

    Returns a fresh AlphaDPOLoss for "alpha_dpo" (stateful) and a functools.partial otherwise.
    """
    resolved = resolved_loss_params(name, hparams)
    if name == "alpha_dpo":
        return AlphaDPOLoss(**resolved)
    return functools.partial(_LOSS_FUNCTIONS[name], **resolved)


def uses_reference(name: str) -> bool:
    """Whether the loss needs reference log-probs; SimPO does not, so the trainer can skip computing them."""
    check_loss_name(name)
    return name != "simpo"


def is_stateful(loss_fn: Callable[..., LossOutput]) -> bool:
    """Whether `loss_fn` carries state to save (`loss_fn.state_dict()`) and restore on resume."""
    return isinstance(loss_fn, AlphaDPOLoss)
