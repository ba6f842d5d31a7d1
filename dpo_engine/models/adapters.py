"""LoRA adapters other tools load as they are: a base PEFT resolves offline, and a standalone merged model.

A saved adapter's ``adapter_config.json`` names its base by the local directory the base was loaded from (what
``AutoPeftModelForCausalLM.from_pretrained(adapter)`` needs, offline, on the machine that trained it), and
``base_model.json`` beside it keeps the name it was configured with (``smollm2-135m-instruct``, a Hub id or a
path) and the original Hub id where there is one, so `dpo_engine.models.loading.adapter_base` still finds the
base on another machine.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from dpo_engine.errors import ModelError
from dpo_engine.files import atomic_write_json, staged_directory
from dpo_engine.models.loading import BASE_MODEL_FILE, DEFAULT_MODEL, load_model, read_adapter_config, resolve_model

# The Hub repository each built-in model name was converted from (tiny-random is built locally: none).
HUB_IDS = {DEFAULT_MODEL: "HuggingFaceTB/SmolLM2-135M-Instruct"}


def record_base_model(adapter_dir: str | os.PathLike, model: str) -> dict:
    """Point ``adapter_dir``'s ``adapter_config.json`` at the base's local directory and write ``base_model.json``.

    ``model``: the base as configured. Returns what ``base_model.json`` holds: ``model``, ``path`` (the local
    directory, absolute) and ``hub_id`` (the original Hub id, or None for a local-only model).
    """
    adapter_dir = Path(adapter_dir)
    local = resolve_model(model).resolve()
    looks_like_hub_id = "/" in model and not Path(model).expanduser().exists()
    record = {"model": model, "path": str(local), "hub_id": HUB_IDS.get(model, model if looks_like_hub_id else None)}
    config_file = adapter_dir / "adapter_config.json"
    adapter_config = json.loads(config_file.read_text(encoding="utf-8"))
    adapter_config["base_model_name_or_path"] = str(local)
    atomic_write_json(config_file, adapter_config)
    atomic_write_json(adapter_dir / BASE_MODEL_FILE, record)
    return record


def merge_adapter(adapter_dir: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Write the base model with ``adapter_dir``'s LoRA weights merged in, plus its tokenizer, to ``out_dir``.

    The result is a plain model directory ``AutoModelForCausalLM.from_pretrained(out_dir)`` loads without PEFT;
    its logits equal the adapter model's (up to float rounding). ``out_dir`` must not exist or be empty; it is
    written beside itself first and renamed, so a failure leaves nothing half-written.
    """
    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir).expanduser()
    read_adapter_config(adapter_dir)  # a PEFT adapter, or a ModelError naming what is missing
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ModelError(f"--merged {out_dir} already exists and is not an empty directory; choose a new one")
    model, tokenizer = load_model(str(adapter_dir), dtype="fp32", device="cpu")  # fp32: nothing lost to rounding
    merged = model.merge_and_unload()
    with staged_directory(out_dir) as staging:
        merged.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    return out_dir
