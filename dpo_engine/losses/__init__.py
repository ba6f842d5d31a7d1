"""DPO loss variants: the catalog of names, paper defaults and formulas (`catalog`, no torch) and the loss
functions behind ``make_loss(name, **hparams)`` (`functions`, torch).

``dpo_engine.losses.make_loss`` stays the documented entry point; the torch half is imported on first use so
that reading the catalog (the dashboard's forms) does not load torch.
"""

from dpo_engine.losses.catalog import LOSS_DEFAULTS, LOSS_DOCS, LOSS_NAMES

_FUNCTIONS = ("LossOutput", "make_loss", "uses_reference", "is_stateful", "weighted_batch_loss", "madpo_weights")

__all__ = ["LOSS_DEFAULTS", "LOSS_DOCS", "LOSS_NAMES", *_FUNCTIONS]


def __getattr__(name: str):
    if name in _FUNCTIONS:
        from dpo_engine.losses import functions

        return getattr(functions, name)
    raise AttributeError(f"module 'dpo_engine.losses' has no attribute {name!r}")
