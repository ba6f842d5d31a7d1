"""Curriculum order: train easy to hard by a per-pair score instead of shuffling (Selective DPO, MixDPO).

The trainer puts the subset in this order and reads it sequentially; with more than one epoch every epoch repeats
the same order, as Selective DPO's ``SequentialSampler`` does.
"""

from __future__ import annotations

import numpy as np


def curriculum_order(score, *, descending: bool = False) -> np.ndarray:
    """Row order, ``(n_pairs,)`` int64: ascending ``score`` (easy first when lower is easier, e.g. a validation
    loss), or descending (e.g. a reward margin, where larger is easier). Stable, so ties keep the subset's order;
    pairs without a score (NaN) go last, in their order.
    """
    values = np.asarray(score, dtype=np.float64)
    if values.ndim != 1:
        raise ValueError(f"expected a score of shape (n_pairs,), got shape {values.shape}")
    order = np.argsort(-values if descending else values, kind="stable")  # NaN sorts last both ways
    return order.astype(np.int64)
