"""How much device memory a training run needs: an estimate from the model's shape and the longest batch.

``estimate_training_memory`` is pure arithmetic (bytes) over a ``ModelShape`` (read from a model's
``config.json``) and the longest batch's tokens; ``check_fits`` compares it with the device's memory and refuses,
naming the config field to change, when it will not fit. ``dpo-engine train --dry-run`` and the Runs form show it
before launch; ``train()`` checks it on the encoded pairs before the first step. Torch is imported only to ask a
GPU its size.

The estimate counts what dominates at 1-8B scale: the weights, the trainable parameters with their gradients and
Adam's two moments (fp32), the activations the backward pass keeps (per token and layer, in the compute dtype), and
the logits of the scored positions. It leaves out the CUDA context, allocator fragmentation and temporary buffers,
so ``check_fits`` keeps ``HEADROOM`` of the device free. ``benchmarks/gpu_check.py`` prints it next to the measured
peak of an 8B-shaped LoRA step.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from dpo_engine.errors import ConfigError

GIB = 2**30
HEADROOM = 0.10  # fraction of the device's memory left for what the estimate does not count
BYTES = {"fp32": 4, "bf16": 2}
# Bytes per trainable parameter: the fp32 weight, its gradient and Adam's two moments.
TRAINABLE_BYTES = 16
# fp32 bytes per logit element: the float copy the log-softmax keeps for backward, and its gradient.
LOGIT_FLOAT_BYTES = 8


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a Llama-style decoder that memory depends on (a ``config.json``'s fields)."""

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    tied_embeddings: bool = True

    @classmethod
    def from_config(cls, config: dict) -> "ModelShape":
        """From a ``config.json`` mapping (a multimodal config's ``text_config`` if it has one)."""
        config = config.get("text_config", config)
        hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
        return cls(
            hidden_size=hidden,
            intermediate_size=int(config.get("intermediate_size") or 4 * hidden),
            num_layers=int(config["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=int(config.get("head_dim") or hidden // heads),
            vocab_size=int(config["vocab_size"]),
            tied_embeddings=bool(config.get("tie_word_embeddings", True)),
        )

    @classmethod
    def from_model_dir(cls, directory: str | Path) -> "ModelShape":
        return cls.from_config(json.loads((Path(directory) / "config.json").read_text(encoding="utf-8")))

    def linear_shapes(self) -> list[tuple[int, int]]:
        """``(in, out)`` features of one layer's linear maps: q, k, v, o, gate, up, down."""
        h, i = self.hidden_size, self.intermediate_size
        q, kv = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        return [(h, q), (h, kv), (h, kv), (q, h), (h, i), (h, i), (i, h)]

    def parameters(self) -> int:
        """Parameters: embeddings, the layers' linear maps and norms, the final norm and an untied LM head."""
        per_layer = sum(a * b for a, b in self.linear_shapes()) + 2 * self.hidden_size
        embeddings = self.vocab_size * self.hidden_size * (1 if self.tied_embeddings else 2)
        return embeddings + self.num_layers * per_layer + self.hidden_size

    def lora_parameters(self, rank: int) -> int:
        """Parameters of rank-``rank`` adapters on every linear map of every layer ('all-linear')."""
        return self.num_layers * sum(rank * (a + b) for a, b in self.linear_shapes())

    def saved_elements_per_token(self) -> int:
        """Activation elements one layer keeps per token for backward (compute dtype): the two norms' inputs and
        outputs, q, k, v, the attention output, the MLP's gate, up, activation and product."""
        q, kv = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        return 4 * self.hidden_size + 2 * q + 2 * kv + 4 * self.intermediate_size


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per part, and the inputs they were computed for."""

    weights: int
    trainable: int
    activations: int
    logits: int
    batch_tokens: int
    logit_positions: int
    checkpointing: bool

    @property
    def total(self) -> int:
        return self.weights + self.trainable + self.activations + self.logits

    def to_dict(self) -> dict:
        return {**asdict(self), "total": self.total}

    def describe(self) -> str:
        """One line in GiB, e.g. ``weights 15.0 + trainable 0.3 + activations 4.1 + logits 9.8 = 29.2 GiB``."""
        parts = ", ".join(f"{name} {getattr(self, name) / GIB:.2f}"
                          for name in ("weights", "trainable", "activations", "logits"))
        mode = "with" if self.checkpointing else "without"
        return (f"{parts} = {self.total / GIB:.2f} GiB for the longest batch ({self.batch_tokens:,} tokens, "
                f"{self.logit_positions:,} scored positions), {mode} gradient checkpointing")


def estimate_training_memory(
    shape: ModelShape,
    *,
    batch_tokens: int,
    logit_positions: int,
    weight_dtype: str,
    compute_dtype: str,
    lora_rank: int | None,
    checkpointing: bool,
) -> MemoryEstimate:
    """Peak training memory in bytes of one forward and backward over the longest batch.

    Args:
        shape: the model's sizes.
        batch_tokens: tokens of the longest batch's padding-free row (every segment's tokens).
        logit_positions: positions of that batch whose logits are computed (one per scored response token).
        weight_dtype: ``"fp32"`` or ``"bf16"``: how the (frozen, with LoRA) weights are stored.
        compute_dtype: ``"fp32"`` or ``"bf16"``: the dtype of activations and logits (bf16 under autocast).
        lora_rank: the adapters' rank (all-linear), or None for full fine-tuning (every weight trainable: its
            gradient and Adam moments are counted, its fp32 weight is in ``weights``).
        checkpointing: with gradient checkpointing each layer keeps only its input per token, and one layer's
            activations are rebuilt at a time during backward.

    Returns a ``MemoryEstimate``: ``weights`` = parameters x weight bytes; ``trainable`` = trainable parameters x
    16 (fp32 weight, gradient, two Adam moments; for full fine-tuning 12, the weight being in ``weights``);
    ``activations`` = tokens x (layers x saved elements per token, or with checkpointing layers x hidden + one
    layer's saved elements) x compute bytes; ``logits`` = positions x vocabulary x (compute bytes + 8).
    """
    compute = BYTES[compute_dtype]
    weights = shape.parameters() * BYTES[weight_dtype]
    if lora_rank is None:
        trainable = shape.parameters() * (TRAINABLE_BYTES - 4)
    else:
        trainable = shape.lora_parameters(lora_rank) * TRAINABLE_BYTES
    per_layer = shape.saved_elements_per_token()
    if checkpointing:
        elements_per_token = shape.num_layers * shape.hidden_size + per_layer
    else:
        elements_per_token = shape.num_layers * per_layer
    activations = batch_tokens * elements_per_token * compute
    logits = logit_positions * shape.vocab_size * (compute + LOGIT_FLOAT_BYTES)
    return MemoryEstimate(weights, trainable, activations, logits, batch_tokens, logit_positions, checkpointing)


def longest_batch(pair_lengths: list[tuple[int, int, int]], batch_size: int) -> tuple[int, int]:
    """``(row tokens, scored positions)`` bounding any batch of ``batch_size`` pairs: each the sum of the
    ``batch_size`` largest. ``pair_lengths``: ``(prompt, chosen, rejected)`` tokens per pair; a pair costs at most
    two segments ``prompt + response`` (2p + c + r tokens) and scores c + r positions."""
    tokens = sorted((2 * p + c + r for p, c, r in pair_lengths), reverse=True)[:batch_size]
    positions = sorted((c + r for _, c, r in pair_lengths), reverse=True)[:batch_size]
    return sum(tokens), sum(positions)


def length_bound(max_length: int, batch_size: int) -> tuple[int, int]:
    """``(row tokens, scored positions)`` at most, for pairs cut to ``max_length`` tokens per sequence."""
    return 2 * max_length * batch_size, 2 * max_length * batch_size


def estimate_for_config(config, shape: ModelShape, pair_lengths: list[tuple[int, int, int]] | None = None,
                        device: str = "cpu") -> MemoryEstimate:
    """The estimate for a ``TrainConfig`` on ``device``: its longest batch of ``pair_lengths`` when given (encoded
    pairs), else the bound ``max_length`` sets. A precision of ``auto`` counts as bf16 on CUDA, fp32 elsewhere."""
    tokens, positions = (longest_batch(pair_lengths, config.batch_size) if pair_lengths is not None
                         else length_bound(config.max_length, config.batch_size))
    bf16 = config.precision == "bf16" or (config.precision == "auto" and device.startswith("cuda"))
    return estimate_training_memory(
        shape, batch_tokens=tokens, logit_positions=positions,
        weight_dtype="bf16" if bf16 and not config.full_finetune else "fp32",
        compute_dtype="bf16" if bf16 else "fp32",
        lora_rank=None if config.full_finetune else config.lora_r,
        checkpointing=config.gradient_checkpointing,
    )


def device_memory(device: str) -> int:
    """Bytes of memory of ``device`` (``cuda``, ``cuda:N``, ``mps`` or ``cpu``: the machine's RAM)."""
    if device.startswith("cuda"):
        import torch

        return int(torch.cuda.get_device_properties(torch.device(device)).total_memory)
    import psutil

    return int(psutil.virtual_memory().total)


def check_fits(estimate: MemoryEstimate, available: int) -> None:
    """Raise ``ConfigError`` when ``estimate`` exceeds ``available`` bytes less ``HEADROOM``, naming the field to
    change (``gradient_checkpointing`` while it is off, else ``batch_size``)."""
    usable = available * (1 - HEADROOM)
    if estimate.total <= usable:
        return
    advice = ("turn on gradient_checkpointing, or lower batch_size or max_length" if not estimate.checkpointing
              else "lower batch_size or max_length")
    field = "gradient_checkpointing" if not estimate.checkpointing else "batch_size"
    raise ConfigError(field, f"the run needs about {estimate.total / GIB:.1f} GiB ({estimate.describe()}) but the "
                             f"device has {available / GIB:.1f} GiB ({usable / GIB:.1f} usable): {advice}")


# Where the built-in models live once built (dpo_engine.models.loading's names, repeated to stay torch-free).
_BUILT_IN_DIRS = {"smollm2-135m-instruct": "smollm2-135m-instruct", "tiny-random": "tiny-random-v1-seed0"}


def local_model_shape(model: str) -> ModelShape | None:
    """The shape of ``model`` from a ``config.json`` already on disk (a model directory, or a built-in model once
    built), without importing torch; None when there is none yet (a Hub id, an adapter, a model not yet built)."""
    from dpo_engine.paths import cache_dir

    candidates = [Path(model).expanduser()]
    if model in _BUILT_IN_DIRS:
        candidates.insert(0, cache_dir() / _BUILT_IN_DIRS[model])
    for directory in candidates:
        if (directory / "config.json").is_file():
            try:
                return ModelShape.from_model_dir(directory)
            except (KeyError, ValueError, TypeError):
                return None
    return None


def resolve_device(device: str) -> str:
    """``auto`` to the device training would use (cuda, then mps, then cpu)."""
    if device != "auto":
        return device
    import torch

    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    return "mps" if mps is not None and mps.is_available() else "cpu"


def launch_estimate(config) -> tuple[MemoryEstimate, str, int] | None:
    """Before launch, from the config alone: ``(estimate for the max_length bound, device, its memory in bytes)``,
    or None when the model's shape is not on disk yet. ``train()`` checks the encoded pairs' own longest batch."""
    shape = local_model_shape(config.model)
    if shape is None:
        return None
    device = resolve_device(config.device)
    return estimate_for_config(config, shape, device=device), device, device_memory(device)
