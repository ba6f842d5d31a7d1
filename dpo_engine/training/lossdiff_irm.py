"""LossDiff and IRM (Zhang et al., ICLR 2026): per-pair scores from a proxy DPO-trained on a held-out validation split.

Source: Zhang, Wang, Ye, Zhu, Yao, Han, Sugiyama, "Towards Understanding Valuable Preference Data for Large
Language Model Alignment", ICLR 2026, arXiv 2510.13212 (code: github tmlr-group/TIF_LossDiff-IRM).

What could be read here, and where:

- The reference code could not be had (the ``fetch`` tool has no snapshot of tmlr-group/TIF_LossDiff-IRM).
- The stored arXiv HTML (https://arxiv.org/html/2510.13212v1 and v2) and two summaries of it
  (en.papernotes.org's ICLR 2026 note, arxivlens.com) were searchable only through their openings: the abstract,
  the start of the introduction and the summaries' TL;DR. Twelve queries with the method section's words
  ("LossDiff", "implicit reward margin", "validation", "scoring function", "equation", "TIF") returned no
  passage of the method section, so **no equation of the paper was read**.
- What those openings do say: data quality is measured by each training pair's influence on *validation* data
  (the truncated influence function, TIF); medium-TIF pairs help most, not the highest (hence the medium band);
  LossDiff and IRM are two "candidate scoring functions" that are cheaper than TIF, positively correlated with
  it and *model dependent*; each has errors against TIF from different sources, and the LossDiff-IRM rule
  combines them to offset those errors (50-64 % of the data, +13.58 % average WinRate, per the papernotes TL;DR).
  The combined rule is `dpo_engine.selection.hypotheses.select_joint_medium_band` (pairs central in both).

What is therefore ASSUMED here (our reading, to be checked against the paper's method section):

1. The proxy: a LoRA DPO run from the base model (which is also its reference) on a seeded random validation
   split of the user's pairs, ``min(1000, 10 %)`` pairs by default (at least 2), ``beta`` 0.1, the warm-up
   proxy's other settings (2 epochs, its learning rate). The paper's split sizes and training settings were not
   read. Validation pairs are in-sample for the proxy: they get no LossDiff or IRM (NaN), their implicit margin
   is marked in-sample (``in_warmup``, as the warm-up proxy's seed pairs), and ``in_validation`` keeps every
   rule of `dpo_engine.selection.select_pairs` from selecting them.
2. IRM: the implicit reward margin of that validation-trained proxy on a training pair,
   ``beta * [(log pi_val(y_w) - log ref(y_w)) - (log pi_val(y_l) - log ref(y_l))]``, log-probs summed over
   response tokens (DPO's implicit reward, Rafailov et al.). Positive: the validation data taught the proxy to
   prefer this pair's chosen response.
3. LossDiff: the drop in the pair's DPO loss from the reference to the proxy, ``l(ref) - l(pi_val)`` with
   ``l = -log sigmoid(beta * margin)``; positive when training on the validation data made this pair easier (a
   first-order stand-in for the pair's gradient agreeing with the validation gradient, which is what influence
   measures). With the *summed* margin this is ``log 2 - softplus(-IRM)``, a monotone function of IRM: its
   percentile ranks would equal IRM's and the joint band would collapse into IRM's band, contradicting the
   paper's "different error sources". So LossDiff is taken on the **per-token mean** log-ratios (the
   length-normalised DPO loss) by default, making the two scores differ through response lengths.
   ``per_token=False`` gives the summed form.

Both scores are in nats (IRM times beta is a reward in nats; LossDiff a loss difference in nats). The margins
table's ``implicit_margin`` stays DM's margin of the same proxy, ``IRM / beta`` (no beta), so every rule that
reads it (smallest gap, DM fusions, medium band) sees the validation proxy's margin.

The proxy trains as a run through the runs queue (`dpo_engine.runs.fold_proxies.train_fold_proxies`, as
Selective DPO's proxies do); ``dpo-engine score --implicit lossdiff-irm`` plans it with `validation_proxy` and scores it
with `lossdiff_irm_table`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from dpo_engine.errors import UserError
from dpo_engine.margins.scoring import Progress, implicit_margins
from dpo_engine.selection.rules import HELD_OUT_COLUMN, select_random
from dpo_engine.training.selective_dpo import FoldProxy

DEFAULT_BETA = 0.1
VALIDATION_CAP = 1000
VALIDATION_COLUMN = HELD_OUT_COLUMN  # "in_validation": the proxy trained on this pair (no scores, not selectable)
SCORE_COLUMNS = ("loss_diff", "irm")


def validation_size(n_pairs: int, size: int | None = None) -> int:
    """Pairs held out for the validation proxy: ``size``, else ``min(1000, round(10 %))``, at least 2."""
    return size or max(2, min(VALIDATION_CAP, round(0.1 * n_pairs)))


def validation_proxy(n_pairs: int, size: int | None = None, seed: int = 42) -> FoldProxy:
    """The plan: the proxy trains on a seeded random validation split (``training_rows``) and scores every other
    pair (``held_out_rows``), both sorted int64 row positions. Raises ``UserError`` when no pair would be left."""
    count = validation_size(n_pairs, size)
    if count >= n_pairs:
        raise UserError(f"a validation split of {count} pairs leaves none of the {n_pairs} to score: lower "
                        "lossdiff_validation_size")
    validation = np.sort(select_random(n_pairs, count, seed))
    rest = np.setdiff1d(np.arange(n_pairs, dtype=np.int64), validation)
    return FoldProxy(seed=seed, fold=0, training_rows=validation.astype(np.int64), held_out_rows=rest)


def proxy_overrides(beta: float = DEFAULT_BETA, num_epochs: int = 2, **train_overrides) -> dict:
    """`TrainConfig` fields of the validation proxy: DPO at ``beta`` for ``num_epochs``, then overrides."""
    return {"num_epochs": num_epochs, "loss": "dpo", "loss_params": {"beta": beta}, **train_overrides}


def lossdiff_irm_scores(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
                        chosen_tokens, rejected_tokens, beta: float = DEFAULT_BETA,
                        per_token: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """LossDiff and IRM of each pair from the validation proxy's and the reference's log-probs.

    Inputs are ``(n_pairs,)`` array-likes: log-probs summed over response tokens (nats) under the proxy
    (``policy_*``) and its reference (``ref_*``), and the response lengths in tokens. With
    ``d_w = policy_chosen - ref_chosen`` and ``d_l = policy_rejected - ref_rejected``:

    - ``irm = beta * (d_w - d_l)``;
    - ``loss_diff = l(0) - l(m) = log 2 - log(1 + exp(-beta * m))`` with ``m = d_w / chosen_tokens -
      d_l / rejected_tokens`` (``per_token``, the default) or ``m = d_w - d_l``: the DPO loss the pair had under
      the reference (margin 0) minus the one it has under the proxy. In ``(-inf, log 2)``.

    Returns ``(loss_diff, irm)``, float64 ``(n_pairs,)`` each, in nats; NaN anywhere in a pair's inputs gives
    NaN in both. See the module docstring for which parts of these definitions are assumed.
    """
    pc, pr, rc, rr, nc, nr = (np.asarray(values, dtype=np.float64) for values in (
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, chosen_tokens,
        rejected_tokens))
    if len({array.shape for array in (pc, pr, rc, rr, nc, nr)}) != 1 or pc.ndim != 1:
        raise ValueError("expected six 1-D arrays of the same shape (n_pairs,)")
    d_w, d_l = pc - rc, pr - rr
    irm = beta * (d_w - d_l)
    with np.errstate(divide="ignore", invalid="ignore"):  # NaN inputs (a pair not scored) stay NaN
        margin = d_w / nc - d_l / nr if per_token else d_w - d_l
        loss_diff = np.log(2.0) - np.logaddexp(0.0, -beta * margin)
    loss_diff[np.isnan(irm)] = np.nan
    return loss_diff, irm


def lossdiff_irm_table(pairs: pd.DataFrame, proxy: FoldProxy, adapter: str | Path, *, beta: float = DEFAULT_BETA,
                       per_token: bool = True, scoring: dict | None = None,
                       progress: Progress | None = None) -> pd.DataFrame:
    """The proxy's scores on every pair, rows in ``pairs`` order: `implicit_margins`' columns (``implicit_margin``
    is DM's margin of the proxy, nats, no beta), ``loss_diff``, ``irm`` and ``in_validation`` (bool).

    Validation pairs (``proxy.training_rows``) keep their log-probs and their in-sample implicit margin, as the
    warm-up proxy's seed pairs do, but get NaN ``loss_diff`` and ``irm``: the scores are defined for training
    pairs only. ``scoring``: keyword arguments for `implicit_margins`; ``progress(done, total)`` counts pairs.
    """
    def report(step: int, steps: int) -> None:
        if progress is not None:
            progress(step // 2, len(pairs))  # implicit_margins counts both passes

    table = implicit_margins(pairs, str(adapter), progress=report, **(scoring or {}))
    loss_diff, irm = lossdiff_irm_scores(
        table.policy_chosen_logps, table.policy_rejected_logps, table.ref_chosen_logps, table.ref_rejected_logps,
        table.chosen_tokens, table.rejected_tokens, beta, per_token)
    validation = np.zeros(len(table), dtype=bool)
    validation[proxy.training_rows] = True
    loss_diff[validation], irm[validation] = np.nan, np.nan
    table["loss_diff"], table["irm"], table[VALIDATION_COLUMN] = loss_diff, irm, validation
    return table
