"""``PreferenceTrainer``: plain ``transformers.Trainer`` with a preference loss; it overrides ``compute_loss`` only.

It scores the collated batch with ``dpo_engine.models.logps.policy_logps`` (the function behind the margins the
dashboard shows) and applies one of the losses of ``dpo_engine.losses``. Everything else (optimizer, scheduler,
gradient accumulation, clipping, checkpoints with optimizer/scheduler/RNG state, resume) is the Trainer's own.

The reference log-probs come, in order of preference, from the batch (precomputed before training), from the LoRA
model with its adapter disabled, or from a frozen copy of the initial model (full fine-tuning). This matches TRL's
``DPOTrainer`` (huggingface/trl 1.16, ``trl/trainer/dpo_trainer.py``: ``precompute_ref_log_probs`` and the
adapter-disabled reference of a PEFT model); ``tests/test_training.py`` checks the numbers against it.

Across processes (DDP) each rank holds an equal share of every batch and DDP averages the ranks' gradients, so a
batch mean per rank averages to the batch mean; weighted batches are normalised by the weight sum of the whole
batch instead of the rank's share (``_weight_share``), and the logged statistics are gathered from every rank.
"""

from __future__ import annotations

from typing import Callable

import torch
from transformers import Trainer

from dpo_engine.models.logps import policy_logps
from dpo_engine.training.callbacks import StepStats
from dpo_engine.training.routing import PairRouting, routed_batch_loss


class PreferenceTrainer(Trainer):
    """``transformers.Trainer`` with a preference loss. Overrides ``compute_loss`` only.

    Batches come from ``PairCollator``: ``2B`` left-padded rows (chosen then rejected) and, when precomputed,
    ``ref_chosen_logps`` / ``ref_rejected_logps``. Without them the reference is the adapter-disabled model (LoRA)
    or ``ref_model`` (full fine-tuning).
    """

    # compute_loss returns a mean over the batch's pairs, so the Trainer divides it by the accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(self, *args, loss_fn: Callable, needs_reference: bool, ref_model=None, step_stats: StepStats, **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_fn = loss_fn
        self.needs_reference = needs_reference
        self.ref_model = ref_model
        self.step_stats = step_stats

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        policy = policy_logps(model, inputs)
        ref_chosen, ref_rejected = self._reference_logps(model, inputs) if self.needs_reference else (None, None)
        output = self.loss_fn(
            policy["chosen_logps"], policy["rejected_logps"], ref_chosen, ref_rejected,
            policy["chosen_tokens"], policy["rejected_tokens"],
        )
        # Per-pair weights and MixDPO routing (dpo_engine.training.routing); without them this is the plain mean.
        routing = PairRouting(inputs.get("pair_weight"), inputs.get("use_sft"))
        loss = routed_batch_loss(output.loss, policy["chosen_logps"], policy["chosen_tokens"], routing)
        if routing.weight is not None and self.accelerator.num_processes > 1:
            loss = loss * self._weight_share(routing.weight.to(loss.device, loss.dtype))
        if model.training:
            self._record(policy, output, int(inputs["attention_mask"].sum()))
        return (loss, output) if return_outputs else loss

    def _weight_share(self, weight: torch.Tensor) -> torch.Tensor:
        """``N * Σ(rank's weights) / Σ(batch's weights)`` for ``N`` ranks: the factor that turns the rank's
        ``Σ w·l / Σ w`` into its part of the whole batch's, once DDP averages the ranks' gradients."""
        local = weight.sum()
        total = self.accelerator.reduce(local.detach().clone(), reduction="sum")
        return self.accelerator.num_processes * local / total.clamp(min=torch.finfo(weight.dtype).tiny)

    def _reference_logps(self, model, inputs) -> tuple[torch.Tensor, torch.Tensor]:
        if "ref_chosen_logps" in inputs:
            return inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
        # The policy's forward is wrapped in the mixed-precision autocast by accelerate; the reference gets the same.
        with torch.no_grad(), self.accelerator.autocast():
            if self.ref_model is not None:
                reference = policy_logps(self.ref_model, inputs)
            else:
                with self.accelerator.unwrap_model(model).disable_adapter():
                    reference = policy_logps(model, inputs)
        return reference["chosen_logps"], reference["rejected_logps"]

    def _record(self, policy: dict, output, tokens: int) -> None:
        """Batch means of what TRL's ``DPOTrainer`` logs (its ``rewards/*`` and ``logps/*`` metrics): rewards as the
        loss defines them, summed log-probs."""
        # (B, 4): rewards chosen, rejected, log-probs chosen, rejected; across processes, every rank's rows.
        per_pair = torch.stack([output.chosen_rewards.detach().float(), output.rejected_rewards.detach().float(),
                                policy["chosen_logps"].detach().float(), policy["rejected_logps"].detach().float()], 1)
        if self.accelerator.num_processes > 1:
            per_pair = self.accelerator.gather(per_pair)
            tokens = int(self.accelerator.gather(torch.tensor([tokens], device=per_pair.device)).sum())
        chosen_rewards, rejected_rewards, chosen_logps, rejected_logps = per_pair.unbind(1)
        self.step_stats.add(
            {
                "rewards/chosen": chosen_rewards.mean().item(),
                "rewards/rejected": rejected_rewards.mean().item(),
                "rewards/margins": (chosen_rewards - rejected_rewards).mean().item(),
                "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean().item(),
                "logps/chosen": chosen_logps.mean().item(),
                "logps/rejected": rejected_logps.mean().item(),
            },
            tokens,
        )
