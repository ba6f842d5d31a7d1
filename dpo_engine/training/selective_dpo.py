"""Selective DPO's learning order (Gao et al., ICML 2025): per-pair validation losses from fold proxies.

For each seed, the pairs are split into K folds (`fold_assignment`, re-drawn per seed as ``run_half.py`` does);
proxy (seed, j) is a LoRA DPO run on every fold but j, and each pair of fold j gets its DPO validation loss
``-log σ(β·h)`` under that proxy (h: its implicit margin against the proxy's base, nats). The learning order is
the mean over seeds (`learning_order`); `select_pairs(table, "selective_dpo", {"tau": ...})` then keeps the
easiest ``1 - tau``, easy to hard, and ``curriculum_column: learning_order`` trains them in that order.

Differences from the reference, on purpose or for now: the proxies run in this process through `warmup_proxy`
(not yet through the runs queue: a follow-up once `dpo_engine.runs` is split), and each is scored once, at the end
of training, where the reference averages five evaluations during training.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from dpo_engine.margins.scoring import implicit_margins
from dpo_engine.selection.hypotheses import fold_assignment, learning_order
from dpo_engine.training.warmup import warmup_proxy

SEEDS = (41, 42, 43)  # the reference's three seeds (curriculum-lens-*.sh)


def validation_losses(implicit_margin, beta: float) -> np.ndarray:
    """DPO loss of each pair, ``-log σ(β·h) = log(1 + exp(-β·h))`` in nats, ``(n_pairs,)``; NaN stays NaN."""
    return np.logaddexp(0.0, -beta * np.asarray(implicit_margin, dtype=np.float64))


def selective_dpo_order(
    pairs: pd.DataFrame,
    base_model: str,
    out_dir: str | Path,
    *,
    n_folds: int = 2,
    seeds: tuple[int, ...] = SEEDS,
    beta: float = 0.1,
    scoring: dict | None = None,
    **train_overrides,
) -> pd.DataFrame:
    """``pair_id``, one ``val_loss_seed<s>`` column per seed and ``learning_order`` (their mean), in ``pairs`` order.

    Proxy (s, j) trains into ``out_dir/seed-<s>/fold-<j>`` for one epoch by default (``train_overrides`` are
    `TrainConfig` fields, e.g. ``max_steps``; ``loss_params`` default to ``{"beta": beta}``). ``scoring`` holds
    keyword arguments for `implicit_margins`.
    """
    overrides = {"num_epochs": 1, "loss_params": {"beta": beta}, **train_overrides}
    table = pd.DataFrame({"pair_id": pairs.pair_id.to_numpy()})
    for seed in seeds:
        folds = fold_assignment(len(pairs), n_folds, seed)
        losses = np.full(len(pairs), np.nan)
        for fold in range(n_folds):
            training = pairs.iloc[np.flatnonzero(folds != fold)]
            adapter = warmup_proxy(training, base_model, Path(out_dir) / f"seed-{seed}" / f"fold-{fold}",
                                   seed_size=len(training), seed=seed, **overrides)
            held_out = np.flatnonzero(folds == fold)
            held_out_pairs = pairs.iloc[held_out]
            margins = implicit_margins(held_out_pairs, str(adapter), **(scoring or {})).set_index("pair_id")
            losses[held_out] = validation_losses(margins.implicit_margin.loc[held_out_pairs.pair_id].to_numpy(), beta)
        table[f"val_loss_seed{seed}"] = losses
    table["learning_order"] = learning_order(table.filter(like="val_loss_").to_numpy())
    return table
