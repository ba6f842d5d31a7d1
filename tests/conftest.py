"""Shared test fixtures.

Every test gets its own workspace (``MARGIN_LAB_HOME``), so runs, selections and registries never leak between
tests. Models are cached in the normal model cache (``DPO_ENGINE_CACHE``): building the tiny model or converting
the default one is deterministic, so sharing it across tests is safe and saves minutes.

The suite checks numbers against hand-computed and reference values on the CPU, in fp32, whatever the machine: on
a GPU machine ``device="auto"`` would otherwise pick CUDA (and ``auto`` precisions bf16), for this process and for
the run workers and jobs it starts. So CUDA is hidden here unless ``MARGIN_LAB_TEST_CUDA=1``; the GPU's own check is
``benchmarks/gpu_check.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

if os.environ.get("MARGIN_LAB_TEST_CUDA") != "1":
    os.environ["CUDA_VISIBLE_DEVICES"] = ""  # read when CUDA first initialises, which no import here has done
# Under xdist each worker, and every process it starts, trains on its share of the cores: a worker's 2-thread
# processes beside the other worker's on 2 cores spin-wait on each other (docs/benchmarks.md, shared CPU).
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    from dpo_engine.runs.devices import core_share  # imports no torch, which reads OMP_NUM_THREADS when it loads

    os.environ.setdefault("OMP_NUM_THREADS", str(core_share(int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))


@pytest.fixture(autouse=True)
def workspace(tmp_path, monkeypatch) -> Path:
    """A fresh ``MARGIN_LAB_HOME`` for each test."""
    home = tmp_path / "margin_lab_home"
    monkeypatch.setenv("MARGIN_LAB_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home


@pytest.fixture
def one_thread(request):
    """One intra-op torch thread for the tiny model: it gains nothing from more, and on a busy machine they spin-wait.

    Modules that train or score the tiny model use it (``pytestmark = pytest.mark.usefixtures("one_thread")``);
    tests marked slow (the real default model) keep the process's threads (under xdist, its share of the cores).
    """
    if request.node.get_closest_marker("slow"):
        yield
        return
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """The tiny random Llama (byte-level tokenizer, ChatML template), built once."""
    from dpo_engine.models.loading import ensure_tiny_model

    return ensure_tiny_model()


@pytest.fixture(scope="session")
def perturbed_adapter(tmp_path_factory, tiny_model_dir) -> Path:
    """A LoRA adapter on the tiny model with large random weights: policy != reference, and varied greedy answers."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)  # before get_peft_model, which draws lora_A: the adapter is the same whatever ran before
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    directory = tmp_path_factory.mktemp("perturbed_adapter")
    model.save_pretrained(directory)
    return directory
