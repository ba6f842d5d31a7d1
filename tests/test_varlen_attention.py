"""Fused attention for padding-free rows: runs from segment masks, and parity with segment SDPA (CPU, fp32)."""

import pytest
import torch

from dpo_engine.errors import ConfigError
from dpo_engine.models import varlen_attention
from dpo_engine.models.loading import TINY_MODEL, load_model
from dpo_engine.models.logps import _segment_mask, pair_logps, prefer_packed
from dpo_engine.models.segment_attention import segment_sdpa
from dpo_engine.models.tokenization import EncodedPair
from dpo_engine.models.varlen_attention import FUSED_ATTENTION_ENV, fused_backend, runs_of_mask, runs_of_segments


class Attention(torch.nn.Module):
    is_causal = True
    num_key_value_groups = 2


def row(seed: int = 0):
    """A row of a plain segment, a packed [prompt 4 | chosen 3 | rejected 5] segment and another plain one."""
    packed = _segment_mask([0] * 4 + [1] * 3 + [2] * 5, "cpu")
    segments = [(0, 6, None), (6, 18, packed), (18, 25, None)]
    generator = torch.Generator().manual_seed(seed)
    query = torch.randn(1, 4, 25, 8, generator=generator)
    key, value = (torch.randn(1, 2, 25, 8, generator=generator) for _ in range(2))
    return query, key, value, segments


def test_a_packed_segment_is_two_runs():
    mask = _segment_mask([0, 0, 0, 1, 1, 2, 2, 2], "cpu")[0, 0]
    assert runs_of_mask(mask) == [(0, 5, 0, 0), (5, 8, 0, 3)]
    assert runs_of_mask(torch.ones(4, 4, dtype=torch.bool).tril()) == [(0, 4, 0, 0)]
    assert runs_of_mask(torch.ones(3, 3, dtype=torch.bool)) is None  # not causal
    holes = torch.ones(4, 4, dtype=torch.bool).tril()
    holes[3, 1] = False  # row 3 sees 0, 2, 3: a prefix and an own run, but its run would start mid-run
    assert runs_of_mask(holes) is None
    _, _, _, segments = row()
    assert runs_of_segments(segments) == [(0, 6, 0, 0), (6, 13, 6, 6), (13, 18, 6, 10), (18, 25, 18, 18)]


def test_the_switch_is_off_by_default_and_checked(monkeypatch):
    query = torch.randn(1, 2, 3, 4)
    monkeypatch.delenv(FUSED_ATTENTION_ENV, raising=False)
    assert fused_backend(query) is None
    monkeypatch.setenv(FUSED_ATTENTION_ENV, "auto")
    assert fused_backend(query) is None  # auto: only CUDA in bf16/fp16
    monkeypatch.setenv(FUSED_ATTENTION_ENV, "flex")
    assert fused_backend(query) == "flex" and fused_backend(query, past=5) is None
    monkeypatch.setenv(FUSED_ATTENTION_ENV, "fast")
    with pytest.raises(ConfigError, match=FUSED_ATTENTION_ENV):
        fused_backend(query)


def test_flex_attention_matches_segment_sdpa(monkeypatch):
    query, key, value, segments = row()
    monkeypatch.delenv(FUSED_ATTENTION_ENV, raising=False)
    expected, _ = segment_sdpa(Attention(), query, key, value, None, scaling=8**-0.5, segments=segments)
    monkeypatch.setenv(FUSED_ATTENTION_ENV, "flex")
    fused, _ = segment_sdpa(Attention(), query, key, value, None, scaling=8**-0.5, segments=segments)
    assert fused.shape == expected.shape == (1, 25, 4, 8)
    torch.testing.assert_close(fused, expected, rtol=1e-5, atol=1e-5)


def reference_varlen(q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, window_size=None, is_causal=False,
                     enable_gqa=False):
    """varlen_attn's definition, one sequence at a time: causal aligned to the bottom right."""
    outputs = []
    for i in range(len(cu_q) - 1):
        qi, ki, vi = q[cu_q[i]:cu_q[i + 1]], k[cu_k[i]:cu_k[i + 1]], v[cu_k[i]:cu_k[i + 1]]
        n_q, n_k = len(qi), len(ki)
        allowed = torch.ones(n_q, n_k, dtype=torch.bool).tril(diagonal=n_k - n_q)
        outputs.append(torch.nn.functional.scaled_dot_product_attention(
            qi.transpose(0, 1), ki.transpose(0, 1), vi.transpose(0, 1), allowed, scale=scale,
            enable_gqa=enable_gqa).transpose(0, 1))
    return torch.cat(outputs)


def test_varlen_inputs_give_segment_sdpa_under_varlens_definition(monkeypatch):
    """The gathered keys and sequence bounds, checked through a reference varlen_attn (the real one is CUDA-only:
    benchmarks/gpu_check.py compares it on a GPU)."""
    import torch.nn.attention.varlen as varlen

    query, key, value, segments = row(seed=1)
    monkeypatch.delenv(FUSED_ATTENTION_ENV, raising=False)
    expected, _ = segment_sdpa(Attention(), query, key, value, None, scaling=8**-0.5, segments=segments)
    monkeypatch.setattr(varlen, "varlen_attn", reference_varlen)
    fused = varlen_attention.fused_attention("varlen", Attention(), query, key, value, segments, scaling=8**-0.5)
    torch.testing.assert_close(fused, expected, rtol=1e-5, atol=1e-5)


def test_pair_log_probs_through_flex_equal_segment_sdpa(tiny_model_dir, monkeypatch):
    model, _ = load_model(TINY_MODEL)
    pairs = [EncodedPair(list(range(5, 5 + p)), list(range(40, 40 + c)), list(range(80, 80 + r)))
             for p, c, r in [(60, 4, 6), (3, 20, 15), (40, 9, 1)]]
    assert [prefer_packed(model, pair) for pair in pairs] == [True, False, True]
    monkeypatch.delenv(FUSED_ATTENTION_ENV, raising=False)
    with torch.no_grad():
        expected = pair_logps(model, pairs, pad_token_id=0)
    calls = []
    flex = varlen_attention._flex
    monkeypatch.setattr(varlen_attention, "_flex", lambda *args: calls.append(1) or flex(*args))
    monkeypatch.setenv(FUSED_ATTENTION_ENV, "flex")
    with torch.no_grad():
        fused = pair_logps(model, pairs, pad_token_id=0)
    assert len(calls) == model.config.num_hidden_layers  # one fused call per layer, the packed pairs included
    for name in ("chosen_logps", "rejected_logps"):
        torch.testing.assert_close(fused[name], expected[name], rtol=1e-5, atol=1e-4)
