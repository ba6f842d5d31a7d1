"""Scoring passes of a run outside the Trainer: the reference before training, per-pair rewards after it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from dpo_engine.margins import formulas as margins
from dpo_engine.models.loading import resolve_model
from dpo_engine.models.logps import policy_logps
from dpo_engine.models.tokenization import EncodedPair, collate
from dpo_engine.training.config import TrainConfig


def training_autocast(config: TrainConfig, device: str):
    """The Trainer's bf16 autocast, for passes outside the Trainer (reference, final scoring)."""
    return torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=config.precision == "bf16")


def reference_table(model, tokenizer, pairs: pd.DataFrame, config: TrainConfig, device: str) -> pd.DataFrame:
    """Reference log-probs of every pair (the model before training), in ``pairs`` order; cached on disk."""
    from dpo_engine.margins.scoring import logps_cache_key, score_logps

    # bf16 runs score under the training step's autocast, which differs from scoring's plain bf16: separate keys.
    dtype_key = "fp32" if config.precision == "fp32" else f"bf16-autocast-{'full' if config.full_finetune else 'lora'}"
    key = logps_cache_key(pairs, resolve_model(config.model), None, config.max_length, config.max_prompt_length,
                          dtype_key)
    with training_autocast(config, device):
        return score_logps(pairs, model, tokenizer, cache_key=key, batch_size=2 * config.batch_size,
                           max_length=config.max_length, max_prompt_length=config.max_prompt_length)


def _batched_logps(model, encoded: list[EncodedPair], pad_token_id: int, batch_size: int) -> dict[str, np.ndarray]:
    """``policy_logps`` over all pairs in inference mode, concatenated in order."""
    parts: dict[str, list] = {}
    model.eval()
    for start in range(0, len(encoded), batch_size):
        with torch.inference_mode():
            out = policy_logps(model, collate(encoded[start : start + batch_size], pad_token_id))
        for key, value in out.items():
            parts.setdefault(key, []).append(value.float().cpu().numpy())
    return {key: np.concatenate(values) for key, values in parts.items()}


def pair_rewards_table(model, ref_model, reference, tokenizer, pairs, encoded, config, device) -> pd.DataFrame:
    """Per pair: policy log-probs after training, reference log-probs and the implicit margin (nats, no beta).

    The reference is the precomputed table, else the adapter-disabled model (LoRA), else the frozen copy; with
    full fine-tuning of a reference-free loss and no precompute there is none, and those columns are NaN.
    """
    batch_size = 2 * config.batch_size
    with training_autocast(config, device):
        policy = _batched_logps(model, encoded, tokenizer.pad_token_id, batch_size)
        if reference is not None:
            ref_chosen, ref_rejected = reference.chosen_logps.to_numpy(), reference.rejected_logps.to_numpy()
        elif ref_model is not None or not config.full_finetune:
            if ref_model is not None:
                ref = _batched_logps(ref_model, encoded, tokenizer.pad_token_id, batch_size)
            else:
                with model.disable_adapter():
                    ref = _batched_logps(model, encoded, tokenizer.pad_token_id, batch_size)
            ref_chosen, ref_rejected = ref["chosen_logps"], ref["rejected_logps"]
        else:
            ref_chosen = ref_rejected = np.full(len(encoded), np.nan)
    table = pd.DataFrame({
        "pair_id": pairs.pair_id.to_numpy(),
        "policy_chosen_logps": policy["chosen_logps"],
        "policy_rejected_logps": policy["rejected_logps"],
        "ref_chosen_logps": np.asarray(ref_chosen, dtype=float),
        "ref_rejected_logps": np.asarray(ref_rejected, dtype=float),
        "chosen_tokens": policy["chosen_tokens"].astype(int),
        "rejected_tokens": policy["rejected_tokens"].astype(int),
    })
    table["implicit_margin"] = margins.implicit_margin(
        table.policy_chosen_logps.to_numpy(), table.policy_rejected_logps.to_numpy(),
        table.ref_chosen_logps.to_numpy(), table.ref_rejected_logps.to_numpy(),
    )
    return table
