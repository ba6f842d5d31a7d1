"""Per-pair selection signals: external and implicit margins, their DM/BeeS fusions, and two other metrics.

Formulas follow docs/methods.md: §1.3–§1.5 (Deng et al.: external margin, implicit margin, DM-ADD,
DM-MUL and its data-driven upper bound, read from the official ``m_sampler.py``), §1.5 BeeS (the K-source form
of DM-MUL), §6 (Huang et al.: alignment potential) and §7 (Qi et al.: difficulty gap).

Every function takes 1-D array-likes of shape ``(n_pairs,)`` (numpy arrays, pandas Series, lists) and returns a
numpy float64 array: these are selection signals computed from tables, not training losses.

Units: reward-model scores and their differences are raw logits; log-probs are summed over response tokens in
nats (``avg`` in a name means per-token mean); probabilities are in [0, 1].

NaN: the external margin turns NaN into 0, as the official code does. Everywhere else NaN means "this pair has
no value for this source": it propagates to the pair's result (so `dpo_engine.selection` never picks it), and
data-driven bounds and z-scores are computed over the pairs that do have values.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.special import expit  # 1 / (1 + exp(-x)) without overflow; NaN stays NaN
import pandas as pd

from dpo_engine.errors import UserError

# DM-MUL constants from the official m_sampler.py (methods.md §1.5).
_LOWER_BOUND = -2.0
_EXTERNAL_START_DIVISOR = 1.5
_IMPLICIT_START_DIVISOR = 2.0
_MIN_TAIL = 30


# ---- array plumbing -------------------------------------------------------------------------------------------


def _as_array(values) -> np.ndarray:
    """A 1-D float64 numpy view or copy of anything array-like (numpy array, pandas Series, list, CPU tensor)."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"expected a 1-D array of shape (n_pairs,), got shape {array.shape}")
    return array


def _as_arrays(*values) -> list[np.ndarray]:
    """`_as_array` of each argument, checking that they all have the same length."""
    arrays = [_as_array(value) for value in values]
    lengths = {array.size for array in arrays}
    if len(lengths) > 1:
        raise ValueError(f"inputs must have the same length (n_pairs,), got lengths {[a.size for a in arrays]}")
    return arrays


def _zscore(values: np.ndarray) -> np.ndarray:
    """(x - mean) / std over the non-NaN values, population std (``np.std``'s ddof=0, as Huang et al.'s code).

    A constant column carries no ranking information, so it maps to 0 instead of 0/0.
    """
    std = np.nanstd(values)
    if not std > 0:
        return np.where(np.isnan(values), np.nan, 0.0)
    return (values - np.nanmean(values)) / std


# ---- margins ----------------------------------------------------------------------------------------------------


def external_margin(score_chosen, score_rejected):
    """Reward-model margin ``r(x, y_w) - r(x, y_l)`` in raw logits (methods.md §1.3), shape ``(n_pairs,)``.

    NaN is set to 0, as the official ``m_sampler.py`` does: a pair the reward model could not score counts as a
    tie, not as missing. A dataset with no scores at all should therefore not be passed through here.
    """
    chosen, rejected = _as_arrays(score_chosen, score_rejected)
    difference = chosen - rejected
    # np.where rather than np.nan_to_num: the latter would also turn +-inf into +-1.8e308.
    return np.where(np.isnan(difference), 0.0, difference)


def implicit_margin(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps):
    """DM implicit margin ``(pc - pr) - (rc - rr)`` in nats, no beta (methods.md §1.4), shape ``(n_pairs,)``.

    All four inputs are log-probs summed over response tokens: the policy is the proxy after its short DPO run on
    the seed subset, the reference is the same proxy before it. Positive means the DPO step moved the policy
    towards the chosen response relative to the rejected one. NaN (a pair not scored yet) stays NaN.
    """
    pc, pr, rc, rr = _as_arrays(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    return (pc - pr) - (rc - rr)


# ---- DM / BeeS fusion -------------------------------------------------------------------------------------------


def dm_add(external, implicit):
    """DM-ADD: ``external + implicit`` on the raw margins, no normalisation (methods.md §1.5), ``(n_pairs,)``.

    Mixed units (logits + nats) exactly as in the official code.
    """
    ex, im = _as_arrays(external, implicit)
    return ex + im


def dynamic_upper_bound(m, start_divisor: float, lower: float = _LOWER_BOUND, min_tail: int = _MIN_TAIL) -> float:
    """The data-driven clip ceiling U of DM-MUL, as the official ``m_sampler.py`` loop computes it (methods.md §1.5).

    With ``max = max(m)`` and ``tail(U) = #{i : U < m_i <= max}``, the official loop is::

        U = int(max / start_divisor)      # int() truncates toward zero
        while True:
            if tail(U) < max - U or tail(U) < min_tail or U > max:
                break
            U += 1

    so U is the first integer from the start value whose tail is thin (fewer than ``min_tail`` pairs, or fewer
    pairs than margin units above U), or the first integer above the maximum. The official divisors are 1.5 for
    the external margin and 2.0 for the implicit one. Counting is done on a sorted copy (a binary search per
    step) rather than a full scan per step; the result is the same.

    Args:
        m: margins, shape ``(n_pairs,)``; NaN and +-inf are ignored.
        start_divisor: the loop starts at ``int(max / start_divisor)``.
        lower: the clip floor L the bound will be used with. Only used as a guard that is not in the official
            code: when every margin is far below L the loop can stop at U <= L, where the official code divides
            by zero; U = L + 1 is returned instead, and every pair then maps to probability 0.
        min_tail: the tail size below which the loop stops (30 in the official code).

    Returns:
        U, a float in the margin's units.
    """
    values = _as_array(m)
    values = np.sort(values[np.isfinite(values)])
    if values.size == 0:
        raise UserError("cannot set a margin upper bound: the margin has no finite values")
    maximum = float(values[-1])
    upper = int(maximum / start_divisor)
    while True:
        tail = values.size - int(np.searchsorted(values, upper, side="right"))
        if tail < maximum - upper or tail < min_tail or upper > maximum:
            break
        upper += 1
    if upper <= lower:
        return float(lower + 1.0)
    return float(upper)


def margin_to_prob(m, lower: float = _LOWER_BOUND, upper: float | None = None):
    """``(clip(m, L, U) - L) / (U - L)``: a margin as a probability in [0, 1] (methods.md §1.5), ``(n_pairs,)``.

    ``upper=None`` uses the largest finite margin. The official code divides by the largest clipped value
    instead of ``U - L``; the two agree whenever some pair reaches U, which the dynamic bound nearly always
    ensures. NaN stays NaN.
    """
    values = _as_array(m)
    if upper is None:
        finite = values[np.isfinite(values)]
        if finite.size == 0:
            raise UserError("cannot map the margin to probabilities: it has no finite values")
        upper = float(finite.max())
    if not upper > lower:
        raise UserError(f"margin upper bound ({upper}) must be greater than the lower bound ({lower})")
    return (np.clip(values, lower, upper) - lower) / (upper - lower)


def bayes_aggregate(probs: Sequence, eps: float = 1e-6):
    """Naive-Bayes fusion ``sigmoid(sum_i logit(clip(p_i, eps, 1 - eps)))`` of K probabilities (methods.md §1.5).

    Equal to ``prod p / (prod p + prod (1 - p))`` for p strictly inside (0, 1), but never 0/0: one source at 0
    and another at 1 give 0.5 instead of the official code's NaN (which ``np.argsort`` would rank first).

    Args:
        probs: K arrays of shape ``(n_pairs,)`` with values in [0, 1].
        eps: clip distance from 0 and 1; limits any one source's log-odds to about ``log(1 / eps)``.

    Returns:
        ``(n_pairs,)`` probabilities, the kind of ``probs[0]``. NaN in any source gives NaN for that pair.
    """
    if len(probs) == 0:
        raise ValueError("bayes_aggregate needs at least one probability array")
    arrays = [np.clip(p, eps, 1.0 - eps) for p in _as_arrays(*probs)]
    total_log_odds = sum(np.log(p) - np.log1p(-p) for p in arrays)
    return expit(total_log_odds)


def bees(margins: Sequence, lowers: Sequence[float] | None = None, uppers: Sequence[float | None] | None = None):
    """BeeS: map each of K margins to a probability and fuse them with `bayes_aggregate` (methods.md §1.5).

    Args:
        margins: K arrays of shape ``(n_pairs,)``, each in its own units.
        lowers: clip floor per source; default -2 for every source (the DM value).
        uppers: clip ceiling per source; None (or a None entry) means `dynamic_upper_bound` with start divisor
            2.0. The v3/v4 papers' bound rule was not retrievable (methods.md §1.12), and the sources here are
            unnamed, so every source gets the official implicit-margin divisor; DM-MUL's external margin uses 1.5
            (see `dm_mul`).

    Returns:
        ``(n_pairs,)`` fused probabilities, the kind of ``margins[0]``.
    """
    arrays = _as_arrays(*margins)
    lowers = [_LOWER_BOUND] * len(arrays) if lowers is None else list(lowers)
    uppers = [None] * len(arrays) if uppers is None else list(uppers)
    if not len(lowers) == len(uppers) == len(arrays):
        raise ValueError(f"need one lower and one upper bound per margin source ({len(arrays)})")
    probs = []
    for values, lower, upper in zip(arrays, lowers, uppers):
        if upper is None:
            upper = dynamic_upper_bound(values, _IMPLICIT_START_DIVISOR, lower)
        probs.append(margin_to_prob(values, lower, upper))
    return bayes_aggregate(probs)


def dm_mul(external, implicit, lower: float = _LOWER_BOUND, upper_external: float | None = None,
           upper_implicit: float | None = None):
    """DM-MUL: `bees` of the two DM margins with the official bounds (methods.md §1.5), ``(n_pairs,)`` in [0, 1].

    Bounds default to `dynamic_upper_bound` with start divisor 1.5 for the external margin and 2.0 for the
    implicit one. Never NaN for finite inputs, including a pair at probability 0 on one source and 1 on the other.
    """
    ex, im = _as_arrays(external, implicit)
    if upper_external is None:
        upper_external = dynamic_upper_bound(ex, _EXTERNAL_START_DIVISOR, lower)
    if upper_implicit is None:
        upper_implicit = dynamic_upper_bound(im, _IMPLICIT_START_DIVISOR, lower)
    fused = bees([ex, im], lowers=[lower, lower], uppers=[upper_external, upper_implicit])
    return fused


# ---- other selection metrics ------------------------------------------------------------------------------------


def alignment_potential(external, policy_avg_logp_chosen, policy_avg_logp_rejected, weight: float = 1.0):
    """Huang et al.'s M_AP = ``z(external) - weight * z(|avg_c - avg_r|)`` (methods.md §6), ``(n_pairs,)``.

    ``external`` is the reward-model margin (logits); the averages are per-token log-probs (nats per token) of the
    model about to be trained, with no reference. z is a dataset-wide z-score with population std. Higher is
    better: a clear external margin the model has not separated yet.
    """
    rm_margin, avg_chosen, avg_rejected = _as_arrays(external, policy_avg_logp_chosen, policy_avg_logp_rejected)
    potential = _zscore(rm_margin) - weight * _zscore(np.abs(avg_chosen - avg_rejected))
    return potential


def difficulty_gap(dpo_logp_chosen, dpo_logp_rejected, ref_logp_chosen, ref_logp_rejected, beta: float = 0.1):
    """Qi et al.'s DPO implicit reward gap ``beta * [(dc - rc) - (dr - rr)]`` (methods.md §7), ``(n_pairs,)``.

    Summed log-probs (nats) of a DPO-trained policy and its reference. Select **ascending** (smallest and negative
    gaps are the hardest pairs), e.g. ``selection.select_bottom_k(gap, frac=0.1)``.
    """
    dc, dr, rc, rr = _as_arrays(dpo_logp_chosen, dpo_logp_rejected, ref_logp_chosen, ref_logp_rejected)
    return beta * ((dc - rc) - (dr - rr))


# ---- margins table ----------------------------------------------------------------------------------------------


def fused_scores(table: pd.DataFrame) -> pd.DataFrame:
    """A copy of a margins table with ``dm_add``, ``dm_mul`` and ``bees`` columns (one row per pair).

    They are computed from ``external_margin`` and ``implicit_margin`` when both columns exist and have values;
    otherwise all three are NaN columns. ``bees`` here uses `bees`' default bounds (divisor 2.0 for both sources),
    so it differs from ``dm_mul`` only in the external margin's upper bound.
    """
    scored = table.copy()
    sources = ("external_margin", "implicit_margin")
    if all(column in table.columns and table[column].notna().any() for column in sources):
        external, implicit = (table[column].to_numpy(dtype=np.float64) for column in sources)
        scored["dm_add"] = dm_add(external, implicit)
        scored["dm_mul"] = dm_mul(external, implicit)
        scored["bees"] = bees([external, implicit])
    else:
        for column in ("dm_add", "dm_mul", "bees"):
            scored[column] = np.nan
    return scored
