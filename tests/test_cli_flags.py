"""dpo_engine.cli.flags: flags generated from a config dataclass, and argv that rebuilds the same config."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Literal

import pytest

from dpo_engine.cli.flags import add_config_arguments, config_from_args, config_to_argv


@dataclass
class ToyConfig:
    pairs: str = field(metadata={"help": "the data"})
    out: str = field(metadata={"help": "where to write"})
    max_length: int = field(default=1024, metadata={"help": "tokens"})
    learning_rate: float = 5e-5
    dtype: Literal["auto", "fp32", "bf16"] = "auto"
    reward_model: str | None = None
    shuffle: bool = True
    report_to: tuple[str, ...] = ()


def parse(argv):
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, ToyConfig, positional=("pairs",))
    return parser, parser.parse_args(argv)


def test_flags_carry_types_defaults_choices_and_help():
    parser, args = parse(["data.jsonl", "--out", "m.parquet", "--max-length", "256", "--dtype", "bf16",
                          "--no-shuffle", "--report-to", "tensorboard", "wandb"])
    config = config_from_args(ToyConfig, args)
    assert config == ToyConfig("data.jsonl", "m.parquet", max_length=256, dtype="bf16", shuffle=False,
                               report_to=("tensorboard", "wandb"))
    assert "tokens" in parser.format_help()
    with pytest.raises(SystemExit):
        parse(["data.jsonl", "--out", "x", "--dtype", "fp64"])  # not a choice
    with pytest.raises(SystemExit):
        parse(["data.jsonl"])  # --out has no default: required


def test_defaults_come_from_the_dataclass_alone():
    _, args = parse(["data.jsonl", "--out", "m.parquet"])
    assert config_from_args(ToyConfig, args) == ToyConfig("data.jsonl", "m.parquet")


@pytest.mark.parametrize("config", [
    ToyConfig("a b.jsonl", "o.parquet"),
    ToyConfig("d.jsonl", "o.csv", max_length=64, learning_rate=1e-3, dtype="fp32", reward_model="/rm", shuffle=False,
              report_to=("tensorboard",)),
])
def test_argv_round_trips_to_the_same_config(config):
    argv = config_to_argv(config, positional=("pairs",))
    assert argv[0] == config.pairs
    _, args = parse(argv)
    assert config_from_args(ToyConfig, args) == config


def test_argv_lists_only_what_differs_from_the_defaults():
    assert config_to_argv(ToyConfig("d", "o", max_length=64), positional=("pairs",)) == [
        "d", "--out", "o", "--max-length", "64"]
