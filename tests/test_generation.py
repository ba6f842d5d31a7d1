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
from dpo_engine.evaluation.decoding import _common_prefix, stream_answers, supports_continuous_batching
from dpo_engine.models.loading import TINY_MODEL, load_model
from dpo_engine.models.tokenization import prompt_ids

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


def count_generated(monkeypatch) -> list[int]:
    """Count the prompts each ``generate`` call actually decodes (one ``stream_generations`` call per call)."""
    calls = []
    original = generation.stream_generations

    def counting(model, tokenizer, instructions, settings, seeds=None):
        calls.append(len(instructions))
        return original(model, tokenizer, instructions, settings, seeds)

    monkeypatch.setattr(generation, "stream_generations", counting)
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

    generated = count_generated(monkeypatch)
    seen = []
    resumed = generate(TINY_MODEL, perturbed_adapter, prompts, settings, progress=lambda done, total: seen.append(done))
    assert generated == [4]  # only the prompts of the two parts not on disk
    assert seen == [2, 4, 6]
    assert resumed.prompt_id.tolist() == prompts.prompt_id.tolist()
    assert resumed.attrs["generation"]["settings"]["temperature"] == temperature

    shutil.rmtree(cache_dir)
    uninterrupted = generate(TINY_MODEL, perturbed_adapter, prompts, settings)
    pd.testing.assert_frame_equal(resumed, uninterrupted)


def test_cache_is_reused_and_a_settings_change_starts_a_new_one(prompts, perturbed_adapter, monkeypatch):
    first = generate(TINY_MODEL, perturbed_adapter, prompts, GenerationSettings(max_new_tokens=6, batch_size=3))
    generated = count_generated(monkeypatch)
    again = generate(TINY_MODEL, perturbed_adapter, prompts, GenerationSettings(max_new_tokens=6, batch_size=3))
    assert generated == []  # everything came from the cache
    pd.testing.assert_frame_equal(first, again)

    longer = generate(TINY_MODEL, perturbed_adapter, prompts, GenerationSettings(max_new_tokens=10, batch_size=3))
    assert generated == [6]
    assert longer.attrs["generation"]["cache_dir"] != first.attrs["generation"]["cache_dir"]
    assert (longer.output_tokens >= first.output_tokens).all()
    base = generate(TINY_MODEL, None, prompts, GenerationSettings(max_new_tokens=6, batch_size=3))
    assert base.attrs["generation"]["cache_dir"] != first.attrs["generation"]["cache_dir"]  # adapter is in the key
    meta = json.loads((Path(first.attrs["generation"]["cache_dir"]) / "meta.json").read_text())
    assert meta["settings"]["max_new_tokens"] == 6 and meta["adapter"] == str(perturbed_adapter)


def reference_answers(model, encoded, max_new_tokens, stop) -> list[list[int]]:
    """Plain transformers: one greedy ``model.generate`` per prompt, new tokens up to and with the first stop."""
    answers = []
    for ids in encoded:
        ids = torch.tensor([ids])
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                 do_sample=False, eos_token_id=sorted(stop), pad_token_id=sorted(stop)[0])
        new = out[0, ids.shape[1]:].tolist()
        answers.append(new[:next((i + 1 for i, token in enumerate(new) if token in stop), len(new))])
    return answers


@pytest.mark.parametrize("slots", [1, 2, 6])
def test_continuous_batching_gives_plain_generate_answers_and_keeps_every_slot_busy(perturbed_adapter, slots,
                                                                                    monkeypatch):
    model, tokenizer = load_model(TINY_MODEL, adapter=perturbed_adapter)
    encoded = [prompt_ids(tokenizer, [{"role": "user", "content": text}]) for text in INSTRUCTIONS]
    assert len(_common_prefix(encoded)) >= 5  # the chat template's opening: computed once, then shared
    # The random model seldom says <|im_end|>: also stop at a token it does say, the one whose first appearance
    # varies most across the answers (never in the first two tokens), so answers end at different lengths.
    stop = generation.stop_token_ids(tokenizer)
    unstopped = reference_answers(model, encoded, 12, stop)

    def first_positions(token):
        return [answer.index(token) if token in answer else 12 for answer in unstopped]

    candidates = sorted({token for answer in unstopped for token in answer[2:]} - stop)
    stop = stop | {max(candidates, key=lambda token: (min(first_positions(token)) >= 2,
                                                      len(set(first_positions(token))), -token))}
    expected = reference_answers(model, encoded, 12, stop)
    lengths = sorted(len(answer) for answer in expected)
    assert lengths[0] < lengths[-1]
    rows_per_step = []
    decoder = model.get_decoder()  # every step runs it, through the whole model or on its own (`_DecodingStep`)
    forward = decoder.forward

    def recording(*args, **kwargs):
        if kwargs.get("attention_mask") is not None:  # a decoding step (a prompt's prefill needs no mask)
            rows_per_step.append(kwargs["input_ids"].shape[0])
        return forward(*args, **kwargs)

    monkeypatch.setattr(decoder, "forward", recording)
    streamed = dict(stream_answers(model, encoded, slots=slots, max_new_tokens=12, stop_ids=stop))
    assert [streamed[i] for i in range(len(encoded))] == expected
    # Every step decodes one token for each busy row: steps x rows = generated tokens after each prompt's first.
    assert sum(rows_per_step) == sum(lengths) - len(lengths)
    assert max(rows_per_step) == min(slots, len(encoded))
    assert len(rows_per_step) <= -(-sum(lengths) // slots) + max(lengths)  # near the ideal, not a padded batch's


@pytest.mark.parametrize("padding_free", [True, False], ids=["one padding-free prefill", "a prefill per prompt"])
def test_prompts_admitted_together_are_prefilled_as_if_alone(perturbed_adapter, padding_free, monkeypatch):
    """Several prompts admitted at once share one padding-free prefill after the common prefix (models with another
    attention implementation prefill them one by one); either way each answer is the one it gets alone."""
    from dpo_engine.evaluation import decoding

    model, tokenizer = load_model(TINY_MODEL, adapter=perturbed_adapter)
    encoded = [prompt_ids(tokenizer, [{"role": "user", "content": text}]) for text in INSTRUCTIONS]
    stop = generation.stop_token_ids(tokenizer)
    expected = reference_answers(model, encoded, 8, stop)
    monkeypatch.setattr(decoding, "supports_packing", lambda model: padding_free)
    prefill_rows = []
    forward = model.forward

    def recording(*args, **kwargs):
        if "segments" in kwargs:
            prefill_rows.append(len(kwargs["segments"]))
        return forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", recording)
    streamed = dict(stream_answers(model, encoded, slots=len(encoded), max_new_tokens=8, stop_ids=stop))
    assert [streamed[i] for i in range(len(encoded))] == expected
    assert prefill_rows == ([len(encoded)] if padding_free else [])  # all six in one forward, or none that way


def decoding_steps(model, n_steps: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Logits of ``n_steps`` greedy steps after a 3-token prompt (2 rows), from `_DecodingStep` and from the whole
    model on its own copy of the cache."""
    from dpo_engine.evaluation.decoding import _DecodingStep

    step, ids = _DecodingStep(model), torch.tensor([[5, 6, 7], [8, 9, 10]])
    ours, theirs = [], []
    with torch.inference_mode():
        cache = model(input_ids=ids, use_cache=True).past_key_values
        plain_cache = model(input_ids=ids, use_cache=True).past_key_values
        tokens = torch.tensor([[11], [12]])
        for _ in range(n_steps):
            logits, cache = step(input_ids=tokens, past_key_values=cache, use_cache=True)
            plain = model(input_ids=tokens, past_key_values=plain_cache, use_cache=True)
            plain_cache = plain.past_key_values
            ours.append(logits)
            theirs.append(plain.logits[:, -1])
            tokens = logits.argmax(-1, keepdim=True)
    return ours, theirs


def test_decoding_steps_compute_the_head_as_the_model_does(perturbed_adapter, monkeypatch):
    model, _ = load_model(TINY_MODEL, adapter=perturbed_adapter)
    decoder_calls = []
    decoder = model.get_decoder()
    forward = decoder.forward
    monkeypatch.setattr(decoder, "forward", lambda *a, **k: decoder_calls.append(1) or forward(*a, **k))
    full_calls = []
    model_forward = model.forward
    monkeypatch.setattr(model, "forward", lambda *a, **k: full_calls.append(1) or model_forward(*a, **k))
    ours, theirs = decoding_steps(model, 4)
    for logits, expected in zip(ours, theirs):
        torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    # the first step runs the whole model (and checks the head), the other three the decoder alone
    assert len(full_calls) == 2 + 1 + 4  # the two prefills, our first step, the plain model's four steps
    assert len(decoder_calls) == len(full_calls) + 3


def test_a_model_that_rescales_its_logits_keeps_its_own_forward(perturbed_adapter, monkeypatch):
    model, _ = load_model(TINY_MODEL, adapter=perturbed_adapter)
    forward = model.forward

    def scaled(*args, **kwargs):  # like a logit scale or soft cap applied after the head
        out = forward(*args, **kwargs)
        out.logits = out.logits * 0.5
        return out

    monkeypatch.setattr(model, "forward", scaled)
    ours, theirs = decoding_steps(model, 3)
    for logits, expected in zip(ours, theirs):
        torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


def test_common_prefix_of_token_lists():
    assert _common_prefix([[1, 2, 3], [1, 2, 4, 5], [1, 2]]) == [1, 2]
    assert _common_prefix([[7, 8], [9]]) == [] and _common_prefix([]) == [] and _common_prefix([[5, 6]]) == [5, 6]


def test_in_place_cache_layer_holds_what_concatenation_would():
    from dpo_engine.evaluation.decoding import _InPlaceCacheLayer

    torch.manual_seed(0)
    keys, values = torch.randn(2, 3, 5, 4), torch.randn(2, 3, 5, 4)
    layer = _InPlaceCacheLayer(keys, values)
    for step in range(_InPlaceCacheLayer.ROOM * 2 + 3):  # past the first buffer's room twice
        new_keys, new_values = torch.randn(2, 3, 1, 4), torch.randn(2, 3, 1, 4)
        returned = layer.update(new_keys, new_values)
        keys, values = torch.cat([keys, new_keys], dim=-2), torch.cat([values, new_values], dim=-2)
        assert torch.equal(returned[0], keys) and torch.equal(returned[1], values)
        if step == 10:  # an inherited method that replaces the keys (beam reordering) must not be lost
            layer.batch_select_indices(torch.tensor([1, 0]))
            keys, values = keys[[1, 0]], values[[1, 0]]
    assert layer.get_seq_length() == 5 + _InPlaceCacheLayer.ROOM * 2 + 3


def test_models_whose_cache_cannot_be_spliced_get_padded_batches(prompts, perturbed_adapter, monkeypatch):
    spliced = generate(TINY_MODEL, perturbed_adapter, prompts, GenerationSettings(max_new_tokens=12, batch_size=4))
    monkeypatch.setattr(generation, "supports_continuous_batching", lambda model: False)
    padded = generate(TINY_MODEL, perturbed_adapter, prompts, GenerationSettings(max_new_tokens=12, batch_size=4,
                                                                                 seed=1))  # a new cache
    assert padded.output.tolist() == spliced.output.tolist()


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


def test_the_default_model_can_be_spliced(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    assert supports_continuous_batching(AutoModelForCausalLM.from_pretrained(tiny_model_dir))
