"""Training that fits: checkpointing on padding-free rows, the heaviest batch first, the memory estimate."""

import pytest
import torch
import yaml

from dpo_engine.cli import main
from dpo_engine.errors import ConfigError
from dpo_engine.files import read_jsonl
from dpo_engine.models.loading import TINY_MODEL, load_model
from dpo_engine.models.logps import pair_logps, supports_packing
from dpo_engine.models.tokenization import EncodedPair
from dpo_engine.training import batches, memory, trainer
from dpo_engine.training.batches import length_grouped_order
from dpo_engine.training.checkpointing import attention_for_training, enable_checkpointing
from dpo_engine.training.memory import ModelShape, check_fits, estimate_training_memory
from tests.test_training import tiny_config

SMALL = ModelShape(hidden_size=4, intermediate_size=8, num_layers=2, num_heads=2, num_kv_heads=1, head_dim=2,
                   vocab_size=10)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def lora_gradients(checkpointing: bool) -> dict[str, torch.Tensor]:
    """Gradients of a LoRA tiny model's summed pair log-probs over padding-free rows."""
    from peft import LoraConfig, get_peft_model

    model, _ = load_model(TINY_MODEL)
    if checkpointing:
        enable_checkpointing(model)
    torch.manual_seed(0)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    model.train()
    pairs = [EncodedPair(list(range(5, 5 + p)), list(range(40, 40 + c)), list(range(80, 80 + r)))
             for p, c, r in [(30, 4, 6), (3, 20, 15), (12, 9, 1)]]
    with attention_for_training(model, checkpointing):
        assert supports_packing(model)
        out = pair_logps(model, pairs, pad_token_id=0)
        (out["chosen_logps"] - 0.5 * out["rejected_logps"]).sum().backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}


def test_checkpointing_keeps_padding_free_rows_with_the_plain_gradients(tiny_model_dir):
    plain, checkpointed = lora_gradients(False), lora_gradients(True)
    assert plain.keys() == checkpointed.keys() and plain
    for name, grad in plain.items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_checkpointing_without_segment_attention_throughout_falls_back(tiny_model_dir):
    model, _ = load_model(TINY_MODEL)
    enable_checkpointing(model)
    model.train()
    assert not supports_packing(model)  # the recomputation would run outside a per-forward segment block
    with torch.no_grad():
        assert supports_packing(model)


def test_a_checkpointed_run_logs_the_plain_runs_numbers(tmp_path):
    runs = {}
    for checkpointing in (False, True):
        trainer.train(tiny_config(tmp_path, max_steps=2, gradient_checkpointing=checkpointing),
                      tmp_path / f"run-{checkpointing}")
        runs[checkpointing] = list(read_jsonl(tmp_path / f"run-{checkpointing}" / "metrics.jsonl"))
    for plain, checkpointed in zip(runs[False], runs[True]):
        for key in ("loss", "rewards/margins", "logps/chosen", "grad_norm"):
            assert checkpointed[key] == pytest.approx(plain[key], rel=1e-5), key


def test_length_grouped_order_puts_the_heaviest_batch_first():
    lengths = [5, 40, 7, 3, 90, 12, 8, 60, 2, 33, 41]
    order = length_grouped_order(lengths, batch_size=3, seed=1)
    assert sorted(order) == list(range(len(lengths)))
    batches_ = [order[i : i + 3] for i in range(0, len(order), 3)]
    totals = [sum(lengths[i] for i in batch) for batch in batches_]
    assert totals[0] == max(totals) == 90 + 60 + 41  # one group: sorted by length, so the three longest
    assert length_grouped_order(lengths, batch_size=3, seed=1) == order  # seeded


def test_training_meets_the_longest_batch_first_and_the_loss_is_unchanged(tmp_path, monkeypatch):
    seen = []

    class Recording(batches.PairCollator):
        def __call__(self, examples):
            seen.append(sum(len(e["prompt_ids"]) + len(e["chosen_ids"]) + len(e["rejected_ids"]) for e in examples))
            return super().__call__(examples)

    monkeypatch.setattr(trainer, "PairCollator", Recording)
    trainer.train(tiny_config(tmp_path, n_pairs=12, max_steps=-1, num_epochs=1, batch_size=3), tmp_path / "grouped")
    assert len(seen) == 4 and seen[0] == max(seen)

    losses = {}
    for grouped in (True, False):  # one batch of every pair: the order inside it must not change the numbers
        run_dir = tmp_path / f"all-{grouped}"
        trainer.train(tiny_config(tmp_path, n_pairs=6, max_steps=1, batch_size=6, group_by_length=grouped), run_dir)
        losses[grouped] = next(iter(read_jsonl(run_dir / "metrics.jsonl")))
    for key in ("loss", "rewards/margins", "logps/chosen"):
        assert losses[True][key] == pytest.approx(losses[False][key], rel=1e-6), key


def test_memory_estimate_against_hand_computed_bytes():
    # parameters: embeddings 10*4, per layer (16+8+8+16+32+32+32 linear + 8 norm) = 152, final norm 4
    assert SMALL.parameters() == 40 + 2 * 152 + 4
    assert SMALL.lora_parameters(1) == 2 * (8 + 6 + 6 + 8 + 12 + 12 + 12)
    assert SMALL.saved_elements_per_token() == 4 * 4 + 2 * 4 + 2 * 2 + 4 * 8
    plain = estimate_training_memory(SMALL, batch_tokens=10, logit_positions=6, weight_dtype="bf16",
                                     compute_dtype="bf16", lora_rank=1, checkpointing=False)
    assert (plain.weights, plain.trainable, plain.activations, plain.logits) == (696, 128 * 16, 10 * 2 * 60 * 2, 600)
    assert plain.total == 696 + 2048 + 2400 + 600
    checkpointed = estimate_training_memory(SMALL, batch_tokens=10, logit_positions=6, weight_dtype="bf16",
                                            compute_dtype="bf16", lora_rank=1, checkpointing=True)
    assert checkpointed.activations == 10 * (2 * 4 + 60) * 2
    full = estimate_training_memory(SMALL, batch_tokens=10, logit_positions=6, weight_dtype="fp32",
                                    compute_dtype="fp32", lora_rank=None, checkpointing=False)
    assert (full.weights, full.trainable, full.logits) == (348 * 4, 348 * 12, 6 * 10 * 12)


def test_model_shape_counts_the_real_models_parameters(tiny_model_dir):
    from peft import LoraConfig, get_peft_model

    model, _ = load_model(TINY_MODEL)
    shape = ModelShape.from_model_dir(tiny_model_dir)
    assert shape.parameters() == sum(p.numel() for p in model.parameters())
    lora = get_peft_model(model, LoraConfig(r=8, target_modules="all-linear"))
    assert shape.lora_parameters(8) == sum(p.numel() for p in lora.parameters() if p.requires_grad)


def test_longest_batch_bounds_the_heaviest_pairs():
    assert memory.longest_batch([(2, 3, 4), (10, 1, 1), (0, 5, 5)], batch_size=2) == (22 + 11, 10 + 7)


def test_a_run_that_will_not_fit_is_refused_naming_the_field():
    estimate = estimate_training_memory(SMALL, batch_tokens=10, logit_positions=6, weight_dtype="bf16",
                                        compute_dtype="bf16", lora_rank=1, checkpointing=False)
    check_fits(estimate, available=10_000)
    with pytest.raises(ConfigError, match="gradient_checkpointing") as refused:
        check_fits(estimate, available=estimate.total)  # the headroom is not there
    assert refused.value.field == "gradient_checkpointing" and "GiB" in str(refused.value)


def test_train_dry_run_prints_the_estimate_and_refuses_what_will_not_fit(tmp_path, monkeypatch, capsys):
    config = tiny_config(tmp_path)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config.to_dict()))
    assert main(["train", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "memory estimate: weights" in out and "the run fits" in out and not (tmp_path / "runs").exists()
    monkeypatch.setattr(trainer, "device_memory", lambda device: 1000)
    assert main(["train", str(path), "--dry-run"]) == 2
    assert "config field 'gradient_checkpointing'" in capsys.readouterr().err


def test_train_refuses_before_the_first_step(tmp_path, monkeypatch):
    monkeypatch.setattr(trainer, "device_memory", lambda device: 1000)
    with pytest.raises(ConfigError, match="needs about"):
        trainer.train(tiny_config(tmp_path), tmp_path / "run")
    assert not (tmp_path / "run" / "metrics.jsonl").exists()

