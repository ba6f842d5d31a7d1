"""The configuration of an iterative-DPO loop: ``RoundsConfig`` (defaults declared once here) and its validation.

Torch-free, so the dashboard can show fields and defaults without loading a model stack. ``validate()`` checks every
field and the prompt files before anything is launched and raises ``ConfigError`` naming the field
(``train.<name>`` for a training override).
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, get_args, get_type_hints

from dpo_engine.errors import ConfigError, DataError
from dpo_engine.paths import ASSETS_DIR
from dpo_engine.selection.rules import RULE_PARAMS
from dpo_engine.training.config import (
    DEFAULT_MODEL,
    DEVICES,
    PRECISIONS,
    check_field_names,
    check_train_fields,
    coerce_field,
    read_config_yaml,
)

Scorer = Literal["builtin", "reward-model", "judge-api"]
Pairing = Literal["best_vs_worst", "all_pairs"]
AdapterMode = Literal["stack", "fresh"]
TAKE_ALL = "all"  # the baseline "rule": train on every online pair
SELECTION_RULES = (*[rule for rule in RULE_PARAMS if rule != "manual"], TAKE_ALL)
DEFAULT_TRAIN_PROMPTS = ASSETS_DIR / "data" / "ultrafeedback_binarized_scored_1200.jsonl"
# Set by the loop for each round; a training override may not replace them.
TRAIN_FIELDS_SET_PER_ROUND = ("model", "subset", "device", "precision")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _help(text: str) -> dict:
    return {"help": text}


@dataclass
class RoundsConfig:
    """One loop of rounds: generate K answers per prompt with the current policy, score them, pair them, compute the
    policy's implicit margins, select, train the next policy, evaluate it against the base model.

    Build it with ``RoundsConfig(...)``, ``from_dict`` or ``from_yaml`` (unknown keys are errors), then ``validate()``.
    """

    name: str = field(default="", metadata=_help(
        "Loop name: its directory is $MARGIN_LAB_HOME/rounds/<name>/ (letters, digits, _ . -)."))
    model: str = field(default=DEFAULT_MODEL, metadata=_help("Base model: the first policy and the evaluation baseline."))
    rounds: int = field(default=3, metadata=_help("Rounds of generate -> score -> select -> train (the paper runs 3)."))

    # Prompts
    prompts: str = field(default="", metadata=_help(
        "Training prompts: a jsonl/csv/json/parquet file with an instruction or prompt column; empty = the bundled "
        "UltraFeedback prompts (1,200)."))
    prompts_per_round: int = field(default=64, metadata=_help(
        "Prompts per round; each round takes the next slice of one seeded shuffle, so no prompt is seen twice."))
    prompt_seed: int = field(default=0, metadata=_help("Seed of that shuffle."))

    # Generation
    samples_per_prompt: int = field(default=4, metadata=_help("K answers sampled per prompt (the paper samples 5)."))
    temperature: float = field(default=0.7, metadata=_help("Sampling temperature (> 0; the paper uses 0.7)."))
    top_p: float = field(default=1.0, metadata=_help("Nucleus sampling share, in (0, 1]."))
    max_new_tokens: int = field(default=128, metadata=_help("Token cap per sampled answer."))
    generation_batch_size: int = field(default=16, metadata=_help("Prompts decoded at once."))
    seed: int = field(default=0, metadata=_help("Sampling seed (answer i of the round samples with seed + i)."))

    # Scoring and pairs
    scorer: Scorer = field(default="builtin", metadata=_help(
        "Who scores each answer: 'builtin' (the shipped stand-in reward head), 'reward-model' (a local "
        "sequence-classification model) or 'judge-api' (an OpenAI-compatible chat model asked for a 1-10 score)."))
    reward_model: str = field(default="", metadata=_help("Local reward-model directory, for scorer 'reward-model'."))
    judge_base_url: str = field(default="", metadata=_help("OpenAI-compatible base URL, for scorer 'judge-api'."))
    judge_model: str = field(default="", metadata=_help("Model name at that endpoint, for scorer 'judge-api'."))
    judge_api_key_env: str = field(default="OPENAI_API_KEY", metadata=_help(
        "Environment variable holding the endpoint's API key (sent as a Bearer token when set)."))
    pairing: Pairing = field(default="best_vs_worst", metadata=_help(
        "'best_vs_worst': one pair per prompt, highest vs lowest score (the paper); 'all_pairs': every pair of "
        "answers with different scores."))
    tie_tolerance: float = field(default=0.0, metadata=_help(
        "Score differences at or below this are ties: such pairs are dropped and listed in ties.jsonl."))

    # Selection
    selection_rule: str = field(default="top_k", metadata=_help(
        f"A rule of `dpo-engine select` ({', '.join(SELECTION_RULES[:-1])}) or 'all' (train on every pair: the "
        "baseline)."))
    selection_params: dict = field(default_factory=lambda: {"score": "dm_mul", "frac": 0.25}, metadata=_help(
        "The rule's parameters, as `dpo_engine.selection.select_pairs` takes them (default: DM-MUL, top 25 %)."))

    # Training
    adapter_mode: AdapterMode = field(default="stack", metadata=_help(
        "'stack': each round trains a LoRA adapter on the previous policy (merged), which is also its reference, as "
        "in iterative DPO; 'fresh': each round trains a new adapter on the base model, against the base."))
    train: dict = field(default_factory=lambda: {"num_epochs": 1.0}, metadata=_help(
        "TrainConfig fields for each round's run (e.g. {learning_rate: 5e-5, max_steps: 20}); model, subset, "
        "device and precision are set by the loop."))

    # Evaluation
    eval_prompts: str = field(default="", metadata=_help(
        "Held-out prompts: a prompt file, or empty for the bundled AlpacaEval set."))
    eval_n: int = field(default=32, metadata=_help("How many held-out prompts (a seeded subset)."))
    eval_max_new_tokens: int = field(default=128, metadata=_help("Token cap of the greedy evaluation answers."))

    # Hardware
    precision: str = field(default="fp32", metadata=_help("'fp32' or 'bf16' (generation, scoring and training)."))
    device: str = field(default="auto", metadata=_help("'auto', 'cpu', 'cuda' or 'mps'."))

    @classmethod
    def from_dict(cls, values: dict) -> RoundsConfig:
        """A config from plain values; unknown keys and values of the wrong type raise ``ConfigError``."""
        check_field_names(cls, values)
        hints = get_type_hints(cls)
        return cls(**{name: _coerce(name, value, hints[name]) for name, value in values.items()})

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> RoundsConfig:
        """A config from a YAML file, read as TrainConfig's are (safe loader, aliases refused)."""
        return cls.from_dict(read_config_yaml(path))

    def to_dict(self) -> dict:
        """Plain values that ``from_dict`` reads back to an equal config."""
        return asdict(self)

    def validate(self) -> None:
        """Check every field and that the prompt files hold enough prompts; ``ConfigError`` names the first bad one."""
        def require(ok: bool, name: str, rule: str) -> None:
            if not ok:
                raise ConfigError(name, f"must be {rule}, got {getattr(self, name)!r}")

        require(bool(_NAME.match(self.name)), "name", "a non-empty name of letters, digits, _ . -")
        require(bool(self.model), "model", "a model name or directory")
        for name in ("rounds", "prompts_per_round", "max_new_tokens", "generation_batch_size", "eval_n",
                     "eval_max_new_tokens"):
            require(getattr(self, name) >= 1, name, ">= 1")
        require(self.samples_per_prompt >= 2, "samples_per_prompt", ">= 2 (a pair needs two answers)")
        require(self.temperature > 0, "temperature", "> 0 (greedy decoding would give K equal answers)")
        require(0 < self.top_p <= 1, "top_p", "in (0, 1]")
        require(self.tie_tolerance >= 0, "tie_tolerance", ">= 0")
        require(self.precision in PRECISIONS, "precision", f"one of {', '.join(PRECISIONS)}")
        require(self.device in DEVICES, "device", f"one of {', '.join(DEVICES)}")
        if self.scorer == "reward-model":
            require(bool(self.reward_model) and Path(self.reward_model).expanduser().is_dir(), "reward_model",
                    "a local reward-model directory (scorer 'reward-model')")
        if self.scorer == "judge-api":
            require(self.judge_base_url.startswith(("http://", "https://")), "judge_base_url",
                    "an http(s) URL (scorer 'judge-api')")
            require(bool(self.judge_model), "judge_model", "a model name (scorer 'judge-api')")
        self._validate_selection()
        self._validate_train()
        self._validate_prompts()

    def _validate_selection(self) -> None:
        if self.selection_rule not in SELECTION_RULES:
            raise ConfigError("selection_rule", f"must be one of {', '.join(SELECTION_RULES)}, got "
                                                f"{self.selection_rule!r}")
        allowed = frozenset() if self.selection_rule == TAKE_ALL else RULE_PARAMS[self.selection_rule]
        unknown = sorted(set(self.selection_params) - allowed)
        if unknown:
            raise ConfigError(f"selection_params.{unknown[0]}", f"rule '{self.selection_rule}' takes "
                                                                f"{', '.join(sorted(allowed)) or 'no parameters'}")

    def _validate_train(self) -> None:
        check_train_fields(self.train, TRAIN_FIELDS_SET_PER_ROUND, "loop each round")

    def _validate_prompts(self) -> None:
        from dpo_engine.evaluation.generation import load_eval_prompts

        needed = self.rounds * self.prompts_per_round
        for name, source, count in (("prompts", self.train_prompts_source, needed),
                                    ("eval_prompts", self.eval_prompts or None, self.eval_n)):
            if source is not None and not Path(source).expanduser().is_file():
                raise ConfigError(name, f"file {source} not found")
            try:
                available = len(load_eval_prompts(source))
            except DataError as error:
                raise ConfigError(name, str(error)) from None
            if available < count:
                raise ConfigError(name, f"holds {available} prompts; {count} are needed")

    @property
    def train_prompts_source(self) -> str:
        return self.prompts or str(DEFAULT_TRAIN_PROMPTS)

    @property
    def takes_everything(self) -> bool:
        return self.selection_rule == TAKE_ALL


def _coerce(name: str, value, annotation):
    """``value`` as a field of type ``annotation``, or ``ConfigError``: choices here, the rest as TrainConfig's
    fields are read (`dpo_engine.training.config.coerce_field`; YAML reads ``5e-5`` as text)."""
    if getattr(annotation, "__origin__", None) is Literal:
        choices = get_args(annotation)
        if value not in choices:
            raise ConfigError(name, f"must be one of {', '.join(choices)}, got {value!r}")
        return value
    kind = {bool: "bool", int: "int", float: "float", dict: "dict"}.get(annotation, "str")
    return coerce_field(name, value, kind)
