"""Selective DPO's learning order (Gao et al., ICML 2025): per-pair validation losses from fold proxies.

For each seed, the pairs are split into K folds (`fold_assignment`, re-drawn per seed as ``run_half.py`` does);
proxy (seed, j) is a LoRA DPO run on every fold but j, and each pair of fold j gets its DPO validation loss
``-log σ(β·h)`` under that proxy (h: its implicit margin against the proxy's base, nats). The learning order is
the mean over seeds (`learning_order`); `select_pairs(table, "selective_dpo", {"tau": ...})` then keeps the
easiest ``1 - tau``, easy to hard, and ``curriculum_column: learning_order`` trains them in that order.

Two ways to train the proxies, one way to score them: `selective_dpo_order` trains them in this process through
`warmup_proxy`; `dpo_engine.runs.fold_proxies` launches them as runs through the runs queue (``dpo-engine score
--implicit selective``). Both plan with `fold_proxies` and score with `held_out_margins` and
`learning_order_table`. Each proxy is scored once, at the end of training, where the reference averages five
evaluations during training.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from dpo_engine.margins.scoring import Progress, implicit_margins
from dpo_engine.margins.table import FOLD_COLUMN
from dpo_engine.selection.hypotheses import fold_assignment, learning_order
from dpo_engine.training.warmup import warmup_proxy

SEEDS = (41, 42, 43)  # the reference's three seeds (curriculum-lens-*.sh)
SEED_COLUMN = "proxy_seed"  # in `held_out_margins`: the seed of the proxy that scored the row


@dataclass(frozen=True)
class FoldProxy:
    """Proxy (seed, fold): trains on ``training_rows`` (every fold but ``fold``), scores ``held_out_rows``.

    Rows are int64 positions in the pairs table.
    """

    seed: int
    fold: int
    training_rows: np.ndarray
    held_out_rows: np.ndarray

    @property
    def name(self) -> str:
        """``seed-41/fold-0``: the proxy's directory under a work directory."""
        return f"seed-{self.seed}/fold-{self.fold}"


def fold_proxies(n_pairs: int, n_folds: int = 2, seeds: Sequence[int] = SEEDS) -> list[FoldProxy]:
    """The ``len(seeds) * n_folds`` proxies, seed-major; each seed's folds are `fold_assignment` under that seed."""
    proxies = []
    for seed in seeds:
        folds = fold_assignment(n_pairs, n_folds, seed)
        proxies.extend(FoldProxy(seed, fold, np.flatnonzero(folds != fold), np.flatnonzero(folds == fold))
                       for fold in range(n_folds))
    return proxies


def validation_losses(implicit_margin, beta: float) -> np.ndarray:
    """DPO loss of each pair, ``-log σ(β·h) = log(1 + exp(-β·h))`` in nats, ``(n_pairs,)``; NaN stays NaN."""
    return np.logaddexp(0.0, -beta * np.asarray(implicit_margin, dtype=np.float64))


def held_out_margins(pairs: pd.DataFrame, proxies: Sequence[FoldProxy], adapters: Sequence[str | Path], *,
                     scoring: dict | None = None, progress: Progress | None = None) -> pd.DataFrame:
    """Each proxy's implicit margins on its held-out pairs: `implicit_margins`' columns plus ``proxy_seed`` and
    ``crossfit_fold`` (the held-out fold), ``len(seeds) * n_pairs`` rows. ``adapters[i]`` is proxy ``i``'s adapter;
    ``progress(done, total)`` counts scored pairs."""
    parts, done, total = [], 0, sum(len(proxy.held_out_rows) for proxy in proxies)
    for proxy, adapter in zip(proxies, adapters, strict=True):
        def report(step: int, steps: int, offset: int = done) -> None:
            if progress is not None:
                progress(offset + step // 2, total)  # implicit_margins counts both passes

        part = implicit_margins(pairs.iloc[proxy.held_out_rows], str(adapter), progress=report, **(scoring or {}))
        parts.append(part.assign(**{SEED_COLUMN: proxy.seed, FOLD_COLUMN: proxy.fold}))
        done += len(proxy.held_out_rows)
    margins = pd.concat(parts, ignore_index=True)
    margins.attrs["dtype"] = parts[0].attrs.get("dtype")  # the precision `implicit_margins` resolved
    return margins


def learning_order_table(pair_ids: Sequence[str], margins: pd.DataFrame, beta: float) -> pd.DataFrame:
    """``pair_id``, one ``val_loss_seed<s>`` column per seed of ``margins`` (a `held_out_margins` table) and
    ``learning_order`` (their mean, nats), rows in ``pair_ids`` order."""
    table = pd.DataFrame({"pair_id": np.asarray(pair_ids)})
    for seed, rows in margins.groupby(SEED_COLUMN, sort=False):
        losses = pd.Series(validation_losses(rows.implicit_margin, beta), index=rows.pair_id.to_numpy())
        table[f"val_loss_seed{seed}"] = table.pair_id.map(losses).to_numpy(dtype=np.float64)
    table["learning_order"] = learning_order(table.filter(like="val_loss_").to_numpy())
    return table


def first_seed_margins(margins: pd.DataFrame) -> pd.DataFrame:
    """The implicit margins a margins table shows for Selective DPO: the first seed's proxies, every pair out of
    fold (its ``crossfit_fold`` is the fold its proxy held out). Later seeds only enter ``learning_order``."""
    first = margins[SEED_COLUMN].iloc[0]
    return margins[margins[SEED_COLUMN] == first].drop(columns=SEED_COLUMN).reset_index(drop=True)


def proxy_overrides(beta: float, **train_overrides) -> dict:
    """`TrainConfig` fields of every fold proxy: one epoch of DPO at ``beta`` (the reference's), then overrides."""
    return {"num_epochs": 1, "loss": "dpo", "loss_params": {"beta": beta}, **train_overrides}


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

    Proxy (s, j) trains in this process into ``out_dir/seed-<s>/fold-<j>`` (``train_overrides`` are `TrainConfig`
    fields, e.g. ``max_steps``; see `proxy_overrides`). ``scoring`` holds keyword arguments for `implicit_margins`.
    """
    proxies = fold_proxies(len(pairs), n_folds, seeds)
    overrides = proxy_overrides(beta, **train_overrides)
    adapters = [warmup_proxy(pairs.iloc[proxy.training_rows], base_model, Path(out_dir) / proxy.name,
                             seed_size=len(proxy.training_rows), seed=proxy.seed, **overrides) for proxy in proxies]
    margins = held_out_margins(pairs, proxies, adapters, scoring=scoring)
    return learning_order_table(pairs.pair_id.to_numpy(), margins, beta)
