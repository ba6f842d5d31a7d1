"""The scoring data path at scale: precision resolution, batched encoding, the chunked LM head, token-budget
batches, the log-prob cache service, ScoreConfig and the shared reward-model scorer."""

from __future__ import annotations

import argparse
import inspect

import numpy as np
import pytest
import torch

from dpo_engine.errors import ConfigError, ModelError
from dpo_engine.margins import scoring
from dpo_engine.margins.config import ScoreConfig
from dpo_engine.models import logp_cache
from dpo_engine.models.loading import TINY_MODEL, load_model, load_tokenizer, resolve_precision
from dpo_engine.models.logps import chunked_token_logps, pair_logps, token_budget_batches
from dpo_engine.models.tokenization import MAX_LENGTH, MAX_PROMPT_LENGTH, encode_pair, encode_pairs
from tests.test_judges import tiny_reward_model  # noqa: F401  (a fixture)
from tests.test_scoring import make_pairs


@pytest.fixture(scope="module")
def tiny():
    return load_model(TINY_MODEL)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(scoring, "cache_dir", lambda: tmp_path / "cache")


# ---- precision ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("requested, device, bf16_supported, expected", [
    ("auto", "cuda", True, "bf16"),
    ("auto", "cuda:1", True, "bf16"),
    ("auto", "cuda", False, "fp32"),  # pre-Ampere GPU: no bf16
    ("auto", "cpu", True, "fp32"),
    ("auto", "mps", True, "fp32"),
    ("fp32", "cuda", True, "fp32"),
    ("bf16", "cpu", True, "bf16"),
])
def test_precision_auto_is_bf16_on_cuda_only(requested, device, bf16_supported, expected):
    assert resolve_precision(requested, device, bf16_supported) == expected


def test_unknown_precision_is_a_user_error():
    with pytest.raises(ModelError, match="fp64"):
        resolve_precision("fp64", "cpu")


# ---- encoding -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("template", [True, False])
def test_batched_encoding_gives_the_ids_of_one_by_one_encoding(template):
    tokenizer = load_tokenizer(TINY_MODEL)
    if not template:
        tokenizer.chat_template = None
    pairs = make_pairs(7)
    messages = [list(m) for m in pairs.prompt_messages]
    batched = encode_pairs(tokenizer, messages, list(pairs.chosen), list(pairs.rejected), 40, 12)
    for pair, m in zip(batched, messages):
        prompt = tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=True)["input_ids"] if template \
            else tokenizer("\n\n".join(x["content"] for x in m) + "\n\n", add_special_tokens=False)["input_ids"]
        assert pair.prompt_ids == prompt[-12:]  # the prompt's end is kept
        assert len(pair.prompt_ids) + len(pair.chosen_ids) <= 40
    assert batched == [encode_pair(tokenizer, m, c, r, 40, 12) for m, c, r in zip(messages, pairs.chosen, pairs.rejected)]


# ---- chunked head and token budgets -------------------------------------------------------------------------------


def test_chunked_head_equals_the_whole_head_in_values_and_gradients():
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=False)
    hidden = torch.randn(23, 16, requires_grad=True)
    labels = torch.randint(0, 50, (23,))
    whole = torch.log_softmax(head(hidden), dim=-1).gather(-1, labels[:, None]).squeeze(-1)
    (grad_whole,) = torch.autograd.grad(whole.sum(), hidden)
    chunked = chunked_token_logps(hidden, head, labels, chunk_rows=5)
    (grad_chunked,) = torch.autograd.grad(chunked.sum(), hidden)
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad_chunked, grad_whole, rtol=1e-5, atol=1e-5)


def test_pair_logps_is_the_same_whatever_the_logit_chunk_and_head_path(tiny):
    model, tokenizer = tiny
    pairs = [encode_pair(tokenizer, list(r.prompt_messages), r.chosen, r.rejected) for r in make_pairs(6).itertuples()]
    with torch.no_grad():
        whole = pair_logps(model, pairs, tokenizer.pad_token_id)
        chunked = pair_logps(model, pairs, tokenizer.pad_token_id, max_logit_elements=7 * model.config.vocab_size)
        model.config.logit_scale = 1.0  # a logit transform: the model's own forward and logits (Llama ignores it)
        try:
            own_forward = pair_logps(model, pairs, tokenizer.pad_token_id)
        finally:
            del model.config.logit_scale
    for other in (chunked, own_forward):
        torch.testing.assert_close(other["chosen_logps"], whole["chosen_logps"], rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(other["rejected_logps"], whole["rejected_logps"], rtol=1e-5, atol=1e-4)
    assert whole["chosen_tokens"].tolist() == [len(p.chosen_ids) for p in pairs]


def test_token_budget_batches_respect_the_budget_and_the_pair_cap():
    lengths = [90, 60, 50, 40, 30, 20, 10, 5]
    groups = token_budget_batches(lengths, token_budget=100)
    assert groups == [[0], [1], [2, 3], [4, 5, 6, 7]]
    assert all(sum(lengths[i] for i in g) <= 100 for g in groups)
    assert token_budget_batches([150, 10], token_budget=100) == [[0], [1]]  # too long alone: a forward of its own
    assert token_budget_batches(lengths, token_budget=1000, max_pairs=3) == [[0, 1, 2], [3, 4, 5], [6, 7]]
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))


# ---- the cache service --------------------------------------------------------------------------------------------


def test_cache_writes_parts_by_size_and_a_cached_rerun_encodes_and_forwards_nothing(tiny, tmp_path):
    model, tokenizer = tiny
    pairs = make_pairs(10)
    requested = []

    def encode(indices):
        requested.append(list(indices))
        return scoring.encode_frame(pairs.iloc[indices], tokenizer)

    parts = tmp_path / "parts"
    first = logp_cache.cached_logps(model, encode, pairs.pair_id, parts, pad_token_id=tokenizer.pad_token_id,
                                    batch_size=2, flush_pairs=4)
    assert len(list(parts.glob("part-*.parquet"))) == 3  # 10 pairs in forwards of 2, a part once 4 are done
    forwards = []
    handle = model.register_forward_hook(lambda module, args, output: forwards.append(1))
    try:
        again = logp_cache.cached_logps(model, encode, pairs.pair_id, parts, pad_token_id=tokenizer.pad_token_id)
    finally:
        handle.remove()
    assert forwards == [] and requested[-1] == []
    assert again.pair_id.tolist() == pairs.pair_id.tolist()
    np.testing.assert_array_equal(again.chosen_logps, first.chosen_logps)
    direct = scoring.score_logps(pairs, model, tokenizer, cache_key="direct", batch_size=10)
    np.testing.assert_allclose(first.rejected_logps, direct.rejected_logps, rtol=1e-5, atol=1e-5)


def test_a_token_budget_sizes_the_forwards(tiny):
    model, tokenizer = tiny
    pairs = make_pairs(8)
    forwards = []
    handle = model.register_forward_hook(lambda module, args, output: forwards.append(args or output))
    try:
        scoring.score_logps(pairs, model, tokenizer, cache_key="budget", token_budget=1)
    finally:
        handle.remove()
    assert len(forwards) == 8  # every pair exceeds one token: one forward each


# ---- ScoreConfig and the CLI --------------------------------------------------------------------------------------


def test_score_config_declares_the_defaults_the_python_api_uses():
    config = ScoreConfig("p.jsonl", "m.parquet")
    assert (config.max_length, config.max_prompt_length, config.dtype) == (MAX_LENGTH, MAX_PROMPT_LENGTH, "auto")
    for function in (scoring.score_logps, scoring.implicit_margins):
        parameters = inspect.signature(function).parameters
        assert parameters["max_length"].default == config.max_length
        assert parameters["max_prompt_length"].default == config.max_prompt_length


def test_score_config_names_the_bad_field(tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text("")
    ScoreConfig(str(data), "m.parquet").validate()
    for changes, name in [({"max_length": 100, "max_prompt_length": 100}, "max_length"),
                          ({"batch_size": 0}, "batch_size"), ({"external": "reward-model"}, "reward_model"),
                          ({"pairs": str(tmp_path / "missing.jsonl")}, "pairs"), ({"warmup_lr": 0.0}, "warmup_lr")]:
        with pytest.raises(ConfigError, match=f"'{name}'"):
            ScoreConfig(**{"pairs": str(data), "out": "m.parquet", **changes}).validate()


def test_score_flags_keep_their_names():
    from dpo_engine.cli import score as score_cli
    from dpo_engine.cli.flags import config_from_args

    parser = argparse.ArgumentParser()
    score_cli.add_parser(parser.add_subparsers())
    argv = ["score", "d.jsonl", "--out", "m.csv", "--external", "reward-model", "--reward-model", "/rm",
            "--implicit", "policy", "--policy", "/a", "--reference", "/r", "--model", "tiny-random", "--seed-size", "8",
            "--warmup-dir", "/w", "--warmup-epochs", "1", "--warmup-lr", "0.1", "--seed", "3", "--dtype", "fp32",
            "--device", "cpu", "--batch-size", "4", "--max-length", "128", "--max-prompt-length", "64",
            "--progress-file", "p.json", "--token-budget", "999"]
    config = config_from_args(ScoreConfig, parser.parse_args(argv))
    assert config == ScoreConfig("d.jsonl", "m.csv", external="reward-model", reward_model="/rm", implicit="policy",
                                 policy="/a", reference="/r", model="tiny-random", seed_size=8, warmup_dir="/w",
                                 warmup_epochs=1, warmup_lr=0.1, seed=3, dtype="fp32", device="cpu", batch_size=4,
                                 max_length=128, max_prompt_length=64, progress_file="p.json", token_budget=999)


def test_score_cli_writes_the_resolved_dtype_to_the_sidecar(tmp_path, perturbed_adapter):
    from dpo_engine.cli import main
    from dpo_engine.data.pairs import save_pairs
    from dpo_engine.margins.table import load_margins_table

    pairs_file = save_pairs(make_pairs(4), tmp_path / "pairs.jsonl")
    assert main(["score", str(pairs_file), "--out", str(tmp_path / "m.parquet"), "--policy", str(perturbed_adapter),
                 "--external", "none"]) == 0
    _, meta = load_margins_table(tmp_path / "m.parquet")
    assert meta["implicit"]["dtype"] == "fp32" and meta["implicit"]["dtype_requested"] == "auto"  # a CPU machine
    assert main(["score", str(pairs_file), "--out", str(tmp_path / "x.parquet"), "--batch-size", "0"]) == 2


# ---- reward-model scorer ------------------------------------------------------------------------------------------


def test_reward_model_scorer_keeps_the_end_and_serves_margins_and_judge_alike(tiny_reward_model):  # noqa: F811
    from dpo_engine.evaluation.judges import RewardModelJudge
    from dpo_engine.models.reward_model import RewardModelScorer
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model_dir = tiny_reward_model
    pairs = make_pairs(5)
    scorer = RewardModelScorer(model_dir, device="cpu", batch_size=2, max_length=12)
    conversation = list(pairs.prompt_messages[3]) + [{"role": "assistant", "content": pairs.chosen[3]}]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ids = tokenizer(scorer.render(conversation))["input_ids"][-12:]  # the end of the text, where the score is read
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    with torch.no_grad():
        expected = model(input_ids=torch.tensor([ids])).logits[0, 0].item()
    assert scorer.score([conversation])[0] == pytest.approx(expected, abs=1e-5)

    table, meta = scoring.external_margins(pairs, "reward-model", reward_model=str(model_dir), device="cpu")
    judge = RewardModelJudge(model_dir, device="cpu")
    prompts = [m[0]["content"] for m in pairs.prompt_messages]
    expected_margins = judge.score(prompts, list(pairs.chosen)) - judge.score(prompts, list(pairs.rejected))
    np.testing.assert_allclose(table.external_margin, expected_margins, rtol=1e-5, atol=1e-5)
    assert meta["dtype"] == "fp32" and judge.extra["dtype"] == "fp32"
