"""Models, tokenization and response log-probs: the computation every margin and loss is built on."""

from __future__ import annotations

import math
import time

import pytest
import torch

from dpo_engine.errors import ConfigError, ModelError
from dpo_engine.models.logps import policy_logps, sequence_logps
from dpo_engine.models.loading import TINY_MODEL, detect_device, load_model, load_tokenizer, resolve_model
from dpo_engine.models.tokenization import collate, encode_pair, prompt_ids

USER = [{"role": "user", "content": "What is 2+2?"}]


@pytest.fixture(scope="module")
def tiny():
    return load_model(TINY_MODEL)


def test_tiny_model_resolves_and_loads(tiny_model_dir):
    assert resolve_model(TINY_MODEL) == tiny_model_dir
    model, tokenizer = load_model(TINY_MODEL)
    assert sum(p.numel() for p in model.parameters()) < 1_000_000
    assert tokenizer.pad_token == "<|im_end|>" and tokenizer.chat_template


def test_detect_device_prefers_cuda_then_mps_then_cpu(monkeypatch):
    mps = getattr(torch.backends, "mps", None)
    for cuda, apple, expected in ((True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")):
        monkeypatch.setattr(torch.cuda, "is_available", lambda cuda=cuda: cuda)
        if mps is not None:
            monkeypatch.setattr(mps, "is_available", lambda apple=apple: apple)
        assert detect_device() == (expected if mps is not None or expected != "mps" else "cpu")


def test_missing_model_path_is_a_clear_error(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        resolve_model(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no config.json"):
        resolve_model(str(tmp_path / "empty"))


def test_hub_id_fails_fast_without_network(monkeypatch):
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    started = time.monotonic()
    with pytest.raises(ModelError, match="Hub"):
        resolve_model("some-org/some-model-that-is-not-cached")
    assert time.monotonic() - started < 10


def test_offline_hub_id_names_the_setting(monkeypatch):
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelError, match="HF_HUB_OFFLINE"):
        resolve_model("some-org/some-model-that-is-not-cached")


def test_encode_pair_follows_the_chat_template(tiny):
    _, tokenizer = tiny
    pair = encode_pair(tokenizer, USER, "4", "five")
    assert tokenizer.decode(pair.prompt_ids) == "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    assert pair.prompt_ids == prompt_ids(tokenizer, USER)
    # The response is what the template adds after the prompt: the text, then end-of-turn.
    assert tokenizer.decode(pair.chosen_ids) == "4<|im_end|>\n"
    assert tokenizer.decode(pair.rejected_ids) == "five<|im_end|>\n"


def test_truncation_keeps_prompt_end_and_response_start(tiny):
    _, tokenizer = tiny
    long_prompt = [{"role": "user", "content": "x" * 100 + "END"}]
    pair = encode_pair(tokenizer, long_prompt, "abcdefghij" * 10, "no", max_length=60, max_prompt_length=20)
    assert len(pair.prompt_ids) == 20
    assert tokenizer.decode(pair.prompt_ids).endswith("END<|im_end|>\n<|im_start|>assistant\n")
    assert len(pair.prompt_ids) + len(pair.chosen_ids) == 60
    assert tokenizer.decode(pair.chosen_ids).startswith("abcdefghij")
    with pytest.raises(ConfigError, match="max_prompt_length"):
        encode_pair(tokenizer, USER, "a", "b", max_length=10, max_prompt_length=10)


def test_plain_tokenizer_without_template_appends_eos(tiny):
    _, tokenizer = tiny
    plain = load_tokenizer(TINY_MODEL)
    plain.chat_template = None
    pair = encode_pair(plain, USER, "4", "five")
    assert plain.decode(pair.prompt_ids) == "What is 2+2?\n\n"
    assert plain.decode(pair.chosen_ids) == "4<|im_end|>"


def test_collate_left_pads_and_masks_responses(tiny):
    _, tokenizer = tiny
    pairs = [encode_pair(tokenizer, USER, "4", "five"), encode_pair(tokenizer, [{"role": "user", "content": "Hi"}], "hello there", "x")]
    batch = collate(pairs, tokenizer.pad_token_id)
    lengths = [len(p.prompt_ids) + len(p.chosen_ids) for p in pairs] + [len(p.prompt_ids) + len(p.rejected_ids) for p in pairs]
    assert batch["input_ids"].shape == (4, max(lengths))
    assert batch["attention_mask"].sum(dim=1).tolist() == lengths
    assert batch["response_mask"].sum(dim=1).tolist() == [len(pairs[0].chosen_ids), len(pairs[1].chosen_ids), len(pairs[0].rejected_ids), len(pairs[1].rejected_ids)]
    # Real tokens are numbered from 0 whatever the padding, as with right padding.
    row = 1
    first_real = int((batch["attention_mask"][row] == 1).nonzero()[0])
    assert batch["position_ids"][row, first_real] == 0
    assert batch["position_ids"][row, -1] == lengths[row] - 1


def test_sequence_logps_matches_hand_computation():
    # One sequence of 3 tokens over a vocabulary of 2; logits[t] predicts token t+1.
    logits = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0], [5.0, 5.0]]])
    labels = torch.tensor([[0, 1, 0]])
    mask = torch.tensor([[0, 1, 1]])
    # p(token1=1 | .) = 0.5 ; p(token2=0 | .) = 3/4
    expected = math.log(0.5) + math.log(0.75)
    assert sequence_logps(logits, labels, mask).item() == pytest.approx(expected, rel=1e-6)
    assert sequence_logps(logits, labels, mask, average=True).item() == pytest.approx(expected / 2, rel=1e-6)
    only_last = torch.tensor([[0, 0, 1]])
    assert sequence_logps(logits, labels, only_last).item() == pytest.approx(math.log(0.75), rel=1e-6)


def test_policy_logps_equals_a_naive_per_sequence_loop(tiny):
    model, tokenizer = tiny
    pairs = [
        encode_pair(tokenizer, USER, "4", "five, I think"),
        encode_pair(tokenizer, [{"role": "user", "content": "Say hi to me please"}], "hi there, friend", "no"),
    ]
    with torch.no_grad():
        out = policy_logps(model, collate(pairs, tokenizer.pad_token_id))

    def naive(prompt, response):
        ids = torch.tensor([prompt + response])
        with torch.no_grad():
            logp = model(ids).logits[0].log_softmax(-1)
        return sum(logp[t - 1, ids[0, t]].item() for t in range(len(prompt), ids.shape[1]))

    for i, pair in enumerate(pairs):
        assert out["chosen_logps"][i].item() == pytest.approx(naive(pair.prompt_ids, pair.chosen_ids), rel=1e-4)
        assert out["rejected_logps"][i].item() == pytest.approx(naive(pair.prompt_ids, pair.rejected_ids), rel=1e-4)
        assert out["chosen_tokens"][i] == len(pair.chosen_ids)


@pytest.mark.parametrize("packed", [True, False], ids=["shared-prompt rows", "one row per response"])
def test_both_layouts_of_pair_logps_give_the_naive_numbers(tiny, monkeypatch, packed):
    """``prefer_packed`` picks a layout per pair by cost; whichever it picks, the log-probs are the same."""
    from dpo_engine.models import logps

    model, tokenizer = tiny
    pairs = [
        encode_pair(tokenizer, USER, "4", "five, I think"),
        encode_pair(tokenizer, [{"role": "user", "content": "Say hi to me please"}], "hi there, friend", "no"),
    ]
    monkeypatch.setattr(logps, "prefer_packed", lambda model, pair: packed)
    with torch.no_grad():
        out = logps.pair_logps(model, pairs, tokenizer.pad_token_id)
        reference = logps.concatenated_logps(model, collate(pairs, tokenizer.pad_token_id))
    torch.testing.assert_close(out["chosen_logps"], reference["chosen_logps"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out["rejected_logps"], reference["rejected_logps"], rtol=1e-4, atol=1e-4)


def test_prefer_packed_packs_long_prompts_and_splits_long_responses(tiny):
    from types import SimpleNamespace

    from dpo_engine.models.logps import prefer_packed

    model, _ = tiny
    long_prompt = SimpleNamespace(prompt_ids=[1] * 200, chosen_ids=[1] * 5, rejected_ids=[1] * 5)
    long_responses = SimpleNamespace(prompt_ids=[1] * 5, chosen_ids=[1] * 400, rejected_ids=[1] * 400)
    assert prefer_packed(model, long_prompt) is True  # 210 tokens once beats 2 x 205
    assert prefer_packed(model, long_responses) is False  # an 805-token square costs more than 2 causal 405-token halves


def test_policy_logps_carries_gradients(tiny):
    model, tokenizer = tiny
    out = policy_logps(model, collate([encode_pair(tokenizer, USER, "4", "5")], tokenizer.pad_token_id))
    (out["chosen_logps"] - out["rejected_logps"]).sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    model.zero_grad()


def test_one_padding_free_row_of_mixed_lengths_and_layouts_gives_the_naive_numbers(tiny, monkeypatch):
    """Pairs of very different lengths share one row, packed and plain segments side by side, and nothing leaks."""
    from dpo_engine.models import logps

    model, tokenizer = tiny
    pairs = [
        encode_pair(tokenizer, [{"role": "user", "content": "word " * 40}], "a b c " * 15, "no"),
        encode_pair(tokenizer, USER, "4", "five, I think, or maybe six"),
        encode_pair(tokenizer, [{"role": "user", "content": "Say hi"}], "hi " * 30, "hello " * 3),
    ]
    layouts = iter([True, False, True])
    monkeypatch.setattr(logps, "prefer_packed", lambda model, pair: next(layouts))

    def naive(prompt, response):
        ids = torch.tensor([prompt + response])
        logp = model(ids).logits[0].log_softmax(-1)
        return sum(logp[t - 1, ids[0, t]].item() for t in range(len(prompt), ids.shape[1]))

    with torch.no_grad():
        out = logps.pair_logps(model, pairs, tokenizer.pad_token_id)
        for i, pair in enumerate(pairs):
            assert out["chosen_logps"][i].item() == pytest.approx(naive(pair.prompt_ids, pair.chosen_ids), rel=1e-4)
            assert out["rejected_logps"][i].item() == pytest.approx(naive(pair.prompt_ids, pair.rejected_ids), rel=1e-4)


def test_segment_attention_hands_the_model_its_own_attention_back(tiny):
    from peft import LoraConfig, get_peft_model

    from dpo_engine.models.logps import pair_logps
    from dpo_engine.models.segment_attention import SEGMENT_ATTENTION, segment_attention

    model, tokenizer = tiny
    pair = encode_pair(tokenizer, USER, "4", "five")
    with torch.no_grad():
        pair_logps(model, [pair], tokenizer.pad_token_id)
    assert model.config._attn_implementation == "sdpa"
    with pytest.raises(RuntimeError, match="boom"), segment_attention(model):
        assert model.config._attn_implementation == SEGMENT_ATTENTION
        raise RuntimeError("boom")
    assert model.config._attn_implementation == "sdpa"

    import copy

    lora = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        out = pair_logps(lora, [pair], tokenizer.pad_token_id)
        with lora.disable_adapter():
            plain = pair_logps(lora, [pair], tokenizer.pad_token_id)
    assert lora.get_base_model().config._attn_implementation == "sdpa"
    torch.testing.assert_close(out["chosen_logps"], plain["chosen_logps"])  # LoRA's B starts at zero


def test_activation_checkpointing_gets_the_gradients_of_a_plain_forward(tiny):
    """Checkpointing recomputes the forward during backward, outside ``segment_attention``; the gradients must still
    be those of the forward that was taken."""
    import copy

    model, tokenizer = tiny
    batch = collate([
        encode_pair(tokenizer, USER, "4", "five, I think"),
        encode_pair(tokenizer, [{"role": "user", "content": "Say hi to me please"}], "hi there, friend", "no"),
    ], tokenizer.pad_token_id)
    grads = []
    for checkpointing in (False, True):
        copy_ = copy.deepcopy(model).train()
        if checkpointing:
            copy_.activation_checkpointing_enable()
        out = policy_logps(copy_, batch)
        (out["chosen_logps"] - out["rejected_logps"]).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in copy_.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-5)
