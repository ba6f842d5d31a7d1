"""dpo_engine.training: parity with TRL's DPOTrainer, learning, saving, stop/resume, config validation.

Everything runs on the tiny random model except the one ``slow`` test, which trains the default SmolLM2-135M.
"""

import json
import math
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from dpo_engine.margins import formulas as margins
from dpo_engine.errors import ConfigError
from dpo_engine.files import read_jsonl
from dpo_engine.models.logps import policy_logps
from dpo_engine.losses.catalog import LOSS_NAMES
from dpo_engine.models.loading import DEFAULT_MODEL, TINY_MODEL, adapter_base, load_model
from dpo_engine.paths import ASSETS_DIR
from dpo_engine.models.tokenization import collate, encode_pair
from dpo_engine.training.callbacks import LOSS_STATE_FILE, METRIC_KEYS
from dpo_engine.training.config import TrainConfig
from dpo_engine.training.trainer import train, train_foreground



pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def conversation_pairs(n: int) -> list[dict]:
    """``n`` small conversational pairs (TRL's format) with distinct prompts and responses of different lengths."""
    return [
        {
            "prompt": [{"role": "user", "content": f"Question {i}: what is {i} + {i}?"}],
            "chosen": [{"role": "assistant", "content": f"It is {2 * i}."}],
            "rejected": [{"role": "assistant", "content": f"No idea, maybe {i}{'!' * i}."}],
        }
        for i in range(n)
    ]


def write_pairs(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def tiny_config(tmp_path: Path, n_pairs: int = 4, **overrides) -> TrainConfig:
    """A fast tiny-model config: constant learning rate, no warmup, CPU."""
    subset = write_pairs(tmp_path / "pairs.jsonl", conversation_pairs(n_pairs))
    values = dict(
        model=TINY_MODEL, subset=str(subset), max_steps=2, learning_rate=1e-2, lr_scheduler="constant",
        warmup_ratio=0.0, max_length=256, max_prompt_length=128, device="cpu",
    )
    return TrainConfig(**{**values, **overrides})


def metrics(run_dir: Path) -> list[dict]:
    return list(read_jsonl(run_dir / "metrics.jsonl"))


# ---- TRL parity -----------------------------------------------------------------------------------------------------


def test_matches_trl_dpo_trainer(tmp_path, tiny_model_dir):
    """Same model, data, LoRA, optimizer and seed: TRL 1.16's DPOTrainer and ours log the same numbers.

    Both sides train a fresh LoRA adapter (same config, created right after ``set_seed(42)``, so the same random
    A matrices). The reference differs in mechanism only: TRL (precompute_ref_log_probs=False) disables the adapter
    at every step, we precompute the reference once before training; both are the initial model. SGD with a large
    constant rate makes step 2 move clearly away from step 1, so the comparison is not vacuous.
    """
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    records = conversation_pairs(4)
    common = dict(learning_rate=0.5, optim="sgd", seed=42)
    trl_args = DPOConfig(
        output_dir=str(tmp_path / "trl"), per_device_train_batch_size=4, max_steps=2, lr_scheduler_type="constant",
        warmup_steps=0, logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, bf16=False,
        gradient_checkpointing=False, max_length=4096, beta=0.1, loss_type=["sigmoid"], disable_tqdm=True, **common,
    )
    trl_trainer = DPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32),
        args=trl_args,
        train_dataset=Dataset.from_list(records),
        processing_class=AutoTokenizer.from_pretrained(tiny_model_dir),
        peft_config=LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"),
    )
    trl_trainer.train()
    trl_logs = [entry for entry in trl_trainer.state.log_history if "loss" in entry]

    config = tiny_config(
        tmp_path, loss="dpo", loss_params={"beta": 0.1}, lora_r=8, lora_alpha=16, lora_dropout=0.0,
        batch_size=4, max_length=4096, max_prompt_length=2048, **common,
    )
    train(config, tmp_path / "ours")
    ours = metrics(tmp_path / "ours")

    assert [entry["step"] for entry in trl_logs] == [record["step"] for record in ours] == [1, 2]
    checks = [(0, "logps/chosen"), (0, "logps/rejected"), (1, "loss"), (1, "rewards/margins")]
    for index, key in checks:
        assert ours[index][key] == pytest.approx(trl_logs[index][key], rel=1e-4), (index + 1, key)
    assert ours[1]["rewards/margins"] > 0.1  # the first update really moved the policy


# ---- learning and saving --------------------------------------------------------------------------------------------


def test_training_lowers_the_loss_and_the_adapter_reloads(tmp_path):
    config = tiny_config(tmp_path, max_steps=20, loss_params={"beta": 0.5})
    summary = train(config, tmp_path / "run")

    records = metrics(tmp_path / "run")
    assert [record["step"] for record in records] == list(range(1, 21))
    assert all(list(record) == list(METRIC_KEYS) for record in records)
    assert records[0]["loss"] == pytest.approx(math.log(2), rel=1e-5)  # policy == reference at step 1
    assert records[-1]["loss"] < 0.5 * records[0]["loss"]
    assert records[-1]["rewards/accuracies"] == 1.0
    assert summary["stopped"] is False and summary["steps"] == 20
    assert summary["final_loss"] == records[-1]["loss"]

    adapter = Path(summary["adapter"])
    assert adapter_base(adapter) == TINY_MODEL  # portable: names the model, not a cache path
    model, tokenizer = load_model(TINY_MODEL, adapter=adapter, device="cpu")
    pairs = pd.read_json(config.subset, lines=True)
    encoded = [
        encode_pair(tokenizer, row.prompt, row.chosen[0]["content"], row.rejected[0]["content"], 256, 128)
        for row in pairs.itertuples()
    ]
    with torch.inference_mode():
        reloaded = policy_logps(model, collate(encoded, tokenizer.pad_token_id))
    rewards = pd.read_parquet(summary["pair_rewards"])
    assert reloaded["chosen_logps"].tolist() == pytest.approx(rewards.policy_chosen_logps.tolist(), rel=1e-4)
    assert reloaded["rejected_logps"].tolist() == pytest.approx(rewards.policy_rejected_logps.tolist(), rel=1e-4)


def test_a_dpo_step_raises_the_implicit_margin_of_its_pair(tmp_path):
    """The sign test (methods §1.4): after one DPO step on a pair, (pc - pr) - (rc - rr) is positive."""
    summary = train(tiny_config(tmp_path, n_pairs=1, max_steps=1, batch_size=1), tmp_path / "run")
    rewards = pd.read_parquet(summary["pair_rewards"])
    expected = margins.implicit_margin(
        rewards.policy_chosen_logps.values, rewards.policy_rejected_logps.values,
        rewards.ref_chosen_logps.values, rewards.ref_rejected_logps.values,
    )
    assert rewards.implicit_margin.values == pytest.approx(expected)
    assert rewards.implicit_margin.iloc[0] > 0


def test_train_foreground_shows_progress_and_returns_the_summary(tmp_path, capsys):
    summary = train_foreground(tiny_config(tmp_path), tmp_path / "run")
    assert summary["steps"] == 2 and summary["stopped"] is False
    assert "2/2" in capsys.readouterr().err  # the tqdm bar


@pytest.mark.parametrize("loss", LOSS_NAMES)
def test_every_loss_trains_one_step(tmp_path, loss):
    summary = train(tiny_config(tmp_path, loss=loss, max_steps=1), tmp_path / "run")
    (record,) = metrics(tmp_path / "run")
    assert summary["steps"] == 1 and math.isfinite(record["loss"])
    rewards = pd.read_parquet(summary["pair_rewards"])
    assert rewards.ref_chosen_logps.notna().all()  # LoRA: the reference is there even for reference-free simpo


@pytest.mark.parametrize(
    "overrides",
    [
        {"full_finetune": True, "precompute_reference": False},  # frozen copy of the initial model as reference
        {"full_finetune": True},  # precomputed reference
        {"precompute_reference": False},  # LoRA with the adapter disabled at each step
        {"precision": "bf16"},
        {"group_by_length": True, "gradient_accumulation_steps": 2, "batch_size": 1},
    ],
    ids=["full-copy", "full-precomputed", "lora-live-reference", "bf16", "grouped-accumulated"],
)
def test_training_variants_run(tmp_path, overrides):
    summary = train(tiny_config(tmp_path, max_steps=1, **overrides), tmp_path / "run")
    records = metrics(tmp_path / "run")
    assert [record["step"] for record in records] == [1]
    assert records[0]["rewards/margins"] == pytest.approx(0.0, abs=0.05 if overrides.get("precision") else 1e-5)
    output = summary["model_dir"] if overrides.get("full_finetune") else summary["adapter"]
    assert Path(output).is_dir()


# ---- stop and resume ------------------------------------------------------------------------------------------------


def test_stop_then_resume_continues_the_same_run(tmp_path):
    """alpha_dpo keeps EMA statistics; a stopped-and-resumed run must end where an uninterrupted one does."""
    # 3 steps per epoch: the stop after step 2 is mid-epoch, so the resume must also skip the right batches.
    config = tiny_config(tmp_path, n_pairs=6, batch_size=2, max_steps=4, loss="alpha_dpo", learning_rate=5e-2)
    straight = train(config, tmp_path / "straight")

    run_dir = tmp_path / "stopped"
    steps_seen = []
    summary = train(config, run_dir, should_stop=lambda: len(steps_seen) >= 2,
                    on_progress=lambda step, total: steps_seen.append((step, total)))
    assert summary["stopped"] is True and summary["steps"] == 2
    assert steps_seen == [(1, 4), (2, 4)]
    assert summary["adapter"] is None and not (run_dir / "adapter").exists()
    checkpoint = run_dir / "checkpoints" / "checkpoint-2"
    assert json.loads((checkpoint / LOSS_STATE_FILE).read_text()) == summary["loss_state"]
    # A record logged after the checkpoint (say the process died before the next save) must not survive the resume.
    with open(run_dir / "metrics.jsonl", "a") as handle:
        handle.write(json.dumps({"step": 3, "loss": 123.0}) + "\n")

    resumed = train(config, run_dir, resume=True)
    assert resumed["stopped"] is False and resumed["steps"] == 4
    records, reference = metrics(run_dir), metrics(tmp_path / "straight")
    assert [record["step"] for record in records] == [1, 2, 3, 4]
    assert [r["loss"] for r in records] == pytest.approx([r["loss"] for r in reference], rel=1e-5)
    assert records[-1]["elapsed_seconds"] > records[1]["elapsed_seconds"]
    assert resumed["loss_state"] == pytest.approx(straight["loss_state"], rel=1e-5)
    assert resumed["loss_state"]["gap_std"] > 0  # the statistics were live, so restoring them mattered


# ---- configuration --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"loss": "kto"}, "loss"),
        ({"loss_params": {"beta": -0.1}}, "beta"),
        ({"loss_params": {"gamma": 1.0}}, "gamma"),
        ({"subset": "empty"}, "subset"),
        ({"subset": "missing.jsonl"}, "subset"),
        ({"model": "missing-model-dir"}, "model"),
        ({"max_length": 64, "max_prompt_length": 64}, "max_length"),
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"batch_size": 0}, "batch_size"),
        ({"num_epochs": 0}, "num_epochs"),
        ({"precision": "fp16"}, "precision"),
        ({"device": "tpu"}, "device"),
    ],
)
def test_bad_configs_are_rejected_before_launch_naming_the_field(tmp_path, overrides, field):
    (tmp_path / "empty.jsonl").write_text("")
    overrides = {
        key: str(tmp_path / value) if key in ("subset", "model") and not value.startswith("/") else value
        for key, value in overrides.items()
    }
    config = tiny_config(tmp_path, **overrides)
    with pytest.raises(ConfigError) as error:
        config.validate()
    assert error.value.field == field


def test_drop_invalid_trains_on_the_usable_rows_and_names_the_rest(tmp_path, capsys):
    from dpo_engine.training.config import load_subset

    rows = [{"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(4)]
    rows[2]["chosen"] = None  # no text: a row that cannot be used
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(ConfigError) as refused:
        load_subset(TrainConfig(subset=str(path)))
    assert refused.value.field == "subset"
    pairs = load_subset(TrainConfig(subset=str(path), drop_invalid=True))
    assert pairs.prompt.tolist() == ["q0", "q1", "q3"]
    assert "rows left out: 1 (data rows 2)" in capsys.readouterr().err


def test_config_from_yaml_round_trips_and_rejects_unknown_keys(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("model: tiny-random\nsubset: pairs.jsonl\nloss: simpo\nloss_params: {beta: 2.0}\n"
                    "learning_rate: 5e-5\nlora_target_modules: [q_proj, v_proj]\n")
    config = TrainConfig.from_yaml(path)
    assert config.learning_rate == 5e-5  # PyYAML reads 5e-5 as a string; it is coerced
    assert config.lora_target_modules == ["q_proj", "v_proj"]
    assert TrainConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError) as error:
        TrainConfig.from_dict({"model": "tiny-random", "learning_rat": 1e-4})
    assert error.value.field == "learning_rat"
    with pytest.raises(ConfigError) as error:
        TrainConfig.from_dict({"batch_size": "four"})
    assert error.value.field == "batch_size"


# ---- the default model ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_default_model_trains_on_ultrafeedback_pairs(tmp_path):
    """8 UltraFeedback pairs, SmolLM2-135M-Instruct, LoRA, 1 epoch of batch 4, max_length 128, CPU."""
    source = ASSETS_DIR / "data" / "ultrafeedback_binarized_scored_1200.jsonl"
    lines = source.read_text(encoding="utf-8").splitlines()[:8]
    (tmp_path / "pairs.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = TrainConfig(
        model=DEFAULT_MODEL, subset=str(tmp_path / "pairs.jsonl"), num_epochs=1, batch_size=4, max_length=128,
        max_prompt_length=64, device="cpu",
    )
    started = time.perf_counter()
    summary = train(config, tmp_path / "run")
    print(f"default-model run: {time.perf_counter() - started:.1f} s wall, summary {summary}")
    records = metrics(tmp_path / "run")
    assert summary["steps"] == 2 and [record["step"] for record in records] == [1, 2]
    assert all(math.isfinite(record["loss"]) for record in records)
    assert (Path(summary["adapter"]) / "adapter_model.safetensors").exists()


def test_resume_skips_a_checkpoint_a_kill_left_half_written(tmp_path):
    from dpo_engine.training.trainer import last_complete_checkpoint

    assert last_complete_checkpoint(tmp_path / "missing") is None
    complete, torn = tmp_path / "checkpoint-2", tmp_path / "checkpoint-4"
    complete.mkdir()
    (complete / "trainer_state.json").write_text("{}")
    torn.mkdir()
    (torn / "adapter_model.safetensors").write_bytes(b"partial")  # killed before trainer_state.json was written
    assert last_complete_checkpoint(tmp_path) == str(complete)
    assert not torn.exists()
