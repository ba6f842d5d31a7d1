"""Smoothing of logged training curves, as W&B and TensorBoard do it: a debiased exponential moving average."""

from __future__ import annotations

import numpy as np


def ema(values: np.ndarray, weight: float) -> np.ndarray:
    """Debiased EMA of a 1-D series; ``weight`` in [0, 1) is the share of the past (0 = no smoothing).

    ``s_t = weight * s_{t-1} + (1 - weight) * x_t`` from ``s_{-1} = 0``, divided by ``1 - weight**(t+1)`` so the
    first points are not pulled towards zero. NaNs (steps where the metric was not logged) are skipped and stay
    NaN. Returns an array of the same shape (float64).
    """
    if not 0.0 <= weight < 1.0:
        raise ValueError(f"smoothing weight must be in [0, 1), got {weight}")
    values = np.asarray(values, dtype=float)
    smoothed = np.full(values.shape, np.nan)
    last, count = 0.0, 0
    for index, value in enumerate(values):
        if np.isnan(value):
            continue
        last = weight * last + (1.0 - weight) * value
        count += 1
        smoothed[index] = last / (1.0 - weight**count)
    return smoothed
