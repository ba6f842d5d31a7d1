"""Exports TRL trains on unchanged: selection exports and run subsets in TRL's conversational or standard format."""

from __future__ import annotations

import json

import pytest
import torch

from dpo_engine.data import load_pairs
from dpo_engine.selection.store import Selection, export_selection

ORCA_ROWS = [  # a system column: the export must be conversational so the system prompt survives
    {"id": f"o{i}", "system": "Answer briefly.", "question": f"What is {i} + {i}?", "chosen": f"{2 * i}.",
     "rejected": f"Maybe {i}{'!' * i}.", "source": "orca"}
    for i in range(4)
]
PLAIN_ROWS = [
    {"id": f"p{i}", "prompt": f"Count to {i}.", "chosen": " ".join(map(str, range(i + 1))), "rejected": "no",
     "score_chosen": 5.0, "score_rejected": 1.0, "annotator": f"a{i}"}
    for i in range(4)
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def export(tmp_path, rows, name):
    pairs = load_pairs(write_jsonl(tmp_path / f"{name}-source.jsonl", rows)).pairs
    selection = Selection(name=name, rule="all", params={}, dataset_fingerprint=None, pair_ids=list(pairs.pair_id))
    return export_selection(selection, pairs, tmp_path / f"{name}.jsonl"), pairs


def test_conversational_export_is_trl_conversational_and_keeps_extra_columns(tmp_path):
    path, pairs = export(tmp_path, ORCA_ROWS, "orca")
    record = json.loads(path.read_text(encoding="utf-8").splitlines()[1])
    assert record["prompt"] == [{"role": "system", "content": "Answer briefly."},
                                {"role": "user", "content": "What is 1 + 1?"}]
    assert record["chosen"] == [{"role": "assistant", "content": "2."}]
    assert record["rejected"] == [{"role": "assistant", "content": "Maybe 1!."}]
    assert record["source"] == "orca" and record["pair_id"] == "o1"
    reloaded = load_pairs(path).pairs
    assert reloaded["prompt_messages"].tolist() == pairs["prompt_messages"].tolist()
    assert reloaded["chosen"].tolist() == pairs["chosen"].tolist() and reloaded["conversational"].all()


def test_plain_export_is_trl_standard(tmp_path):
    path, _ = export(tmp_path, PLAIN_ROWS, "plain")
    record = json.loads(path.read_text(encoding="utf-8").splitlines()[2])
    assert record == {"pair_id": "p2", "prompt": "Count to 2.", "chosen": "0 1 2", "rejected": "no",
                      "score_chosen": 5.0, "score_rejected": 1.0, "annotator": "a2"}


def test_run_subset_is_in_trl_format(tmp_path):
    from dpo_engine.runs import SUBSET_FILE, create_run, get_run

    source = write_jsonl(tmp_path / "orca.jsonl", ORCA_ROWS)
    run_id = create_run({"model": "tiny-random", "subset": str(source), "max_steps": 1, "device": "cpu"})
    record = json.loads((get_run(run_id).run_dir / SUBSET_FILE).read_text(encoding="utf-8").splitlines()[0])
    assert record["prompt"][0]["role"] == "system"
    assert record["chosen"] == [{"role": "assistant", "content": "0."}]


@pytest.mark.parametrize("rows", [ORCA_ROWS, PLAIN_ROWS], ids=["conversational", "standard"])
def test_trl_dpo_trainer_trains_one_step_on_an_export(tmp_path, tiny_model_dir, rows):
    """The export file, loaded as a user would (``load_dataset("json")``), trains TRL 1.16's DPOTrainer as it is."""
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    path, _ = export(tmp_path, rows, "export")
    dataset = load_dataset("json", data_files=str(path), split="train")
    args = DPOConfig(
        output_dir=str(tmp_path / "trl"), per_device_train_batch_size=2, max_steps=1, logging_steps=1,
        save_strategy="no", report_to="none", use_cpu=True, bf16=False, gradient_checkpointing=False,
        max_length=256, disable_tqdm=True,
    )
    trainer = DPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32),
        args=args,
        train_dataset=dataset,
        processing_class=AutoTokenizer.from_pretrained(tiny_model_dir),
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"),
    )
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert trainer.state.global_step == 1 and len(losses) == 1 and losses[0] == pytest.approx(0.6931, abs=0.05)
