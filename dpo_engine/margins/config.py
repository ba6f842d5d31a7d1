"""The configuration of a scoring job: ``ScoreConfig``, the one declaration of scoring's settings and defaults.

``dpo-engine score`` generates its flags from these fields (``dpo_engine.cli.flags``), and the dashboard and the
study build a ``ScoreConfig`` instead of argv. Torch-free at import time, so a form can check a value at once:
``validate()`` raises ``ConfigError`` naming the field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from dpo_engine.errors import ConfigError
from dpo_engine.models.tokenization import MAX_LENGTH, MAX_PROMPT_LENGTH

DEFAULT_MODEL = "smollm2-135m-instruct"  # dpo_engine.models.DEFAULT_MODEL, repeated to avoid importing torch
DEVICES = ("auto", "cpu", "cuda", "mps")


def _help(text: str) -> dict:
    return {"help": text}


@dataclass
class ScoreConfig:
    """Everything ``dpo-engine score`` needs: the data, where the margins table goes, and how each margin is made."""

    pairs: str = field(metadata=_help("preference data file or directory (anything `dpo-engine validate` accepts)"))
    out: str = field(metadata=_help("margins table to write (.parquet or .csv)"))
    external: Literal["auto", "dataset", "builtin", "reward-model", "none"] = field(default="auto", metadata=_help(
        "external margin source; auto = the data's scores if it has them, else the built-in stand-in head"))
    reward_model: str | None = field(default=None, metadata=_help(
        "local AutoModelForSequenceClassification dir (--external reward-model)"))
    implicit: Literal["auto", "crossfit", "warmup", "selective", "lossdiff-irm", "policy", "none"] = field(
        default="auto", metadata=_help(
        "implicit margin source. crossfit: K warm-up proxies on disjoint folds, each pair scored by one that never "
        "trained on it; warmup: one warm-up proxy (DM step 1; its seed pairs are scored in-sample); selective: "
        "Selective DPO's K x seeds fold proxies as runs through the runs queue, adding val_loss_seed<s> and "
        "learning_order; lossdiff-irm: Zhang et al.'s LossDiff and IRM from a warm-up model on every pair but a "
        "held-out validation split and a model on that split (two runs through the runs queue), adding loss_diff, "
        "irm, val_implicit_margin and in_validation (validation pairs get no scores and are never selected); "
        "policy: --policy. auto = --policy if given, else crossfit whenever each fold can hold "
        "the seed subset, else warmup. The budget: crossfit costs K warm-ups (each on seed-size pairs, "
        "min(2000, 10 percent) by default) plus the same one scoring pass over every pair as warmup, so with "
        "K = 2 one extra warm-up, itself capped at 2000 pairs x warmup-epochs"))
    policy: str | None = field(default=None, metadata=_help(
        "LoRA adapter dir (reference = its base) or full model dir (needs --reference)"))
    reference: str | None = field(default=None, metadata=_help("reference model for a full-model --policy"))
    model: str = field(default=DEFAULT_MODEL, metadata=_help("base model for the warm-up proxy"))
    seed_size: int | None = field(default=None, metadata=_help(
        "warm-up seed subset size (default min(2000, 10 percent of pairs))"))
    warmup_dir: str | None = field(default=None, metadata=_help(
        "where the warm-up proxy is trained (default: next to --out)"))
    warmup_epochs: int = field(default=2, metadata=_help("warm-up proxy epochs"))
    warmup_lr: float = field(default=5e-5, metadata=_help("warm-up proxy learning rate (LoRA)"))
    seed: int = field(default=42, metadata=_help("seed of the warm-up subset and training (and the crossfit folds)"))
    crossfit_folds: int = field(default=2, metadata=_help(
        "K, the disjoint folds of --implicit crossfit and selective (>= 2)"))
    selective_seeds: tuple[int, ...] = field(default=(41, 42, 43), metadata=_help(
        "--implicit selective: one fold split and K proxies per seed; learning_order is the mean over seeds"))
    selective_beta: float = field(default=0.1, metadata=_help(
        "--implicit selective: the proxies' DPO beta, and the beta of each validation loss -log sigmoid(beta h)"))
    lossdiff_validation_size: int | None = field(default=None, metadata=_help(
        "--implicit lossdiff-irm: pairs held out to train the validation model on (default min(1000, 10 percent), "
        "at least 2)"))
    lossdiff_beta: float = field(default=0.1, metadata=_help(
        "--implicit lossdiff-irm: both models' DPO beta, and the beta of IRM and LossDiff"))
    lossdiff_epochs: int = field(default=1, metadata=_help(
        "--implicit lossdiff-irm: epochs of the warm-up model and of the validation model (the paper's 1)"))
    proxy_max_steps: int | None = field(default=None, metadata=_help(
        "optimizer steps per proxy (warm-up, crossfit, selective or lossdiff-irm); default: warmup-epochs epochs (1 for "
        "selective, lossdiff-epochs for lossdiff-irm)"))
    dtype: Literal["auto", "fp32", "bf16"] = field(default="auto", metadata=_help(
        "precision of every model of the job; auto = bf16 on a CUDA GPU that has it, else fp32"))
    device: str = field(default="auto", metadata=_help("cuda, mps, cpu or auto"))
    batch_size: int | None = field(default=None, metadata=_help(
        "at most this many pairs per forward (default: no limit; --token-budget sizes the forwards)"))
    token_budget: int | None = field(default=None, metadata=_help(
        "tokens per scoring forward (default by device: 32768 on CUDA, 8192 on CPU and MPS)"))
    max_length: int = field(default=MAX_LENGTH, metadata=_help("max tokens of prompt + response"))
    max_prompt_length: int = field(default=MAX_PROMPT_LENGTH, metadata=_help("max prompt tokens (keeps the end)"))
    progress_file: str | None = field(default=None, metadata=_help(
        "JSON file updated with {stage, done, total} (for the dashboard)"))
    num_processes: int = field(default=1, metadata=_help(
        "processes the log-prob passes are split across, one GPU each on CUDA (the command starts them; under "
        "`accelerate launch` its processes are used instead)"))
    drop_invalid: bool = field(default=False, metadata=_help(
        "leave out the rows that cannot be used (recorded in the table's .meta.json) instead of failing"))

    def validate(self) -> None:
        """Check every field before launch (no torch, no model load); raise ``ConfigError`` naming the first bad one."""

        def require(ok: bool, name: str, rule: str) -> None:
            if not ok:
                raise ConfigError(name, f"must be {rule}, got {getattr(self, name)!r}")

        require(bool(self.pairs) and Path(self.pairs).expanduser().exists(), "pairs", "an existing file or directory")
        require(bool(self.out), "out", "a path for the margins table")
        require(self.max_prompt_length >= 1, "max_prompt_length", ">= 1")
        require(self.max_length > self.max_prompt_length, "max_length", f"> max_prompt_length ({self.max_prompt_length})")
        require(self.batch_size is None or self.batch_size >= 1, "batch_size", ">= 1 (or unset)")
        require(self.token_budget is None or self.token_budget >= 1, "token_budget", ">= 1 (or unset)")
        require(self.seed_size is None or self.seed_size >= 2, "seed_size", ">= 2 (or unset)")
        require(self.warmup_epochs >= 1, "warmup_epochs", ">= 1")
        require(self.num_processes >= 1, "num_processes", ">= 1")
        require(self.warmup_lr > 0, "warmup_lr", "> 0")
        require(isinstance(self.crossfit_folds, int) and self.crossfit_folds >= 2, "crossfit_folds", "a whole number >= 2")
        require(len(self.selective_seeds) >= 1 and len(set(self.selective_seeds)) == len(self.selective_seeds),
                "selective_seeds", "one or more distinct seeds")
        require(self.selective_beta > 0, "selective_beta", "> 0")
        require(self.lossdiff_validation_size is None or self.lossdiff_validation_size >= 2, "lossdiff_validation_size",
                ">= 2 (or unset)")
        require(self.lossdiff_beta > 0, "lossdiff_beta", "> 0")
        require(self.lossdiff_epochs >= 1, "lossdiff_epochs", ">= 1")
        require(self.proxy_max_steps is None or self.proxy_max_steps >= 1, "proxy_max_steps", ">= 1 (or unset)")
        require(self.device in DEVICES or self.device.startswith("cuda:"), "device", f"one of {', '.join(DEVICES)}")
        if self.external == "reward-model":
            require(bool(self.reward_model) and Path(self.reward_model).expanduser().is_dir(), "reward_model",
                    "a local model directory when external is 'reward-model'")
        if self.implicit == "policy":
            require(bool(self.policy), "policy", "a model or adapter directory when implicit is 'policy'")
