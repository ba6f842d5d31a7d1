"""The configuration of a selection arena: ``ArenaConfig`` (defaults declared once here) and its validation.

An arena trains one LoRA run per contestant (each selector at the same budget, plus ``random`` at several seeds)
with the same TrainConfig except the subset, and evaluates every run on the same prompts. Torch-free, so the
dashboard can build and check a config without loading a model stack; ``validate()`` raises ``ConfigError`` naming
the field (``selectors[i].rule``, ``train.<name>``).
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import get_type_hints

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

DEFAULT_PAIRS = ASSETS_DIR / "data" / "ultrafeedback_binarized_scored_1200.jsonl"
DEFAULT_MARGINS = ASSETS_DIR / "margins" / "ultrafeedback.parquet"
# Rules an arena may run: every rule of `select_pairs` but an explicit id list (not a selector).
ARENA_RULES = tuple(rule for rule in RULE_PARAMS if rule != "manual")
# Rules whose size is not set by k (threshold: by its bounds; selective_dpo: by tau): cut to the budget instead.
UNSIZED_RULES = ("threshold", "selective_dpo")
RANDOM_PREFIX = "random-s"
# Set by the arena for every run; a training override may not replace them.
TRAIN_FIELDS_SET_BY_ARENA = ("model", "subset", "device", "precision")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
DEFAULT_SELECTORS = (
    {"name": "dm-mul", "rule": "top_k", "params": {"score": "dm_mul"}},
    {"name": "smallest-gap", "rule": "smallest_gap", "params": {}},
    {"name": "alignment-potential", "rule": "alignment_potential", "params": {}},
)


def _help(text: str) -> dict:
    return {"help": text}


@dataclass
class ArenaConfig:
    """One arena: N selectors at the same budget plus random at several seeds, one LoRA run each, one evaluation.

    Build it with ``ArenaConfig(...)``, ``from_dict`` or ``from_yaml`` (unknown keys are errors), then ``validate()``.
    """

    name: str = field(default="", metadata=_help(
        "Arena name: its directory is $MARGIN_LAB_HOME/arenas/<name>/ (letters, digits, _ . -)."))
    pairs: str = field(default="", metadata=_help(
        "Preference pairs (any format `dpo-engine validate` reads); empty = the bundled UltraFeedback 1,200."))
    margins: str = field(default="", metadata=_help(
        "Margins table of those pairs (`dpo-engine score`); empty = the bundled UltraFeedback margins."))
    budget: int = field(default=120, metadata=_help("Pairs each contestant trains on (every selector the same)."))
    selectors: list = field(default_factory=lambda: [dict(s) for s in DEFAULT_SELECTORS], metadata=_help(
        "Contestants: a list of {name, rule, params}; rule is one of `dpo-engine select`'s, params its parameters "
        "without k/frac (the arena sets k = budget; threshold and selective_dpo are cut to the budget)."))
    random_seeds: list = field(default_factory=lambda: [1, 2, 3], metadata=_help(
        "Seeds of the random contestants (each one run); their mean is what every selector is compared with."))
    source_column: str = field(default="source", metadata=_help(
        "Column of the pairs file that names where a pair came from, for the subsets' source mix."))
    model: str = field(default=DEFAULT_MODEL, metadata=_help("Base model every contestant's LoRA run trains on."))
    train: dict = field(default_factory=lambda: {"num_epochs": 1.0}, metadata=_help(
        "TrainConfig fields shared by every run (e.g. {learning_rate: 5e-5, max_steps: 20}); model, subset, "
        "device and precision are set by the arena."))
    eval_prompts: str = field(default="", metadata=_help(
        "Held-out prompts: a prompt file, or empty for the bundled AlpacaEval set."))
    eval_n: int = field(default=64, metadata=_help("How many held-out prompts (a seeded subset, the same for all)."))
    eval_max_new_tokens: int = field(default=128, metadata=_help("Token cap of the greedy evaluation answers."))
    judge: str = field(default="builtin", metadata=_help(
        "Judge of each answer against the base model's ('builtin', 'reward-model:PATH', 'openai:NAME')."))
    precision: str = field(default="fp32", metadata=_help("'fp32' or 'bf16' (training and generation)."))
    device: str = field(default="auto", metadata=_help("'auto', 'cpu', 'cuda' or 'mps'."))

    @classmethod
    def from_dict(cls, values: dict) -> ArenaConfig:
        """A config from plain values; unknown keys and values of the wrong type raise ``ConfigError``."""
        check_field_names(cls, values)
        hints = get_type_hints(cls)
        coerced = {}
        for name, value in values.items():
            if name == "selectors":
                coerced[name] = _selectors(value)
            elif name == "random_seeds":
                coerced[name] = _seeds(value)
            else:
                kind = {int: "int", dict: "dict"}.get(hints[name], "str")
                coerced[name] = coerce_field(name, value, kind)
        return cls(**coerced)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> ArenaConfig:
        """A config from a YAML file, read as TrainConfig's are (safe loader, aliases refused)."""
        return cls.from_dict(read_config_yaml(path))

    def to_dict(self) -> dict:
        """Plain values that ``from_dict`` reads back to an equal config."""
        return asdict(self)

    @property
    def pairs_source(self) -> str:
        return self.pairs or str(DEFAULT_PAIRS)

    @property
    def margins_source(self) -> str:
        return self.margins or str(DEFAULT_MARGINS)

    def contestants(self) -> list[dict]:
        """Every contestant as ``{name, rule, params}``: the selectors, then ``random-s<seed>`` per seed."""
        randoms = [{"name": f"{RANDOM_PREFIX}{seed}", "rule": "random", "params": {"seed": seed}}
                   for seed in self.random_seeds]
        return [*({"params": {}, **selector} for selector in self.selectors), *randoms]

    def validate(self) -> None:
        """Check every field and that the files exist; ``ConfigError`` names the first bad one."""
        def require(ok: bool, name: str, rule: str) -> None:
            if not ok:
                raise ConfigError(name, f"must be {rule}, got {getattr(self, name)!r}")

        require(bool(_NAME.match(self.name)), "name", "a non-empty name of letters, digits, _ . -")
        require(bool(self.model), "model", "a model name or directory")
        for name in ("budget", "eval_n", "eval_max_new_tokens"):
            require(getattr(self, name) >= 1, name, ">= 1")
        require(len(self.random_seeds) >= 1, "random_seeds", "at least one seed (the reference of every comparison)")
        require(len(set(self.random_seeds)) == len(self.random_seeds), "random_seeds", "distinct seeds")
        require(self.precision in PRECISIONS, "precision", f"one of {', '.join(PRECISIONS)}")
        require(self.device in DEVICES, "device", f"one of {', '.join(DEVICES)}")
        require(bool(self.judge), "judge", "a judge spec")
        self._validate_selectors()
        self._validate_train()
        self._validate_files()

    def _validate_selectors(self) -> None:
        if not self.selectors:
            raise ConfigError("selectors", "list at least one selector")
        names = [contestant["name"] for contestant in self.contestants()]
        for index, selector in enumerate(self.selectors):
            where = f"selectors[{index}]"
            if not _NAME.match(str(selector.get("name", ""))):
                raise ConfigError(f"{where}.name", f"must be letters, digits, _ . -, got {selector.get('name')!r}")
            if names.count(selector["name"]) > 1:
                raise ConfigError(f"{where}.name", f"'{selector['name']}' names two contestants")
            rule = selector.get("rule")
            if rule not in ARENA_RULES:
                raise ConfigError(f"{where}.rule", f"must be one of {', '.join(ARENA_RULES)}, got {rule!r}")
            params = selector.get("params") or {}
            sized = {"k", "frac"} & set(params)
            if sized:
                raise ConfigError(f"{where}.params.{sorted(sized)[0]}", "is set by the arena: use budget")
            unknown = sorted(set(params) - RULE_PARAMS[rule])
            if unknown:
                raise ConfigError(f"{where}.params.{unknown[0]}",
                                  f"rule '{rule}' takes {', '.join(sorted(RULE_PARAMS[rule]))}")

    def _validate_train(self) -> None:
        check_train_fields(self.train, TRAIN_FIELDS_SET_BY_ARENA, "arena for every run")

    def _validate_files(self) -> None:
        from dpo_engine.evaluation.generation import load_eval_prompts

        for name, source in (("pairs", self.pairs_source), ("margins", self.margins_source)):
            if not Path(source).expanduser().exists():
                raise ConfigError(name, f"file {source} not found")
        if self.eval_prompts and not Path(self.eval_prompts).expanduser().is_file():
            raise ConfigError("eval_prompts", f"file {self.eval_prompts} not found")
        try:
            available = len(load_eval_prompts(self.eval_prompts or None))
        except DataError as error:
            raise ConfigError("eval_prompts", str(error)) from None
        if available < self.eval_n:
            raise ConfigError("eval_prompts", f"holds {available} prompts; eval_n is {self.eval_n}")


def _selectors(value) -> list[dict]:
    """``selectors`` as a list of ``{name, rule, params}`` dicts; ``ConfigError`` naming the bad element."""
    if not isinstance(value, list):
        raise ConfigError("selectors", f"must be a list of {{name, rule, params}}, got {value!r}")
    selectors = []
    for index, selector in enumerate(value):
        if not isinstance(selector, dict):
            raise ConfigError(f"selectors[{index}]", f"must be a mapping {{name, rule, params}}, got {selector!r}")
        unknown = sorted(set(selector) - {"name", "rule", "params"})
        if unknown:
            raise ConfigError(f"selectors[{index}].{unknown[0]}", "unknown key; a selector has name, rule, params")
        params = selector.get("params") or {}
        if not isinstance(params, dict):
            raise ConfigError(f"selectors[{index}].params", f"must be a mapping, got {params!r}")
        selectors.append({"name": str(selector.get("name", "")), "rule": selector.get("rule"), "params": params})
    return selectors


def _seeds(value) -> list[int]:
    if not isinstance(value, list):
        raise ConfigError("random_seeds", f"must be a list of whole numbers, got {value!r}")
    return [coerce_field(f"random_seeds[{index}]", seed, "int") for index, seed in enumerate(value)]


@dataclass
class ArenaRequest:
    """What the dashboard's arena job runs: ``dpo-engine arena CONFIG.yaml`` (an ArenaConfig written as YAML)."""

    config: str = field(metadata={"help": "arena configuration (ArenaConfig fields as YAML)"})
