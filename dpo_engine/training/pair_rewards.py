"""Scoring passes of a run outside the Trainer: the reference before training, per-pair rewards after it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from dpo_engine.margins.scoring import implicit_margin_table
from dpo_engine.models.loading import resolve_model
from dpo_engine.models.logp_cache import cached_logps, logps_cache_key, logps_dir
from dpo_engine.models.logps import pair_logps
from dpo_engine.models.tokenization import EncodedPair
from dpo_engine.training.config import TrainConfig


def training_autocast(config: TrainConfig, device: str):
    """The Trainer's bf16 autocast, for passes outside the Trainer (reference, final scoring)."""
    return torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=config.precision == "bf16")


def reference_table(model, tokenizer, pairs: pd.DataFrame, encoded: list[EncodedPair], config: TrainConfig,
                    device: str) -> pd.DataFrame:
    """Reference log-probs of every pair (the model before training), in ``pairs`` order; cached on disk by the
    log-prob cache service, on the trainer's own encodings."""
    # bf16 runs score under the training step's autocast, which differs from scoring's plain bf16: separate keys.
    dtype_key = "fp32" if config.precision == "fp32" else f"bf16-autocast-{'full' if config.full_finetune else 'lora'}"
    key = logps_cache_key(pairs, resolve_model(config.model), None, config.max_length, config.max_prompt_length,
                          dtype_key)
    with training_autocast(config, device):
        return cached_logps(model, encoded, pairs.pair_id.tolist(), logps_dir(key), pad_token_id=tokenizer.pad_token_id)


def _batched_logps(model, encoded: list[EncodedPair], pad_token_id: int, batch_size: int) -> dict[str, np.ndarray]:
    """``pair_logps`` over all pairs in inference mode, concatenated in order."""
    parts: dict[str, list] = {}
    model.eval()
    for start in range(0, len(encoded), batch_size):
        with torch.inference_mode():
            out = pair_logps(model, encoded[start : start + batch_size], pad_token_id)
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
            ref_chosen = ref_rejected = None
    reference_logps = None if ref_chosen is None else {"chosen_logps": ref_chosen, "rejected_logps": ref_rejected}
    return implicit_margin_table(pairs.pair_id.to_numpy(), policy, reference_logps)
