"""EvalConfig: `dpo-engine eval`'s flags generated from it, device defaults, validation; batched sampling."""

import argparse

import pytest
import torch

from dpo_engine.cli.eval import add_parser
from dpo_engine.cli.flags import config_from_args, config_to_argv
from dpo_engine.errors import ConfigError
from dpo_engine.evaluation.config import EvalConfig
from dpo_engine.evaluation.decoding import Sampler, uniforms
from dpo_engine.evaluation.generation import GenerationSettings

EVERY_FLAG = [
    "run-a", "run-b", "--judge", "reward-model:/models/rm", "--prompts", "p.jsonl", "--n", "4", "--seed", "2",
    "--baseline", "reference", "--compare-to", "run-b", "--max-new-tokens", "12", "--temperature", "0.7",
    "--top-p", "0.9", "--batch-size", "3", "--dtype", "bf16", "--device", "cpu", "--name", "x",
    "--progress-file", "progress.json",
]


def parse(argv: list[str]) -> EvalConfig:
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    return config_from_args(EvalConfig, parser.parse_args(["eval", *argv]))


def test_every_eval_flag_is_generated_and_round_trips():
    config = parse(EVERY_FLAG)
    assert config == EvalConfig(
        run_ids=["run-a", "run-b"], judge="reward-model:/models/rm", prompts="p.jsonl", n=4, seed=2,
        baseline="reference", compare_to="run-b", max_new_tokens=12, temperature=0.7, top_p=0.9, batch_size=3,
        dtype="bf16", device="cpu", name="x", progress_file="progress.json",
    )
    config.validate()
    assert parse(config_to_argv(config, positional=("run_ids",))) == config
    assert parse(["run-a"]) == EvalConfig(run_ids=["run-a"])


def test_generation_defaults_follow_the_device():
    settings = GenerationSettings.from_eval_config(parse(["run-a"]))
    assert (settings.max_new_tokens, settings.batch_size, settings.dtype) == (None, None, "auto")
    cpu, cuda = settings.resolved("cpu"), settings.resolved("cuda")
    assert (cpu.max_new_tokens, cpu.batch_size, cpu.dtype, cpu.device) == (256, 16, "fp32", "cpu")
    assert (cuda.max_new_tokens, cuda.batch_size, cuda.dtype) == (2048, 64, "bf16")
    assert cuda.describe() == "cuda, bf16, 64 slots, up to 2048 new tokens, greedy"
    explicit = GenerationSettings(max_new_tokens=12, batch_size=3, dtype="fp32").resolved("cuda")
    assert (explicit.max_new_tokens, explicit.batch_size, explicit.dtype) == (12, 3, "fp32")


@pytest.mark.parametrize("overrides, field", [
    ({"run_ids": []}, "run_ids"),
    ({"judge": "gpt4"}, "judge"),
    ({"n": 0}, "n"),
    ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"top_p": 0.0}, "top_p"),
    ({"batch_size": 0}, "batch_size"),
    ({"device": "tpu"}, "device"),
    ({"compare_to": "run-z"}, "compare_to"),
])
def test_bad_eval_configs_name_their_field(overrides, field):
    with pytest.raises(ConfigError) as error:
        EvalConfig(**{"run_ids": ["run-a"], **overrides}).validate()
    assert error.value.field == field


def test_uniforms_are_a_fixed_even_function_of_seed_and_step():
    seeds = torch.arange(20_000) % 100
    steps = torch.arange(20_000) // 100
    values = uniforms(seeds, steps)
    assert values.min() >= 0 and values.max() < 1 and values.dtype == torch.float32
    counts = torch.histc(values, bins=10, min=0, max=1)
    assert (counts - 2000).abs().max() < 200  # ~4.5 standard deviations of a bin count
    assert torch.equal(uniforms(seeds.flip(0), steps.flip(0)), values.flip(0))
    assert len(set(values.tolist())) > 19_000  # distinct (seed, step) pairs give distinct numbers


def test_batched_sampling_draws_each_token_at_its_probability_whatever_the_batch():
    probabilities = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probabilities.log().expand(8000, 4)
    rows = [{"seed": i, "answer": []} for i in range(8000)]
    tokens = torch.tensor(Sampler(temperature=1.0, top_p=1.0)(logits, rows))
    frequencies = torch.bincount(tokens, minlength=4) / 8000
    torch.testing.assert_close(frequencies, probabilities, atol=0.02, rtol=0)
    alone = Sampler(1.0, 1.0)(logits[:1], [rows[4321]])
    assert alone == [int(tokens[4321])]
    nucleus = torch.tensor(Sampler(temperature=1.0, top_p=0.6)(logits, rows))
    assert set(nucleus.tolist()) == {0, 1}  # top-p 0.6 keeps the two most likely tokens
