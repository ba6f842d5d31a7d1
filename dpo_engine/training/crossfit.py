"""Cross-fitted implicit margins: K warm-up proxies on disjoint folds, each pair scored by one that never saw it.

DM's single warm-up proxy scores the pairs it trained on in-sample (their margins come out far larger; see
`dpo_engine.margins.table.mark_warmup`). Here the pairs are split into K folds (`fold_assignment`); proxy j is
DM's warm-up (`warmup_proxy`) on a seed subset drawn inside fold j, and scores the pairs of fold j + 1 (mod K).
Scoring is `dpo_engine.margins.scoring.implicit_margins`, unchanged. Cost: K warm-ups (each on a fold's seed
subset) and one scoring pass over every pair, against one warm-up and one pass for the plain proxy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from dpo_engine.errors import UserError
from dpo_engine.margins.scoring import Progress, implicit_margins
from dpo_engine.margins.table import FOLD_COLUMN, SCORER_COLUMN
from dpo_engine.selection.hypotheses import fold_assignment
from dpo_engine.training.warmup import warmup_proxy

__all__ = ["FOLD_COLUMN", "SCORER_COLUMN", "crossfit_implicit_margins"]


def crossfit_implicit_margins(
    pairs: pd.DataFrame,
    base_model: str,
    out_dir: str | Path,
    *,
    n_folds: int = 2,
    seed_size: int | None = None,
    seed: int = 42,
    scoring: dict | None = None,
    progress: Progress | None = None,
    **train_overrides,
) -> pd.DataFrame:
    """Out-of-fold implicit margins of every pair, rows in ``pairs`` order.

    Args:
        pairs: the dataset (``dpo_engine.data`` pairs, a ``pair_id`` column).
        base_model: the proxies' base model (``dpo_engine.models.resolve_model`` names).
        out_dir: proxy ``j`` trains into ``out_dir/fold-j`` (reused when its settings and seed pairs are unchanged,
            as `warmup_proxy` does).
        n_folds: K >= 2.
        seed_size: pairs per proxy; default ``min(2000, 10 %)`` of the whole dataset, drawn inside each fold.
        seed: the fold split and each proxy's seed subset.
        scoring: keyword arguments for `implicit_margins` (dtype, device, batch_size, max_length, ...).
        progress: ``progress(done, total)`` over the K scoring passes, counted in pairs.
        train_overrides: `TrainConfig` fields for the proxies, as for `warmup_proxy`.

    Returns:
        ``implicit_margins``' columns plus ``crossfit_fold`` and ``scored_by_fold`` (int), one row per pair.
    """
    folds = fold_assignment(len(pairs), n_folds, seed)
    seed_size = seed_size or max(2, min(2000, round(0.1 * len(pairs))))
    if seed_size > np.bincount(folds).min():
        raise UserError(f"seed_size {seed_size} is larger than the smallest of the {n_folds} folds; lower it or use fewer folds")
    parts, done = [], 0
    for fold in range(n_folds):
        adapter = warmup_proxy(pairs.iloc[np.flatnonzero(folds == fold)], base_model, Path(out_dir) / f"fold-{fold}",
                               seed_size=seed_size, seed=seed, **train_overrides)
        scored_rows = np.flatnonzero(folds == (fold + 1) % n_folds)

        def report(step: int, total: int, offset: int = done) -> None:
            if progress is not None:
                progress(offset + step // 2, len(pairs))  # implicit_margins counts both passes

        part = implicit_margins(pairs.iloc[scored_rows], str(adapter), progress=report, **(scoring or {}))
        parts.append(part.assign(**{FOLD_COLUMN: (fold + 1) % n_folds, SCORER_COLUMN: fold}))
        done += len(scored_rows)
    table = pd.concat(parts, ignore_index=True).set_index("pair_id").loc[pairs.pair_id.to_numpy()].reset_index()
    table.attrs["dtype"] = parts[0].attrs.get("dtype")  # the precision `implicit_margins` resolved
    return table
