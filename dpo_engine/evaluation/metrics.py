"""Win-rate metrics over per-prompt preferences (methods §8, AlpacaEval 2 conventions).

A preference ``p`` is one float per prompt in ``[0, 1]``: 1 = the candidate wins, 0.5 = tie, 0 = the baseline wins
(AlpacaEval's ``pref - 1`` with its ``pref`` in ``[1, 2]``). NaN marks a prompt whose judgement failed; every
function here skips NaN prompts and says how many it skipped.

Units: every ``*win_rate``, ``*standard_error``, CI bound and ``difference`` is in **percent / percentage points**
(0-100); preferences and predicted probabilities are fractions (0-1). Inputs are 1-D arrays of shape ``(n_prompts,)``.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy.special import expit  # 1 / (1 + exp(-x)) without overflow; NaN stays NaN
from sklearn.linear_model import LogisticRegression

ArrayLike = Sequence[float] | np.ndarray

# Inverse L2 strength for the length-controlled GLM: weak enough to leave realistic fits unchanged, strong enough
# to keep theta finite when every prompt is a win (the unpenalised MLE is then +infinity).
GLM_INVERSE_REGULARISATION = 100.0



def _lc_note(uses_length: bool, uses_difficulty: bool) -> str:
    """Say in words which GLM variant was fitted, for reports."""
    difficulty = (
        "with the given instruction-difficulty term"
        if uses_difficulty
        else "length_controlled_minimal-style (no instruction-difficulty term: AlpacaEval's file needs the Hub)"
    )
    parts = [
        f"GLM P = sigmoid(theta + phi*tanh(dlen/sd(dlen)) [+ psi*difficulty]), dlen = candidate - baseline length, "
        f"{difficulty}",
        "no gamed-baseline regularisation rows (AlpacaEval's df_gamed.csv is unavailable offline)",
        f"L2 logistic regression (C={GLM_INVERSE_REGULARISATION:g}) on soft labels, no cross-validation",
        "lc_standard_error = delta-method SE from the fit's sandwich covariance (includes fit uncertainty)",
    ]
    if not uses_length:
        parts.append("all length differences are equal, so the length term was dropped (phi = 0)")
    return "; ".join(parts) + "."


def _as_preferences(preferences: ArrayLike) -> np.ndarray:
    """Return ``preferences`` as a float array ``(n,)``, checking every non-NaN value lies in ``[0, 1]``."""
    values = np.asarray(preferences, dtype=float).reshape(-1)
    finite = values[~np.isnan(values)]
    if np.any((finite < 0) | (finite > 1)):
        raise ValueError("preferences must lie in [0, 1] (1 = candidate wins, 0.5 = tie, 0 = baseline wins)")
    return values


def win_rate(preferences: ArrayLike) -> dict:
    """AlpacaEval's ``describe_head2head`` on preferences in ``[0, 1]``, NaN (failed judgements) skipped.

    Returns a dict:
      ``win_rate``: 100 * mean(p), percent (a tie counts half);
      ``standard_error``: 100 * sd(p) / sqrt(n) with ``ddof=1``, percent — what AlpacaEval's pandas ``.sem()`` gives
      (NaN when ``n < 2``);
      ``n`` (judged prompts), ``n_failed`` (NaN prompts skipped), ``n_wins`` (p > 0.5), ``n_draws`` (p == 0.5),
      ``n_losses`` (p < 0.5);
      ``discrete_win_rate``: percent with each prompt binarised first, ``100 * (n_wins + n_draws / 2) / n``.
    All rates are NaN when no prompt was judged.
    """
    values = _as_preferences(preferences)
    judged = values[~np.isnan(values)]
    n = judged.size
    n_wins = int(np.sum(judged > 0.5))
    n_draws = int(np.sum(judged == 0.5))
    n_losses = int(np.sum(judged < 0.5))
    return {
        "win_rate": float(100 * judged.mean()) if n else math.nan,
        "standard_error": float(100 * judged.std(ddof=1) / math.sqrt(n)) if n >= 2 else math.nan,
        "n": n,
        "n_failed": int(values.size - n),
        "n_wins": n_wins,
        "n_draws": n_draws,
        "n_losses": n_losses,
        "discrete_win_rate": float(100 * (n_wins + n_draws / 2) / n) if n else math.nan,
    }


def _check_confidence(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def _percentile_interval(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    """The central ``confidence`` percentile interval of ``samples`` (any unit; returned unchanged)."""
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(samples, [tail, 100 - tail])
    return float(low), float(high)


def bootstrap_ci(
    preferences: ArrayLike, n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile-bootstrap CI of the win rate, in percent: ``(low, high)``.

    Prompts (NaN skipped) are resampled with replacement ``n_resamples`` times in one ``(n_resamples, n)`` index
    array. ``(nan, nan)`` when no prompt was judged.
    """
    _check_confidence(confidence)
    values = _as_preferences(preferences)
    judged = values[~np.isnan(values)]
    if judged.size == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    resampled = judged[rng.integers(0, judged.size, size=(n_resamples, judged.size))]
    return _percentile_interval(100 * resampled.mean(axis=1), confidence)


def paired_difference(
    pref_a: ArrayLike, pref_b: ArrayLike, n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0
) -> dict:
    """Compare two candidates judged against the same baseline on the same prompts (index i = same prompt).

    Uses the per-prompt differences ``d = p_A - p_B`` on prompts where both were judged. Returns a dict:
      ``difference``: 100 * mean(d), percentage points (A's win rate minus B's on those prompts);
      ``low``, ``high``: paired percentile-bootstrap CI of ``difference`` (points);
      ``p_value``: two-sided sign-flip (paired randomisation) test of "no difference", ``(1 + #extreme) / (1 + B)``;
      ``n``: prompts used.
    """
    _check_confidence(confidence)
    a, b = _as_preferences(pref_a), _as_preferences(pref_b)
    if a.shape != b.shape:
        raise ValueError(f"pref_a and pref_b must be judged on the same prompts, got shapes {a.shape} and {b.shape}")
    both_judged = ~np.isnan(a) & ~np.isnan(b)
    differences = a[both_judged] - b[both_judged]
    n = differences.size
    if n == 0:
        return {"difference": math.nan, "low": math.nan, "high": math.nan, "p_value": math.nan, "n": 0}

    rng = np.random.default_rng(seed)
    observed = differences.mean()
    resampled = differences[rng.integers(0, n, size=(n_resamples, n))].mean(axis=1)
    low, high = _percentile_interval(100 * resampled, confidence)
    signs = rng.choice(np.array([-1.0, 1.0]), size=(n_resamples, n))
    null_means = (signs * differences).mean(axis=1)
    n_extreme = int(np.sum(np.abs(null_means) >= abs(observed) - 1e-12))
    return {
        "difference": float(100 * observed),
        "low": low,
        "high": high,
        "p_value": (1 + n_extreme) / (1 + n_resamples),
        "n": n,
    }


def is_extreme_change(raw_win_rate: float, lc_win_rate: float) -> bool:
    """AlpacaEval's sanity check (``get_is_extreme_changes``): True when the LC win rate (percent) leaves
    ``[WR - max(10, WR/4), WR + max(10, (100 - WR)/4)]`` around the raw win rate — a sign the GLM fit failed."""
    too_small = lc_win_rate < min(raw_win_rate - raw_win_rate / 4, raw_win_rate - 10)
    too_large = lc_win_rate > max(raw_win_rate + (100 - raw_win_rate) / 4, raw_win_rate + 10)
    return bool(too_small or too_large)


def _fit_soft_logistic(features: np.ndarray, preferences: np.ndarray) -> np.ndarray:
    """Fit ``P(win) = sigmoid(features @ w)`` to soft labels, no intercept; return ``w`` of shape ``(k,)``.

    Each prompt appears twice, as ``y = 1`` with weight ``p`` and as ``y = 0`` with weight ``1 - p`` (AlpacaEval's
    duplication trick for probabilistic targets).
    """
    n = preferences.size
    model = LogisticRegression(C=GLM_INVERSE_REGULARISATION, fit_intercept=False, max_iter=1000)
    model.fit(
        np.vstack([features, features]),
        np.concatenate([np.ones(n), np.zeros(n)]),
        sample_weight=np.concatenate([preferences, 1 - preferences]),
    )
    return model.coef_[0]


def _sandwich_covariance(features: np.ndarray, preferences: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Heteroscedasticity-robust (HC1 sandwich) covariance ``(k, k)`` of the soft-label logistic coefficients.

    Bread = sum_i mu_i (1 - mu_i) x_i x_i^T, meat = sum_i (p_i - mu_i)^2 x_i x_i^T, scaled by n / (n - k). With a
    constant column only this reduces to the raw win rate's ``ddof=1`` standard error.
    """
    n, k = features.shape
    predicted = expit(features @ weights)
    bread = np.linalg.pinv((features * (predicted * (1 - predicted))[:, None]).T @ features)
    scores = features * (preferences - predicted)[:, None]
    return n / max(n - k, 1) * bread @ (scores.T @ scores) @ bread


def _aligned_column(name: str, values: ArrayLike, shape: tuple) -> np.ndarray:
    """``values`` as a float array, checked to have one entry per prompt."""
    column = np.asarray(values, dtype=float).reshape(-1)
    if column.shape != shape:
        raise ValueError(f"{name} has shape {column.shape}, preferences have {shape}")
    return column


def _lc_design(length_delta: np.ndarray, difficulty: np.ndarray | None) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Design matrices ``(n, k)`` of the LC GLM: ``(coefficient names, fit features, prediction features)``.

    Columns: a constant (theta); ``tanh(dlen / sd(dlen))`` (phi), 0 at prediction, left out when ``sd`` is 0;
    the instruction difficulty (psi) when given.
    """
    n = length_delta.size
    length_sd = length_delta.std(ddof=1) if n >= 2 else 0.0
    names, fit_columns, predict_columns = ["theta"], [np.ones(n)], [np.ones(n)]
    if length_sd > 0:
        names.append("phi")
        fit_columns.append(np.tanh(length_delta / length_sd))
        predict_columns.append(np.zeros(n))
    if difficulty is not None:
        names.append("psi")
        fit_columns.append(difficulty)
        predict_columns.append(difficulty)
    return names, np.column_stack(fit_columns), np.column_stack(predict_columns)


def length_controlled_win_rate(
    preferences: ArrayLike,
    candidate_lengths: ArrayLike,
    baseline_lengths: ArrayLike,
    instruction_difficulty: ArrayLike | None = None,
) -> dict:
    """Length-controlled win rate (methods §8, AlpacaEval ``length_controlled_v1`` GLM, minimal variant by default).

    Fits ``P(candidate wins | x) = sigmoid(theta + phi * tanh(dlen_x / sd(dlen)) [+ psi * difficulty_x])`` with
    ``dlen = candidate_lengths - baseline_lengths`` (characters in AlpacaEval; any unit works, the feature is
    standardised; ``sd`` with ``ddof=1``). ``phi > 0`` means longer answers win more. When every ``dlen`` is equal the
    length feature carries no information and is dropped (``phi = 0``). The LC win rate predicts each prompt with the
    length term set to 0 and averages: ``100 * mean_x sigmoid(theta [+ psi * difficulty_x])``.

    Inputs are ``(n_prompts,)`` arrays; prompts with NaN preference are skipped. Returns a dict:
      ``lc_win_rate`` (percent), ``lc_standard_error`` (percent, delta method on the sandwich covariance),
      ``win_rate`` (raw, percent, same prompts), ``coefficients`` {theta, phi[, psi]}, ``n``,
      ``extreme_change`` (AlpacaEval's "LC very different from WR" warning as a flag), ``note`` (what was fitted).
    """
    values = _as_preferences(preferences)
    candidate = _aligned_column("candidate_lengths", candidate_lengths, values.shape)
    baseline = _aligned_column("baseline_lengths", baseline_lengths, values.shape)
    difficulty = None
    if instruction_difficulty is not None:
        difficulty = _aligned_column("instruction_difficulty", instruction_difficulty, values.shape)

    judged = ~np.isnan(values)
    p = values[judged]
    n = p.size
    if n == 0:
        return {"lc_win_rate": math.nan, "lc_standard_error": math.nan, "win_rate": math.nan, "coefficients": {},
                "n": 0, "extreme_change": False, "note": "no judged prompts"}
    names, fit_features, predict_features = _lc_design(
        candidate[judged] - baseline[judged], None if difficulty is None else difficulty[judged]
    )
    uses_length = "phi" in names

    weights = _fit_soft_logistic(fit_features, p)
    predicted = expit(predict_features @ weights)
    lc = 100 * predicted.mean()
    # delta method: SE(LC) = 100 * sqrt(g' Cov g) with g = d mean(predicted) / d weights
    gradient = (predict_features * (predicted * (1 - predicted))[:, None]).mean(axis=0)
    covariance = _sandwich_covariance(fit_features, p, weights)
    lc_se = 100 * math.sqrt(max(float(gradient @ covariance @ gradient), 0.0))

    coefficients = dict(zip(names, map(float, weights)))
    coefficients.setdefault("phi", 0.0)
    raw = 100 * p.mean()
    return {
        "lc_win_rate": float(lc),
        "lc_standard_error": lc_se,
        "win_rate": float(raw),
        "coefficients": coefficients,
        "n": n,
        "extreme_change": is_extreme_change(raw, lc),
        "note": _lc_note(uses_length, difficulty is not None),
    }


def mean_length(texts: Sequence[str]) -> float:
    """Mean length of ``texts`` in characters (AlpacaEval's ``avg_length``); NaN for no texts."""
    return float(np.mean([len(text) for text in texts])) if len(texts) else math.nan
