"""The configuration of a training run: ``TrainConfig`` (TRL-style dataclass) and its validation.

Kept free of torch and transformers at import time, so the dashboard can show fields, defaults and help texts
without loading a model stack; ``validate()`` imports what it checks against.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from dpo_engine.errors import ConfigError, DataError, ModelError, UserError
from dpo_engine.losses.catalog import LOSS_DEFAULTS, LOSS_NAMES, resolved_loss_params

if TYPE_CHECKING:  # pandas is imported where pairs are loaded: this module stays light for gpu_check and the UI
    import pandas as pd

    from dpo_engine.training.pair_inputs import PairInputs

DEFAULT_MODEL = "smollm2-135m-instruct"  # dpo_engine.models.DEFAULT_MODEL, repeated to avoid importing torch
PRECISIONS = ("auto", "fp32", "bf16")
DEVICES = ("auto", "cpu", "cuda", "mps")


def _help(text: str) -> dict:
    return {"help": text}


# Inclusive bounds of the numeric fields, checked when a config is built from plain values and before launch, so
# an absurd value (max_steps: 1e12, learning_rate: 1e300) is refused at once with the field named.
NUMERIC_BOUNDS: dict[str, tuple[float, float]] = {
    "max_length": (2, 131_072),
    "max_prompt_length": (1, 131_072),
    "lora_r": (1, 4096),
    "lora_alpha": (1e-6, 1e4),
    "lora_dropout": (0.0, 1.0),
    "learning_rate": (1e-12, 1.0),
    "num_epochs": (1e-6, 10_000),
    "max_steps": (-1, 100_000_000),
    "batch_size": (1, 65_536),
    "gradient_accumulation_steps": (1, 65_536),
    "warmup_ratio": (0.0, 1.0),
    "weight_decay": (0.0, 100.0),
    "max_grad_norm": (0.0, 1e6),
    "seed": (0, 2**32 - 1),
    "logging_steps": (1, 100_000_000),
    "save_steps": (1, 100_000_000),
    "save_total_limit": (1, 10_000),
    "data_map_every": (0, 100_000_000),
    "num_processes": (1, 1024),
}


@dataclass
class TrainConfig:
    """Everything a training run needs, with TRL-like names and defaults (methods §1.9 for the paper's values).

    Build it with ``TrainConfig(...)``, ``from_dict`` or ``from_yaml`` (unknown keys are errors), then call
    ``validate()`` before launching: every bad value raises ``ConfigError`` naming its field. Each field's ``help``
    metadata is the text the dashboard shows next to it.
    """

    # Model and data
    model: str = field(default=DEFAULT_MODEL, metadata=_help(
        f"Base model: '{DEFAULT_MODEL}', 'tiny-random' (tests), a local model directory or a Hub id."))
    subset: str = field(default="", metadata=_help(
        "Path to the training pairs: any file dpo_engine.data.load_pairs reads (jsonl, json, csv, parquet)."))
    drop_invalid: bool = field(default=False, metadata=_help(
        "Train on the subset file's usable rows, leaving out (and listing on stderr) the rows that cannot be used, "
        "instead of refusing the file. Saved selections hold usable rows only."))
    max_length: int = field(default=512, metadata=_help(
        "Tokens per sequence (prompt + one response); responses are cut to fit."))
    max_prompt_length: int = field(default=256, metadata=_help(
        "Tokens kept from the end of the prompt. Must be below max_length."))

    # Loss
    loss: str = field(default="dpo", metadata=_help(f"Preference loss: one of {', '.join(LOSS_NAMES)}."))
    loss_params: dict = field(default_factory=dict, metadata=_help(
        "Loss hyperparameters, e.g. {beta: 0.1}; missing ones take dpo_engine.losses.LOSS_DEFAULTS[loss]."))

    # Adapter
    full_finetune: bool = field(default=False, metadata=_help(
        "Train every weight instead of a LoRA adapter (the reference is then a frozen copy or precomputed)."))
    lora_r: int = field(default=8, metadata=_help("LoRA rank."))
    lora_alpha: float = field(default=16.0, metadata=_help("LoRA scaling numerator: updates are scaled by alpha / r."))
    lora_dropout: float = field(default=0.0, metadata=_help(
        "Dropout on the LoRA input, in [0, 1). The base model's own dropout is always off, as in TRL: "
        "with it the policy and reference would score the same text differently."))
    lora_target_modules: str | list = field(default="all-linear", metadata=_help(
        "Modules that get adapters: 'all-linear' (every linear layer but the LM head) or a list of names."))

    # Optimisation
    learning_rate: float = field(default=5e-5, metadata=_help(
        "Peak learning rate. The paper's 5e-7 (methods §1.9) is for full fine-tuning of 7-8B models; a LoRA "
        "adapter starts at zero and moves only through low-rank updates, so LoRA DPO recipes use rates 10-100x "
        "higher, and a 135M model tolerates larger steps than an 8B one."))
    num_epochs: float = field(default=1.0, metadata=_help("Passes over the subset (fractions allowed)."))
    max_steps: int = field(default=-1, metadata=_help("Optimizer steps; overrides num_epochs when > 0."))
    batch_size: int = field(default=4, metadata=_help("Pairs per forward pass (each pair is two sequences)."))
    gradient_accumulation_steps: int = field(default=1, metadata=_help(
        "Forward passes per optimizer step: the effective batch is batch_size x this."))
    optim: str = field(default="adamw_torch", metadata=_help("Optimizer name, as in transformers (adamw_torch, sgd, ...)."))
    lr_scheduler: str = field(default="cosine", metadata=_help("Learning-rate schedule (cosine, linear, constant, ...)."))
    warmup_ratio: float = field(default=0.1, metadata=_help("Fraction of the steps spent warming up linearly, in [0, 1)."))
    weight_decay: float = field(default=0.0, metadata=_help("AdamW weight decay."))
    max_grad_norm: float = field(default=1.0, metadata=_help("Gradient-norm clipping threshold; 0 turns clipping off."))
    group_by_length: bool = field(default=True, metadata=_help(
        "Batch pairs of similar length together, the heaviest batch first: a batch too large for the device "
        "fails in the first step, not hours in (the batches' order is still shuffled). Off: pairs in random order."))

    # Per-pair training: soft selection, MixDPO routing, curriculum (dpo_engine.training.pair_inputs)
    pair_scores: str = field(default="", metadata=_help(
        "A margins table (parquet or csv with pair_id) holding the per-pair columns named below, joined on "
        "pair_id; empty: the columns are read from the subset file itself."))
    weight_column: str = field(default="", metadata=_help(
        "Column of per-pair loss weights (>= 0): each batch's loss is sum(w * loss) / sum(w). Empty: all 1."))
    madpo_margin_column: str = field(default="", metadata=_help(
        "MADPO: weights 1 - madpo_strength * tanh(margin / (2 * madpo_scale)) from this reward-margin column "
        "(easy pairs damped, hard ones amplified). Not together with weight_column."))
    madpo_strength: float = field(default=0.5, metadata=_help("MADPO weight strength, in [0, 1)."))
    madpo_scale: float = field(default=1.0, metadata=_help("MADPO margin scale (> 0), in the margin's units."))
    sft_margin_column: str = field(default="", metadata=_help(
        "MixDPO: pairs whose value in this margin column is below sft_margin_threshold are trained with SFT on "
        "the chosen response (per-token NLL), the rest with the loss above."))
    sft_margin_threshold: float = field(default=0.0, metadata=_help("MixDPO margin threshold."))
    curriculum_column: str = field(default="", metadata=_help(
        "Train in ascending order of this column (easy to hard, e.g. learning_order) instead of shuffling; "
        "pairs without a value go last. Takes precedence over group_by_length."))
    curriculum_descending: bool = field(default=False, metadata=_help(
        "Curriculum in descending order (for a margin, where larger means easier)."))

    # Reference
    precompute_reference: bool = field(default=True, metadata=_help(
        "Score the reference once over the subset before training (cached on disk per dataset and model), "
        "which removes a forward pass per step. A reference-free loss (simpo) needs none, except with full "
        "fine-tuning, where the initial model is gone after training and pair_rewards.parquet needs it."))

    # Hardware
    precision: str = field(default="auto", metadata=_help(
        "'auto' (bf16 on a CUDA GPU that has it, else fp32), 'fp32', or 'bf16': bf16 autocast (with LoRA the "
        "frozen base weights are also stored in bf16, the adapter stays fp32)."))
    device: str = field(default="auto", metadata=_help("'auto' (cuda, then mps, then cpu), 'cpu', 'cuda' or 'mps'."))
    gradient_checkpointing: bool = field(default=False, metadata=_help(
        "Keep only each layer's input for backward and recompute the rest: activations shrink by about the "
        "number of layers, for about a third more compute per step. Padding-free rows are kept."))
    seed: int = field(default=42, metadata=_help("Seed for LoRA initialisation and data order."))
    num_processes: int = field(default=1, metadata=_help(
        "Training processes, one per GPU (or CPU share), started through accelerate launch (DDP; FSDP or "
        "DeepSpeed with accelerate_config). batch_size is the global batch and must be a multiple of this."))
    accelerate_config: str = field(default="", metadata=_help(
        "An accelerate config file (FSDP, DeepSpeed ZeRO, several machines), passed to accelerate launch as "
        "--config_file unchanged; empty: plain DDP on this machine. Used when num_processes > 1."))

    # Bookkeeping
    logging_steps: int = field(default=1, metadata=_help("Write a metrics.jsonl record every this many steps."))
    save_steps: int = field(default=50, metadata=_help("Checkpoint every this many steps (and at the end)."))
    save_total_limit: int = field(default=2, metadata=_help("Checkpoints kept on disk (the newest ones)."))
    data_map_every: int = field(default=0, metadata=_help(
        "Every this many steps (and at the last), score every subset pair's implicit margin under the current "
        "policy into data_map.jsonl, for the Data map page (confidence, variability, correctness). Each record is "
        "one inference pass over the whole subset; 0 = off."))
    report_to: list = field(default_factory=list, metadata=_help(
        "Trackers to report to besides metrics.jsonl: tensorboard (event files in the run's tensorboard/), wandb "
        "(offline), trackio; none by default."))

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        """A config from plain values (YAML, JSON, a form). Unknown keys raise ``ConfigError`` naming them.

        Numbers given as strings are accepted (PyYAML reads ``5e-5`` as a string).
        """
        check_field_names(cls, values)
        known = {f.name: f for f in fields(cls)}
        config = cls(**{name: coerce_field(name, value, known[name].type) for name, value in values.items()})
        config.check_bounds()
        config.check_processes()
        resolved_loss_params(config.loss, config.loss_params)  # a bad beta is refused here, without torch
        return config

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> "TrainConfig":
        """A config from a YAML file of ``field: value`` lines (relative paths are relative to the working directory).

        YAML aliases are refused (an alias bomb hangs the parser), and so are non-text elements of list fields.
        """
        return cls.from_dict(read_config_yaml(path))

    def check_bounds(self) -> None:
        """``ConfigError`` naming the first numeric field outside ``NUMERIC_BOUNDS`` (torch-free, cheap)."""
        for name, (low, high) in NUMERIC_BOUNDS.items():
            value = getattr(self, name, None)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and not low <= value <= high:
                raise ConfigError(name, f"must be between {low:g} and {high:g}, got {value!r}")

    def check_processes(self) -> None:
        """``ConfigError`` when the processes cannot share the batch or the launch (torch-free, cheap)."""
        if self.batch_size % self.num_processes:
            raise ConfigError("batch_size", f"must be a multiple of num_processes ({self.num_processes}): each "
                                            f"process takes an equal share of a batch, got {self.batch_size}")
        if self.num_processes > 1 and self.device == "mps":
            raise ConfigError("num_processes", "must be 1 on mps (accelerate launch runs on CUDA GPUs or CPUs)")
        if self.accelerate_config and not Path(self.accelerate_config).expanduser().is_file():
            raise ConfigError("accelerate_config", f"file {self.accelerate_config} not found")

    def to_dict(self) -> dict:
        """Plain values that ``from_dict`` reads back to an equal config."""
        return asdict(self)

    def resolved_loss_params(self) -> dict:
        """``loss_params`` over the loss's defaults."""
        return {**LOSS_DEFAULTS.get(self.loss, {}), **self.loss_params}

    def validate(self) -> None:
        """Check every field before launch; raise ``ConfigError`` naming the first bad one.

        Checks the numbers, the loss and its hyperparameters, that the subset loads and has pairs (with the
        per-pair columns the config names), and that the model resolves (this converts the default model once,
        about 25 s). A caller that goes on to use the pairs calls ``checked_inputs()`` instead and loads them once.
        """
        self.checked_inputs()

    def checked_inputs(self) -> tuple[pd.DataFrame, PairInputs]:
        """``validate()``, returning what it read: ``(the subset's pairs in file order, their PairInputs)``.

        Run creation copies the pairs into the run directory and ``train()`` trains on the inputs, so neither
        loads the subset a second time after validating it.
        """
        from dpo_engine.training.pair_inputs import prepare_pair_inputs

        self._check_fields()
        pairs = load_subset(self)
        inputs = prepare_pair_inputs(self, pairs)  # ConfigError naming the column field, file and row
        self._check_model()
        return pairs, inputs

    def _check_fields(self) -> None:
        """Every field's value on its own (no file read); ``ConfigError`` naming the first bad one."""
        import torch
        from transformers.trainer_utils import SchedulerType
        from transformers.training_args import OptimizerNames

        from dpo_engine.training.trackers import check_report_to

        def require(ok: bool, name: str, rule: str) -> None:
            if not ok:
                raise ConfigError(name, f"must be {rule}, got {getattr(self, name)!r}")

        self.check_bounds()
        self.check_processes()
        resolved_loss_params(self.loss, self.loss_params)  # ConfigError names "loss" or the bad hyperparameter
        require(self.max_prompt_length >= 1, "max_prompt_length", ">= 1")
        require(self.max_length > self.max_prompt_length, "max_length", f"> max_prompt_length ({self.max_prompt_length})")
        require(self.learning_rate > 0, "learning_rate", "> 0")
        require(self.num_epochs > 0, "num_epochs", "> 0")
        require(self.max_steps == -1 or self.max_steps > 0, "max_steps", "-1 (use num_epochs) or > 0")
        require(self.batch_size >= 1, "batch_size", ">= 1")
        require(self.gradient_accumulation_steps >= 1, "gradient_accumulation_steps", ">= 1")
        require(0 <= self.warmup_ratio < 1, "warmup_ratio", "in [0, 1)")
        require(self.weight_decay >= 0, "weight_decay", ">= 0")
        require(self.max_grad_norm >= 0, "max_grad_norm", ">= 0")
        require(self.logging_steps >= 1, "logging_steps", ">= 1")
        require(self.save_steps >= 1, "save_steps", ">= 1")
        require(self.save_total_limit >= 1, "save_total_limit", ">= 1")
        check_report_to(self.report_to)
        require(self.lr_scheduler in {s.value for s in SchedulerType}, "lr_scheduler",
                f"one of {', '.join(s.value for s in SchedulerType)}")
        require(self.optim in {o.value for o in OptimizerNames}, "optim", "a transformers optimizer name")
        if not self.full_finetune:
            require(self.lora_r >= 1, "lora_r", ">= 1")
            require(self.lora_alpha > 0, "lora_alpha", "> 0")
            require(0 <= self.lora_dropout < 1, "lora_dropout", "in [0, 1)")
            targets = self.lora_target_modules
            require(targets == "all-linear" or (isinstance(targets, list) and targets
                                                and all(isinstance(t, str) for t in targets)),
                    "lora_target_modules", "'all-linear' or a non-empty list of module names")
        require(self.precision in PRECISIONS, "precision", f"one of {', '.join(PRECISIONS)}")
        require(self.device in DEVICES, "device", f"one of {', '.join(DEVICES)}")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("device", "is 'cuda' but no CUDA GPU is available")
        if self.device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ConfigError("device", "is 'mps' but MPS is not available")
        if self.weight_column and self.madpo_margin_column:
            raise ConfigError("madpo_margin_column", "give weight_column or madpo_margin_column, not both")
        require(0 <= self.madpo_strength < 1, "madpo_strength", "in [0, 1)")
        require(self.madpo_scale > 0, "madpo_scale", "> 0")

    def _check_model(self) -> None:
        """``ConfigError('model', ...)`` unless the model resolves to a base model (not a LoRA adapter)."""
        from dpo_engine.models.loading import adapter_base, resolve_model

        try:
            model_path = resolve_model(self.model)
        except ModelError as error:
            raise ConfigError("model", str(error)) from None
        if adapter_base(model_path) is not None:
            raise ConfigError("model", f"{model_path} is a LoRA adapter: merge it into its base or give the base model")


def read_config_yaml(path: str | os.PathLike) -> Any:
    """The values of a YAML config file (``{}`` when empty), aliases refused; ``UserError`` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {path} not found")
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_NoAliasLoader) or {}
    except _AliasRefused as refused:
        raise UserError(f"config file {path}: {refused}") from None
    except (yaml.YAMLError, UnicodeDecodeError, ValueError) as error:
        raise UserError(f"config file {path} is not valid YAML: {error}") from None


def check_train_fields(train: dict, set_elsewhere: tuple[str, ...], owner: str) -> None:
    """Check a job's ``train:`` mapping (TrainConfig fields shared by the runs it starts, e.g. a loop's or an arena's):
    no field the job sets itself (``set_elsewhere``), every value valid; ``ConfigError`` naming ``train.<field>``."""
    taken = sorted(set(train) & set(set_elsewhere))
    if taken:
        raise ConfigError(f"train.{taken[0]}", f"is set by the {owner}; use the top-level field")
    try:
        TrainConfig.from_dict(train)
    except ConfigError as error:
        raise ConfigError(f"train.{error.field}", str(error).split(": ", 1)[-1]) from None


def check_field_names(config_cls, values: Any) -> None:
    """``ConfigError`` unless ``values`` is a mapping whose keys are all fields of the dataclass ``config_cls``."""
    if not isinstance(values, dict):
        raise ConfigError("config", f"must be a mapping of field names to values, got {type(values).__name__}")
    known = [f.name for f in fields(config_cls)]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(unknown[0], f"unknown field; known fields: {', '.join(sorted(known))}")


def coerce_field(name: str, value: Any, kind: str) -> Any:
    """``value`` as a field of annotated type ``kind`` (``"int"``, ``"float"``, ...), or ``ConfigError``."""
    if kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(name, f"must be true or false, got {value!r}")
        return value
    if kind in ("int", "float"):
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(name, f"must be a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(name, f"must be a finite number, got {value!r}")
        if kind == "int":
            if value != int(value):
                raise ConfigError(name, f"must be a whole number, got {value!r}")
            return int(value)
        return float(value)
    if kind == "dict":
        if not isinstance(value, dict):
            raise ConfigError(name, f"must be a mapping, got {value!r}")
        return dict(value)
    if kind == "list":
        if not isinstance(value, list):
            raise ConfigError(name, f"must be a list, got {value!r}")
        return _text_list(name, value)
    if kind == "str | list":  # a name, or a list of names
        return _text_list(name, value) if isinstance(value, list) else coerce_field(name, value, "str")
    if kind == "str" and not isinstance(value, str):
        raise ConfigError(name, f"must be text, got {value!r}")
    return value


def _text_list(name: str, values: list) -> list[str]:
    """``values`` when every element is text (the list fields hold names); else ``ConfigError`` naming the element."""
    for index, element in enumerate(values):
        if not isinstance(element, str):
            raise ConfigError(f"{name}[{index}]", f"must be text, got {type(element).__name__} {element!r:.60}")
    return list(values)


class _AliasRefused(ValueError):
    """A YAML alias in a config: refused before it is expanded (an alias bomb would take minutes and gigabytes)."""


class _NoAliasLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing aliases as it meets them."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.events.AliasEvent):
            raise _AliasRefused("YAML aliases (*name) are not accepted in configs: write each value out")
        return super().compose_node(parent, index)


def load_subset(config: TrainConfig) -> pd.DataFrame:
    """The training pairs of ``config.subset``; ``ConfigError('subset', ...)`` when missing, unreadable or empty."""
    from dpo_engine.data.pairs import load_pairs

    if not config.subset:
        raise ConfigError("subset", "is empty: give the path of a pairs file")
    if not Path(config.subset).expanduser().exists():
        raise ConfigError("subset", f"file {config.subset} not found")
    try:
        loaded = load_pairs(Path(config.subset).expanduser(), drop_invalid=config.drop_invalid)
    except DataError as error:
        raise ConfigError("subset", str(error)) from None
    dropped = loaded.report.dropped_provenance()
    if dropped:
        rows = ", ".join(map(str, dropped["dropped_rows"][:20])) + (" ..." if dropped["dropped_count"] > 20 else "")
        print(f"{config.subset}: {dropped['dropped_reason']}; rows left out: {dropped['dropped_count']} (data rows "
              f"{rows})", file=sys.stderr)
    pairs = loaded.pairs
    if len(pairs) == 0:
        raise ConfigError("subset", f"{config.subset} has no pairs")
    return pairs
