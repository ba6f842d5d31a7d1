"""The loss variants' names, paper defaults and one-line formulas (no torch: the dashboard and configs read these).

The losses themselves are in ``dpo_engine.losses``.
"""

from __future__ import annotations

import math

from dpo_engine.errors import ConfigError

LOSS_NAMES = ("dpo", "ipo", "cdpo", "robust", "hinge", "simpo", "dpop", "alpha_dpo")

# Paper defaults, shown in the dashboard. Sources are in methods.md.
LOSS_DEFAULTS: dict[str, dict[str, float]] = {
    # Rafailov et al. 2023; TRL's default beta.
    "dpo": {"beta": 0.1},
    # Azar et al. 2023; beta plays the role of tau. TRL's default beta.
    "ipo": {"beta": 0.1},
    # Mitchell 2023 (conservative DPO); TRL <= 0.28 `sigmoid` with label_smoothing > 0.
    "cdpo": {"beta": 0.1, "label_smoothing": 0.1},
    # Chowdhury et al. 2024; label_smoothing is the assumed label-flip rate.
    "robust": {"beta": 0.1, "label_smoothing": 0.1},
    # SLiC-style hinge, as TRL's `hinge`; the margin is 1/beta in log-ratio units.
    "hinge": {"beta": 0.1},
    # Meng et al. 2024: README recommends gamma_beta_ratio 0.5 (SimPOConfig's own default is 0.25).
    "simpo": {"beta": 2.0, "gamma_beta_ratio": 0.5},
    # Pal et al. 2024 (Smaug): lambda 50, beta 0.3; lambda reported robust over {5, 50, 500}.
    "dpop": {"beta": 0.3, "dpop_lambda": 50.0},
    # Wu et al. 2025, released Llama-3-8B-Instruct setting (beta 2.5, alpha 0.2) with gamma_beta_ratio 0.5
    # (released: 0.6; config class defaults: beta 2.0, gamma_beta_ratio 0.25, alpha 0.0); EMA momentum 0.9 as coded.
    "alpha_dpo": {"beta": 2.5, "gamma_beta_ratio": 0.5, "alpha": 0.2, "momentum": 0.9},
}

# One line per loss: source and formula. h = [log π(y_w) − log π_ref(y_w)] − [log π(y_l) − log π_ref(y_l)].
LOSS_DOCS: dict[str, str] = {
    "dpo": "DPO (Rafailov et al. 2023): −log σ(β·h), summed log-probs",
    "ipo": "IPO (Azar et al. 2023, as in TRL): (h̄ − 1/(2β))², h̄ from per-token-averaged log-probs",
    "cdpo": "cDPO (Mitchell 2023): −(1−ε)·log σ(β·h) − ε·log σ(−β·h), ε = label_smoothing",
    "robust": "Robust DPO (Chowdhury et al. 2024): [−(1−ε)·log σ(β·h) + ε·log σ(−β·h)] / (1−2ε), ε = label_smoothing",
    "hinge": "Hinge (SLiC-style, as in TRL): max(0, 1 − β·h)",
    "simpo": "SimPO (Meng et al. 2024): −log σ(β·(avg log π(y_w) − avg log π(y_l)) − β·gamma_beta_ratio), no reference",
    "dpop": "DPOP (Pal et al. 2024): −log σ(β·(h − λ·max(0, log π_ref(y_w) − log π(y_w)))), λ = dpop_lambda",
    "alpha_dpo": "α-DPO (Wu et al. 2025, as coded): −log σ(β·(u − sg[α·z + gamma_beta_ratio])), "
    "u = avg log π(y_w) − avg log π(y_l), z = EMA-standardised policy-vs-reference gap",
}


def resolved_loss_params(name: str, hparams: dict[str, float]) -> dict[str, float]:
    """``hparams`` over ``LOSS_DEFAULTS[name]``, checked without torch (the forms reject a bad beta at once);
    ``ConfigError`` naming the loss, an unknown hyperparameter or a bad value."""
    check_loss_name(name)
    unknown = sorted(set(hparams) - set(LOSS_DEFAULTS[name]))
    if unknown:
        raise ConfigError(
            unknown[0], f"not a hyperparameter of loss '{name}' (it takes {', '.join(LOSS_DEFAULTS[name])})"
        )
    resolved = {**LOSS_DEFAULTS[name], **hparams}
    _check_hparams(name, resolved)
    return resolved


def check_loss_name(name: str) -> None:
    """``ConfigError`` on ``loss`` unless ``name`` is one of ``LOSS_NAMES``."""
    if name not in LOSS_NAMES:
        raise ConfigError("loss", f"unknown loss {name!r}; choose one of {', '.join(LOSS_NAMES)}")


def _check_hparams(name: str, hparams: dict[str, float]) -> None:
    """Each resolved hyperparameter finite and within its loss's domain; ``ConfigError`` naming the first bad one."""
    for field, value in hparams.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(field, f"must be a finite number, got {value!r}")

    def require(ok: bool, field: str, rule: str) -> None:
        if not ok:
            raise ConfigError(field, f"must be {rule} for loss '{name}', got {hparams[field]!r}")

    require(hparams["beta"] > 0, "beta", "> 0")
    if name == "cdpo":
        require(0 <= hparams["label_smoothing"] <= 1, "label_smoothing", "in [0, 1]")
    if name == "robust":
        require(0 <= hparams["label_smoothing"] < 0.5, "label_smoothing", "in [0, 0.5)")
    if "gamma_beta_ratio" in hparams:
        require(hparams["gamma_beta_ratio"] >= 0, "gamma_beta_ratio", ">= 0")
    if "dpop_lambda" in hparams:
        require(hparams["dpop_lambda"] >= 0, "dpop_lambda", ">= 0")
    if "alpha" in hparams:
        require(hparams["alpha"] >= 0, "alpha", ">= 0")
    if "momentum" in hparams:
        require(0 <= hparams["momentum"] < 1, "momentum", "in [0, 1)")
