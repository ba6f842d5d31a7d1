"""Answer generation for evaluation: prompt sets, batched greedy decoding, the resumable per-batch cache."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from dpo_engine.errors import ConfigError, DataError
from dpo_engine.evaluation import generation
from dpo_engine.evaluation.generation import (
    GenerationSettings,
    generate,
    load_eval_prompts,
)
from dpo_engine.models import TINY_MODEL

INSTRUCTIONS = [
    "Name a colour.",
    "What is two plus two?",
    "Write a haiku about rain falling on a tin roof at night.",
    "Hi",
    "List three fruits.",
    "Explain in one sentence why the sky is blue during the day.",
]


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """The tiny model's matrices are 64 wide: with 2 threads on a busy 2-core machine each op waits on thread
    synchronisation (about 4 ms instead of 0.1 ms), so these tests run single-threaded."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def prompts(tmp_path) -> pd.DataFrame:
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"id": f"q{i}", "instruction": text}) + "\n" for i, text in enumerate(INSTRUCTIONS)))
    return load_eval_prompts(path)


def count_batches(monkeypatch) -> list[int]:
    """Count ``generate_batch`` calls (one per batch actually generated)."""
    calls = []
    original = generation.generate_batch

    def counting(model, tokenizer, instructions, settings):
        calls.append(len(instructions))
        return original(model, tokenizer, instructions, settings)

    monkeypatch.setattr(generation, "generate_batch", counting)
    return calls


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_generation_resumes_after_interruption_with_identical_outputs(prompts, perturbed_adapter, monkeypatch, temperature):
    settings = GenerationSettings(max_new_tokens=8, batch_size=2, temperature=temperature)

    class Interrupted(Exception):
        pass

    def stop_after_first_batch(done, total):
        if 0 < done < total:
            raise Interrupted

    with pytest.raises(Interrupted):
        generate(TINY_MODEL, perturbed_adapter, prompts, settings, progress=stop_after_first_batch)
    cache = generation.generations_dir()
    [cache_dir] = list(cache.iterdir())
    assert len(list(cache_dir.glob("part-*.parquet"))) == 1

    batches = count_batches(monkeypatch)
    seen = []
    resumed = generate(TINY_MODEL, perturbed_adapter, prompts, settings, progress=lambda done, total: seen.append(done))
    assert batches == [2, 2]  # only the two remaining batches
    assert seen == [2, 4, 6]
    assert resumed.prompt_id.tolist() == prompts.prompt_id.tolist()
    assert resumed.attrs["generation"]["settings"]["temperature"] == temperature

    shutil.rmtree(cache_dir)
    uninterrupted = generate(TINY_MODEL, perturbed_adapter, prompts, settings)
    pd.testing.assert_frame_equal(resumed, uninterrupted)


def test_cache_is_reused_and_a_settings_change_starts_a_new_one(prompts, perturbed_adapter, monkeypatch):
    first = generate(TINY_MODEL, perturbed_adapter, prompts, GenerationSettings(max_new_tokens=6, batch_size=3))
    batches = count_batches(monkeypatch)
    again = generate(TINY_MODEL, perturbed_adapter, prompts, GenerationSettings(max_new_tokens=6, batch_size=3))
    assert batches == []  # everything came from the cache
    pd.testing.assert_frame_equal(first, again)

    longer = generate(TINY_MODEL, perturbed_adapter, prompts, GenerationSettings(max_new_tokens=10, batch_size=3))
    assert batches == [3, 3]
    assert longer.attrs["generation"]["cache_dir"] != first.attrs["generation"]["cache_dir"]
    assert (longer.output_tokens >= first.output_tokens).all()
    base = generate(TINY_MODEL, None, prompts, GenerationSettings(max_new_tokens=6, batch_size=3))
    assert base.attrs["generation"]["cache_dir"] != first.attrs["generation"]["cache_dir"]  # adapter is in the key
    meta = json.loads((Path(first.attrs["generation"]["cache_dir"]) / "meta.json").read_text())
    assert meta["settings"]["max_new_tokens"] == 6 and meta["adapter"] == str(perturbed_adapter)


def test_batched_greedy_outputs_equal_one_prompt_at_a_time(prompts, perturbed_adapter):
    batched = generate(TINY_MODEL, perturbed_adapter, prompts, GenerationSettings(max_new_tokens=12, batch_size=6))
    single = generate(TINY_MODEL, perturbed_adapter, prompts, GenerationSettings(max_new_tokens=12, batch_size=1))
    assert batched.output.tolist() == single.output.tolist()
    assert batched.output_tokens.tolist() == single.output_tokens.tolist()
    assert batched.output.nunique() > 1  # the answers really depend on the prompt


def test_bundled_prompt_set_and_seeded_subsets():
    everything = load_eval_prompts()
    assert len(everything) == 805
    assert list(everything.columns) == ["prompt_id", "instruction", "reference_output", "dataset"]
    assert (everything.reference_output.str.len() > 0).all()

    subset = load_eval_prompts(n=20, seed=3)
    assert subset.equals(load_eval_prompts(n=20, seed=3))
    assert not subset.prompt_id.equals(load_eval_prompts(n=20, seed=4).prompt_id)
    assert set(subset.prompt_id) <= set(everything.prompt_id)
    positions = everything.reset_index().set_index("prompt_id").loc[subset.prompt_id, "index"]
    assert positions.is_monotonic_increasing  # file order kept
    assert subset.attrs["prompt_set"]["n"] == 20 and subset.attrs["prompt_set"]["n_total"] == 805
    assert len(load_eval_prompts(n=5000)) == 805


def test_custom_prompt_files(tmp_path):
    csv = tmp_path / "mine.csv"
    pd.DataFrame({"prompt": ["Say hi.", "Count to three."]}).to_csv(csv, index=False)
    prompts = load_eval_prompts(csv)
    assert prompts.prompt_id.tolist() == ["mine-0", "mine-1"]
    assert prompts.reference_output.tolist() == ["", ""]
    assert prompts.dataset.tolist() == ["mine", "mine"]


@pytest.mark.parametrize(
    "lines, row, column",
    [
        ([{"question": "x"}], None, "instruction"),
        ([{"instruction": "ok"}, {"instruction": "ok too"}, {"instruction": "  "}], 2, "instruction"),
        ([{"id": "a", "instruction": "x"}, {"id": "a", "instruction": "y"}], 1, "id"),
        ([{"instruction": "x", "reference_output": 3}], 0, "reference_output"),
    ],
)
def test_bad_prompt_files_name_file_row_and_column(tmp_path, lines, row, column):
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    with pytest.raises(DataError) as error:
        load_eval_prompts(path)
    assert (error.value.file, error.value.row, error.value.column) == (str(path), row, column)
    assert str(path) in str(error.value)


def test_malformed_json_line_is_located(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"instruction": "fine"}\n{"instruction": \n')
    with pytest.raises(DataError) as error:
        load_eval_prompts(path)
    assert error.value.row == 1


@pytest.mark.parametrize(
    "field, value",
    [("max_new_tokens", 0), ("temperature", -0.1), ("top_p", 0.0), ("batch_size", 0), ("dtype", "fp16")],
)
def test_bad_settings_name_their_field(field, value):
    with pytest.raises(ConfigError) as error:
        GenerationSettings(**{field: value}).validate()
    assert error.value.field == field
