"""LossDiff and IRM (Zhang et al., ICLR 2026): per-pair scores from a warm-up model and a validation-trained model.

Source: Zhang, Wang, Ye, Zhu, Yao, Han, Sugiyama, "Towards Understanding Valuable Preference Data for Large
Language Model Alignment", ICLR 2026, arXiv 2510.13212 (code: github tmlr-group/TIF_LossDiff-IRM).

What was read, and where:

- Not the code: the ``fetch`` tool has no snapshot of tmlr-group/TIF_LossDiff-IRM.
- Not the method section itself: the stored arXiv HTML (https://arxiv.org/html/2510.13212v1, v2) answered the
  ``search`` tool (corpus ``pages``) only with its abstract and the start of its introduction.
- The method, second hand, from paper notes found with ``find_string`` in the code index: an English and a Chinese
  "[Paper Note]" of the ICLR 2026 paper (the en.papernotes.org note, its "Method" / "Key Designs" / "Loss &
  Training" sections, in two English versions and a Chinese one), and the OpenReview reviews (reviewer 4:
  "LossDiff: the difference of loss between pi_theta and a validation model pi_val; IRM: the implicit reward
  margin"; reviewer 3: the thresholds are not specified in the paper). From the notes:

  * pipeline: 1 epoch of DPO warm-up on the full data gives the current model ``theta``; an auxiliary model
    ``theta_val`` is trained (1 epoch, "concurrently") on a validation set; LossDiff and IRM are computed per
    pair; the pairs whose LossDiff and IRM both fall in the intermediate percentile ranges are kept (50-64 % of
    the data); DPO training continues on that subset for 2 epochs;
  * ``LossDiff(d) = l(theta; d) - l(theta_val; d)``: large when moving from theta towards theta_val lowers the
    pair's loss, i.e. the pair agrees with the validation objective (Pearson 0.77 with the influence function);
  * ``IRM(d) = beta log pi_theta(y_w|x)/pi_ref(y_w|x) - beta log pi_theta(y_l|x)/pi_ref(y_l|x)``, "the argument
    inside the sigmoid in the DPO loss", of the *current* model, validation-free (Pearson 0.67);
  * the combined rule keeps the intersection of both middle bands (TIF overlap 0.73-0.78 against 0.60-0.70 for
    either alone): `dpo_engine.selection.hypotheses.select_joint_medium_band`.

What is ASSUMED here (not in those sources, or not precisely):

1. ``l`` is the DPO loss ``-log sigmoid(margin)`` with the same ``beta`` and reference (the base model) for both
   models, response log-probs summed over tokens; ``beta`` 0.1 (TRL's default; the paper's was not read).
2. theta_val is trained from the base model, not from theta: "concurrently" in the notes suggests so, and a run
   here cannot start from a LoRA adapter. Both are LoRA DPO runs, 1 epoch each, the warm-up proxy's learning rate.
3. The validation set is held out from the user's own pairs (the paper uses a separate validation set): a seeded
   random split, ``min(1000, 10 %)`` pairs by default (at least 2). theta warms up on every other pair.
4. Validation pairs get no LossDiff or IRM (NaN), are marked ``in_validation``, and `dpo_engine.selection`'s
   ``select_pairs`` never picks them. Every other pair is in-sample for theta by the method's design (the warm-up
   model is the model being selected for), so ``in_warmup`` is not used.

Units: nats (IRM is beta times a log-ratio margin, LossDiff a difference of DPO losses). The margins table's
``implicit_margin`` is DM's margin (no beta) of theta, ``IRM / beta``, and ``val_implicit_margin`` the same for
theta_val, so ``loss_diff`` can be recomputed from the table.

Both models train as runs through the runs queue (`dpo_engine.runs.fold_proxies.train_fold_proxies`, as
Selective DPO's fold proxies): ``dpo-engine score --implicit lossdiff-irm`` plans them with `lossdiff_irm_proxies`
and scores them with `lossdiff_irm_table`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from dpo_engine.errors import UserError
from dpo_engine.margins.scoring import Progress, implicit_margins
from dpo_engine.selection.rules import HELD_OUT_COLUMN, select_random
from dpo_engine.training.selective_dpo import FoldProxy

DEFAULT_BETA = 0.1
VALIDATION_CAP = 1000
VAL_MARGIN_COLUMN = "val_implicit_margin"


@dataclass(frozen=True)
class NamedProxy(FoldProxy):
    """A `FoldProxy` whose work directory is ``label`` (``current``, ``validation``) instead of seed/fold."""

    label: str = ""

    @property
    def name(self) -> str:
        return self.label


def validation_size(n_pairs: int, size: int | None = None) -> int:
    """Pairs held out for theta_val: ``size``, else ``min(1000, round(10 %))``, at least 2."""
    return size or max(2, min(VALIDATION_CAP, round(0.1 * n_pairs)))


def lossdiff_irm_proxies(n_pairs: int, size: int | None = None, seed: int = 42) -> tuple[NamedProxy, NamedProxy]:
    """The plan, ``(current, validation)``: theta warms up on every pair but a seeded random validation split,
    theta_val trains on that split; ``held_out_rows`` of both are the pairs that get scores (theta's training
    pairs). Rows are sorted int64 positions. Raises ``UserError`` when the split would leave no pair to score."""
    count = validation_size(n_pairs, size)
    if count >= n_pairs:
        raise UserError(f"a validation split of {count} pairs leaves none of the {n_pairs} to score: lower "
                        "lossdiff_validation_size")
    validation = np.sort(select_random(n_pairs, count, seed)).astype(np.int64)
    rest = np.setdiff1d(np.arange(n_pairs, dtype=np.int64), validation)
    return (NamedProxy(seed=seed, fold=0, training_rows=rest, held_out_rows=rest, label="current"),
            NamedProxy(seed=seed, fold=1, training_rows=validation, held_out_rows=rest, label="validation"))


def proxy_overrides(beta: float = DEFAULT_BETA, num_epochs: int = 1, **train_overrides) -> dict:
    """`TrainConfig` fields of both models: DPO at ``beta`` for ``num_epochs`` (the paper's 1), then overrides."""
    return {"num_epochs": num_epochs, "loss": "dpo", "loss_params": {"beta": beta}, **train_overrides}


def lossdiff_irm_scores(current_chosen_logps, current_rejected_logps, val_chosen_logps, val_rejected_logps,
                        ref_chosen_logps, ref_rejected_logps, beta: float = DEFAULT_BETA) -> tuple[np.ndarray, np.ndarray]:
    """LossDiff and IRM of each pair from its response log-probs under theta, theta_val and the reference.

    Inputs are ``(n_pairs,)`` array-likes of log-probs summed over response tokens (nats): under the current
    (warm-up) model theta, the validation-trained model theta_val and their common reference. With
    ``h = (theta_chosen - ref_chosen) - (theta_rejected - ref_rejected)`` and ``h_val`` the same for theta_val:

    - ``irm = beta * h``, the current model's implicit reward margin;
    - ``loss_diff = l(beta * h) - l(beta * h_val)`` with the DPO loss ``l(m) = -log sigmoid(m) = log(1 + e^-m)``:
      how much lower the pair's loss is under theta_val than under theta.

    Returns ``(loss_diff, irm)``, float64 ``(n_pairs,)`` each; NaN in a pair's inputs gives NaN in both.
    """
    arrays = [np.asarray(values, dtype=np.float64) for values in (
        current_chosen_logps, current_rejected_logps, val_chosen_logps, val_rejected_logps, ref_chosen_logps,
        ref_rejected_logps)]
    if len({array.shape for array in arrays}) != 1 or arrays[0].ndim != 1:
        raise ValueError("expected six 1-D arrays of the same shape (n_pairs,)")
    cc, cr, vc, vr, rc, rr = arrays
    irm = beta * ((cc - rc) - (cr - rr))
    val_margin = beta * ((vc - rc) - (vr - rr))
    with np.errstate(invalid="ignore"):  # NaN inputs (a pair not scored) stay NaN
        loss_diff = np.logaddexp(0.0, -irm) - np.logaddexp(0.0, -val_margin)
    loss_diff[np.isnan(irm) | np.isnan(val_margin)] = np.nan
    irm[np.isnan(loss_diff)] = np.nan
    return loss_diff, irm


def lossdiff_irm_table(pairs: pd.DataFrame, proxies: tuple[NamedProxy, NamedProxy],
                       adapters: tuple[str | Path, str | Path], *, beta: float = DEFAULT_BETA,
                       scoring: dict | None = None, progress: Progress | None = None) -> pd.DataFrame:
    """Every pair scored by both models, rows in ``pairs`` order: `implicit_margins`' columns for theta
    (``implicit_margin``: its DM margin, nats, no beta), ``val_implicit_margin`` (theta_val's), ``loss_diff``,
    ``irm`` and ``in_validation`` (bool).

    ``proxies`` and ``adapters``: ``(current, validation)``, as `lossdiff_irm_proxies` plans them. Validation
    pairs keep their log-probs and margins but get NaN ``loss_diff`` and ``irm``. ``scoring``: keyword arguments
    for `implicit_margins`; ``progress(done, total)`` counts pairs over both models.
    """
    def report(offset: int):
        def step(done: int, total: int) -> None:
            if progress is not None:
                progress(offset + done // 2, 2 * len(pairs))  # implicit_margins counts its two passes
        return step

    validation = proxies[1]
    table = implicit_margins(pairs, str(adapters[0]), progress=report(0), **(scoring or {}))
    val = implicit_margins(pairs, str(adapters[1]), progress=report(len(pairs)), **(scoring or {}))
    loss_diff, irm = lossdiff_irm_scores(
        table.policy_chosen_logps, table.policy_rejected_logps, val.policy_chosen_logps, val.policy_rejected_logps,
        table.ref_chosen_logps, table.ref_rejected_logps, beta)
    held_out = np.zeros(len(table), dtype=bool)
    held_out[validation.training_rows] = True  # HELD_OUT_COLUMN: theta_val trained on it (no scores, not selectable)
    loss_diff[held_out], irm[held_out] = np.nan, np.nan
    table[VAL_MARGIN_COLUMN] = val.implicit_margin.to_numpy()
    table["loss_diff"], table["irm"], table[HELD_OUT_COLUMN] = loss_diff, irm, held_out
    return table
