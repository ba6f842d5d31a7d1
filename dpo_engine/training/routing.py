"""Per-pair loss routing: weights (soft selection, MADPO) and MixDPO's SFT-or-preference choice per pair.

MixDPO (arXiv 2602.00954) trains the pairs whose margin is below a threshold with SFT on the chosen response and
the rest with the preference loss. Both parts are per pair, shape (B,), and are reduced together by
`dpo_engine.losses.functions.weighted_batch_loss`, so weights and routing combine.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from dpo_engine.losses.functions import weighted_batch_loss


@dataclass
class PairRouting:
    """What a batch's pairs get beyond the plain loss: ``weight`` (B,) float, ``use_sft`` (B,) bool; None for none."""

    weight: Tensor | None = None
    use_sft: Tensor | None = None

    @staticmethod
    def from_margins(margin, threshold: float) -> "PairRouting":
        """``use_sft`` for pairs whose margin is strictly below ``threshold`` (NaN: no margin, so no SFT)."""
        values = torch.as_tensor(np.asarray(margin, dtype=np.float64))
        return PairRouting(use_sft=values < threshold)  # NaN < x is False


def sft_losses(policy_chosen_logps: Tensor, chosen_lengths: Tensor) -> Tensor:
    """SFT loss of each chosen response: its negative log-likelihood per token (nats/token), (B,).

    Per token, as TRL's ``sft`` loss type, so it is on the scale of one token's cross-entropy whatever the length;
    an empty response counts as one token.
    """
    return -policy_chosen_logps / chosen_lengths.clamp(min=1)


def routed_batch_loss(preference_loss: Tensor, policy_chosen_logps: Tensor, chosen_lengths: Tensor,
                      routing: PairRouting) -> Tensor:
    """The batch loss: per pair the SFT loss where ``routing.use_sft``, else ``preference_loss``; then the
    (weighted) mean of `weighted_batch_loss`. With an empty routing this is ``preference_loss.mean()``.
    """
    per_pair = preference_loss
    if routing.use_sft is not None:
        use_sft = routing.use_sft.to(device=preference_loss.device, dtype=torch.bool)
        per_pair = torch.where(use_sft, sft_losses(policy_chosen_logps, chosen_lengths).to(per_pair.dtype), per_pair)
    weight = None if routing.weight is None else routing.weight.to(preference_loss.device)
    return weighted_batch_loss(per_pair, weight)
