"""The trainer's per-pair hook: curriculum order, loss weights and MixDPO routing, checked on the first step by hand."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch

from dpo_engine.errors import ConfigError
from dpo_engine.files import read_jsonl
from dpo_engine.models.loading import TINY_MODEL, load_model
from dpo_engine.models.logps import policy_logps
from dpo_engine.models.tokenization import collate, encode_pair
from dpo_engine.training.config import TrainConfig
from dpo_engine.training.pair_inputs import prepare_pair_inputs
from dpo_engine.training.config import load_subset
from dpo_engine.training.trainer import train

DIFFICULTY = [3.0, 1.0, 4.0, 2.0]  # curriculum order: pairs 1, 3, 0, 2
MARGIN = [2.0, -1.0, 0.5, 5.0]  # below 0: SFT (pair 1 only)
WEIGHT = [1.0, 3.0, 1.0, 1.0]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def write_subset(path: Path, **columns) -> Path:
    records = []
    for i in range(4):
        record = {
            "id": f"q{i}",
            "prompt": [{"role": "user", "content": f"Question {i}: what is {i} + {i}?"}],
            "chosen": [{"role": "assistant", "content": f"It is {2 * i}."}],
            "rejected": [{"role": "assistant", "content": f"No idea, maybe {i}{'!' * i}."}],
        }
        record.update({name: values[i] for name, values in columns.items()})
        records.append(record)
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def config_for(subset: Path, **overrides) -> TrainConfig:
    values = dict(model=TINY_MODEL, subset=str(subset), max_steps=1, batch_size=2, learning_rate=1e-2,
                  lr_scheduler="constant", warmup_ratio=0.0, max_length=256, max_prompt_length=128, device="cpu")
    return TrainConfig(**{**values, **overrides})


def chosen_nll_per_token(config: TrainConfig, row: int) -> float:
    """The SFT loss of one pair's chosen response under the base model (the policy at step 1: LoRA's B is 0)."""
    pairs = load_subset(config)
    model, tokenizer = load_model(TINY_MODEL, device="cpu")
    model.eval()
    pair = pairs.iloc[row]
    encoded = encode_pair(tokenizer, list(pair.prompt_messages), pair.chosen, pair.rejected, 256, 128)
    with torch.inference_mode():
        out = policy_logps(model, collate([encoded], tokenizer.pad_token_id))
    return -out["chosen_logps"].item() / out["chosen_tokens"].item()


def test_first_step_is_the_curriculum_batch_weighted_and_routed(tmp_path):
    subset = write_subset(tmp_path / "pairs.jsonl", difficulty=DIFFICULTY, margin=MARGIN, w=WEIGHT)
    config = config_for(subset, curriculum_column="difficulty", sft_margin_column="margin", weight_column="w")
    config.validate()
    summary = train(config, tmp_path / "run")

    # Step 1 trains pairs 1 and 3 (the two easiest). Pair 1 (margin -1 < 0) gets SFT with weight 3, pair 3 DPO at
    # policy == reference, i.e. log 2, with weight 1.
    expected = (3.0 * chosen_nll_per_token(config, 1) + 1.0 * math.log(2)) / 4.0
    first = next(iter(read_jsonl(tmp_path / "run" / "metrics.jsonl")))
    assert first["loss"] == pytest.approx(expected, rel=1e-4)
    rewards = pd.read_parquet(summary["pair_rewards"])
    assert rewards.pair_id.tolist() == ["q1", "q3", "q0", "q2"]  # the run keeps the curriculum order


def test_madpo_weights_and_descending_curriculum_from_a_scores_table(tmp_path):
    subset = write_subset(tmp_path / "pairs.jsonl")
    scores = pd.DataFrame({"pair_id": ["q3", "q2", "q1", "q0"], "external_margin": MARGIN[::-1]})
    scores.to_parquet(tmp_path / "margins.parquet")
    config = config_for(subset, pair_scores=str(tmp_path / "margins.parquet"), madpo_margin_column="external_margin",
                        curriculum_column="external_margin", curriculum_descending=True)
    inputs = prepare_pair_inputs(config, load_subset(config))
    assert inputs.pairs.pair_id.tolist() == ["q3", "q0", "q2", "q1"]  # margins 5, 2, 0.5, -1: easiest first
    expected = [1 - 0.5 * math.tanh(m / 2) for m in (5.0, 2.0, 0.5, -1.0)]
    assert inputs.weight.tolist() == pytest.approx(expected)
    assert inputs.sequential and inputs.use_sft is None


@pytest.mark.parametrize("columns,overrides,field,text", [
    ({}, {"weight_column": "w"}, "weight_column", "column 'w' is not in"),
    ({"w": [1.0, -2.0, 1.0, 1.0]}, {"weight_column": "w"}, "weight_column", "row 1"),
    ({"w": [1.0, "heavy", 1.0, 1.0]}, {"weight_column": "w"}, "weight_column", "row 1"),
    ({"w": [1.0] * 4}, {"weight_column": "w", "madpo_margin_column": "w"}, "madpo_margin_column", "not both"),
])
def test_bad_per_pair_settings_name_the_field(tmp_path, columns, overrides, field, text):
    config = config_for(write_subset(tmp_path / "pairs.jsonl", **columns), **overrides)
    with pytest.raises(ConfigError) as error:
        config.validate()
    assert error.value.field == field and text in str(error.value)
