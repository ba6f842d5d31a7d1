"""Adapters PEFT loads unchanged, offline, and ``dpo-engine runs export RUN_ID --merged DIR``."""

from __future__ import annotations

import json

import pytest
import torch

from dpo_engine.cli import main
from dpo_engine.models.loading import TINY_MODEL, adapter_base, load_model, resolve_model


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A finished tiny-model run (two steps, a large learning rate so the adapter is far from zero)."""
    import os

    from dpo_engine import runs

    home = tmp_path_factory.mktemp("home")
    previous = os.environ.get("MARGIN_LAB_HOME")
    os.environ["MARGIN_LAB_HOME"] = str(home)
    pairs = home / "pairs.jsonl"
    pairs.write_text("".join(
        json.dumps({"prompt": f"Question {i}?", "chosen": f"Yes {i}.", "rejected": f"No, never {i}{'!' * i}."}) + "\n"
        for i in range(4)
    ))
    torch.set_num_threads(1)
    run_id = runs.create_run({"model": TINY_MODEL, "subset": str(pairs), "max_steps": 2, "learning_rate": 0.05,
                              "lr_scheduler": "constant", "warmup_ratio": 0.0, "device": "cpu", "batch_size": 2})
    runs.run_foreground(run_id)
    yield run_id, runs.get_run(run_id).run_dir, home
    if previous is None:
        os.environ.pop("MARGIN_LAB_HOME", None)
    else:
        os.environ["MARGIN_LAB_HOME"] = previous


def probe_ids():
    return torch.tensor([[5, 17, 42, 99, 3, 64]])


def test_adapter_config_names_the_local_base_and_keeps_the_configured_name(trained_run):
    _, run_dir, _ = trained_run
    adapter = run_dir / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(resolve_model(TINY_MODEL).resolve())
    assert json.loads((adapter / "base_model.json").read_text()) == {
        "model": TINY_MODEL, "path": config["base_model_name_or_path"], "hub_id": None,
    }
    assert adapter_base(adapter) == TINY_MODEL  # our loader still resolves it by name on another machine


def test_auto_peft_model_loads_the_adapter_offline(trained_run, monkeypatch):
    from peft import AutoPeftModelForCausalLM

    _, run_dir, home = trained_run
    monkeypatch.setenv("MARGIN_LAB_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    peft_model = AutoPeftModelForCausalLM.from_pretrained(run_dir / "adapter").eval()
    ours, _ = load_model(str(run_dir / "adapter"), device="cpu")
    with torch.no_grad():
        expected = ours(probe_ids()).logits
        assert torch.allclose(peft_model(probe_ids()).logits, expected, atol=1e-6)
        with ours.disable_adapter():
            assert not torch.allclose(ours(probe_ids()).logits, expected, atol=1e-4)  # the adapter is not a no-op


def test_runs_export_merged_writes_a_standalone_model(trained_run, tmp_path, monkeypatch, capsys):
    from transformers import AutoModelForCausalLM

    run_id, run_dir, home = trained_run
    monkeypatch.setenv("MARGIN_LAB_HOME", str(home))
    out = tmp_path / "merged"
    assert main(["runs", "export", run_id, "--merged", str(out)]) == 0
    assert not (out / "adapter_config.json").exists() and (out / "config.json").exists()
    assert (out / "tokenizer_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    ours, _ = load_model(str(run_dir / "adapter"), device="cpu")
    with torch.no_grad():
        assert torch.allclose(merged(probe_ids()).logits, ours(probe_ids()).logits, atol=1e-5)
    assert main(["runs", "export", run_id, "--merged", str(out)]) == 2  # never overwrites
    assert "already exists" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("model", "hub_id"),
    [("smollm2-135m-instruct", "HuggingFaceTB/SmolLM2-135M-Instruct"), ("org/some-model", "org/some-model"),
     ("tiny-random", None)],
)
def test_the_original_hub_id_is_kept_beside_the_adapter(tmp_path, monkeypatch, model, hub_id):
    import dpo_engine.models.adapters as adapters

    (tmp_path / "base").mkdir()
    monkeypatch.setattr(adapters, "resolve_model", lambda name: tmp_path / "base")  # no conversion or download
    config = {"base_model_name_or_path": model, "peft_type": "LORA", "r": 4}
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    record = adapters.record_base_model(tmp_path, model)
    assert record == {"model": model, "path": str((tmp_path / "base").resolve()), "hub_id": hub_id}
    assert json.loads((tmp_path / "adapter_config.json").read_text()) == {**config, "base_model_name_or_path": record["path"]}
    assert adapter_base(tmp_path) == model


@pytest.mark.parametrize("config_text, problem", [("{}", "no 'peft_type' field"), ("{not json", "not readable JSON")])
def test_a_directory_that_is_not_a_peft_adapter_is_named_before_the_base_loads(tmp_path, monkeypatch, config_text,
                                                                                problem):
    from transformers import AutoModelForCausalLM

    from dpo_engine.errors import ModelError

    (tmp_path / "adapter_config.json").write_text(config_text)
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", lambda *a, **k: pytest.fail("the base was loaded"))
    with pytest.raises(ModelError, match=problem) as raised:
        load_model(TINY_MODEL, device="cpu", adapter=tmp_path)
    assert str(tmp_path / "adapter_config.json") in str(raised.value)
    with pytest.raises(ModelError, match=problem):  # the directory given as the model itself
        load_model(str(tmp_path), device="cpu")
