"""Fused attention for padding-free rows: one attention call per layer instead of one SDPA call per segment.

A padding-free row (``dpo_engine.models.segment_attention``) holds many sequences end to end; segment SDPA runs one
SDPA call per segment, which on a GPU means hundreds of small kernels per layer. Here the row's attention is a list
of **runs**: queries ``[q0, q1)`` attend causally to themselves and fully to a prefix of keys ``[k0, k1)`` before
them. A plain segment is one run without prefix; a packed ``[prompt | chosen | rejected]`` segment is two runs,
``prompt + chosen`` causal, then ``rejected`` with the prompt as its prefix (it never sees the chosen tokens). Two
backends compute all runs in one call:

- ``varlen``: ``torch.nn.attention.varlen.varlen_attn`` (flash attention over variable-length sequences; CUDA,
  bf16/fp16). Each run is one sequence whose keys are its prefix then its own keys, gathered once per forward;
  causal attention with more keys than queries aligns the diagonal to the bottom right, so a rejected token sees
  the whole prompt and the rejected tokens up to itself.
- ``flex``: FlexAttention with a block mask built from the runs (any device; on a CPU forward only, unfused, which
  is what the CPU parity tests use).

Opt-in through ``MARGIN_LAB_FUSED_ATTENTION`` (``off`` by default; ``auto``: varlen on CUDA in bf16/fp16, flex
there if this torch has no varlen; or ``varlen`` / ``flex``) until ``benchmarks/gpu_check.py`` has shown parity on
a GPU. Everything else, rows with a cached prefix (generation), fp32 and CPU/MPS under ``auto``, stays on segment
SDPA: ``fused_backend`` returns None for them.
"""

from __future__ import annotations

import inspect
import os

import torch

FUSED_ATTENTION_ENV = "MARGIN_LAB_FUSED_ATTENTION"
BACKENDS = ("off", "auto", "varlen", "flex")

Run = tuple[int, int, int, int]  # (q0, q1, k0, k1): queries [q0, q1) see keys [k0, k1), then themselves causally


def has_varlen() -> bool:
    """Whether this torch has ``torch.nn.attention.varlen`` (2.10 and later)."""
    try:
        import torch.nn.attention.varlen  # noqa: F401
    except ImportError:
        return False
    return True


def fused_backend(query: torch.Tensor, past: int = 0, dropout: float = 0.0) -> str | None:
    """The backend ``MARGIN_LAB_FUSED_ATTENTION`` asks for ``query``, or None for segment SDPA."""
    choice = os.environ.get(FUSED_ATTENTION_ENV, "off").strip().lower() or "off"
    if choice not in BACKENDS:
        from dpo_engine.errors import ConfigError

        raise ConfigError(FUSED_ATTENTION_ENV, f"must be one of {', '.join(BACKENDS)}, got '{choice}'")
    if choice == "off" or past or dropout:
        return None
    half = query.is_cuda and query.dtype in (torch.bfloat16, torch.float16)
    if choice == "auto":
        return ("varlen" if has_varlen() else "flex") if half else None
    if choice == "varlen" and not (half and has_varlen()):
        return None
    return choice


def runs_of_segments(segments) -> list[Run] | None:
    """The runs of a row's ``segments`` (``(start, end, mask)``, see ``segment_attention``), or None when a mask is
    not of the prefix-plus-own-causal-run form."""
    runs: list[Run] = []
    for start, end, mask in segments:
        if mask is None:
            runs.append((start, end, start, start))
            continue
        local = runs_of_mask(mask[0, 0])
        if local is None:
            return None
        runs += [(start + q0, start + q1, start + k0, start + k1) for q0, q1, k0, k1 in local]
    return runs


def runs_of_mask(mask: torch.Tensor) -> list[Run] | None:
    """Runs of an ``(L, L)`` boolean mask (True = may attend) whose every row ``i`` is a prefix ``[0, a)`` and its
    own causal run ``[s, i]`` with ``s`` the run's first row; None for any other mask."""
    mask = mask.to("cpu", torch.bool)
    length = mask.shape[0]
    index = torch.arange(length)
    blocked = ~mask & (index[None, :] <= index[:, None])  # causal positions a row may not see
    own_start = torch.where(blocked, index[None, :], -1).max(dim=1).values + 1
    first_blocked = torch.where(blocked, index[None, :], length).min(dim=1).values
    prefix_end = torch.where(own_start == 0, 0, first_blocked)
    rebuilt = (index[None, :] < prefix_end[:, None]) | (
        (index[None, :] >= own_start[:, None]) & (index[None, :] <= index[:, None]))
    if not torch.equal(rebuilt, mask):
        return None
    runs: list[Run] = []
    for row, (start, prefix) in enumerate(zip(own_start.tolist(), prefix_end.tolist())):
        if runs and runs[-1][0] == start and runs[-1][3] == prefix:
            runs[-1] = (start, row + 1, 0, prefix)
        elif start == row:
            runs.append((row, row + 1, 0, prefix))
        else:
            return None
    return runs


class _Plan:
    """What every layer of one forward reuses: the runs as index tensors, built once for the row's segments."""

    def __init__(self, runs: list[Run], device: torch.device):
        self.runs = runs
        self.length = runs[-1][1] if runs else 0
        self.device = device
        self._block_mask = None
        self._varlen = None

    def block_mask(self):
        """FlexAttention's block mask of the runs."""
        if self._block_mask is None:
            from torch.nn.attention.flex_attention import create_block_mask

            own_start = torch.empty(self.length, dtype=torch.long)
            prefix_start, prefix_end = torch.empty_like(own_start), torch.empty_like(own_start)
            for q0, q1, k0, k1 in self.runs:
                own_start[q0:q1], prefix_start[q0:q1], prefix_end[q0:q1] = q0, k0, k1
            own_start, prefix_start, prefix_end = (t.to(self.device) for t in (own_start, prefix_start, prefix_end))

            def may_attend(batch, head, q, kv):
                own = (kv >= own_start[q]) & (kv <= q)
                return own | ((kv >= prefix_start[q]) & (kv < prefix_end[q]))

            self._block_mask = create_block_mask(may_attend, None, None, self.length, self.length, device=self.device,
                                                 _compile=self.device.type == "cuda")
        return self._block_mask

    def varlen_inputs(self):
        """``(key index, cu_seq_q, cu_seq_k, max_q, max_k)`` for ``varlen_attn``: each run's prefix then own keys."""
        if self._varlen is None:
            keys, cu_q, cu_k = [], [0], [0]
            for q0, q1, k0, k1 in self.runs:
                keys += [*range(k0, k1), *range(q0, q1)]
                cu_q.append(q1)
                cu_k.append(len(keys))
            self._varlen = (
                torch.tensor(keys, dtype=torch.long, device=self.device),
                torch.tensor(cu_q, dtype=torch.int32, device=self.device),
                torch.tensor(cu_k, dtype=torch.int32, device=self.device),
                max(q1 - q0 for q0, q1, _, _ in self.runs), max(k1 - k0 + q1 - q0 for q0, q1, k0, k1 in self.runs),
            )
        return self._varlen


# One forward's plan, kept while the same segments list comes back (every layer, and the recomputation under
# checkpointing): the strong reference keeps ``is`` meaningful.
_last: dict = {"segments": None, "plan": None}


def _plan(segments, device: torch.device) -> _Plan | None:
    if _last["segments"] is segments and _last["plan"] is not None and _last["plan"].device == device:
        return _last["plan"]
    runs = runs_of_segments(segments)
    plan = _Plan(runs, device) if runs else None
    _last["segments"], _last["plan"] = segments, plan
    return plan


def fused_attention(backend: str, module, query, key, value, segments, scaling=None):
    """Attention of a padding-free row through ``backend`` (``fused_backend``), or None when its segments do not
    form runs (the caller then uses segment SDPA).

    ``query`` is ``(1, heads, L, head_dim)``, ``key`` and ``value`` ``(1, kv_heads, L, head_dim)``; returns
    ``(1, L, heads, head_dim)`` as transformers' attention functions do.
    """
    plan = _plan(segments, query.device)
    if plan is None or plan.length != query.shape[2]:
        return None
    if backend == "flex":
        return _flex(plan, query, key, value, scaling)
    return _varlen(plan, query, key, value, scaling)


def _flex(plan: _Plan, query, key, value, scaling):
    from torch.nn.attention.flex_attention import flex_attention

    attend = _compiled_flex() if query.is_cuda else flex_attention
    out = attend(query, key, value, block_mask=plan.block_mask(), scale=scaling,
                 enable_gqa=query.shape[1] != key.shape[1])
    return out.transpose(1, 2).contiguous()


_COMPILED: dict = {}


def _compiled_flex():
    """FlexAttention compiled once per process (uncompiled it materialises every score); shapes are dynamic."""
    if "flex" not in _COMPILED:
        from torch.nn.attention.flex_attention import flex_attention

        _COMPILED["flex"] = torch.compile(flex_attention, dynamic=True)
    return _COMPILED["flex"]


def _varlen(plan: _Plan, query, key, value, scaling):
    from torch.nn.attention.varlen import varlen_attn

    key_index, cu_q, cu_k, max_q, max_k = plan.varlen_inputs()
    q = query[0].transpose(0, 1)  # (L, heads, head_dim)
    k, v = (tensor[0].transpose(0, 1)[key_index] for tensor in (key, value))
    parameters = inspect.signature(varlen_attn).parameters
    options = {"scale": scaling}
    if q.shape[1] != k.shape[1]:
        if "enable_gqa" in parameters:
            options["enable_gqa"] = True
        else:
            groups = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    # torch 2.10 says causal as is_causal=True, later versions as a window of (-1, 0).
    options.update({"window_size": (-1, 0)} if "window_size" in parameters else {"is_causal": True})
    out = varlen_attn(q.contiguous(), k.contiguous(), v.contiguous(), cu_q, cu_k, max_q, max_k, **options)
    return out[None]
