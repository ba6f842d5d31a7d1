"""Scoring jobs: cached and resumable log-probs, DM implicit margins, external margins, the margins table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from dpo_engine.margins import scoring
from dpo_engine.margins.table import build_margins_table, load_margins_table, save_margins_table
from dpo_engine.models.logps import policy_logps
from dpo_engine.models.loading import TINY_MODEL, load_model
from dpo_engine.models.tokenization import collate, encode_pair


def make_pairs(n: int) -> pd.DataFrame:
    rows = []
    for i in range(n):
        prompt = f"Question {i}: what is {i} plus {i}?"
        rows.append(
            {
                "pair_id": f"p{i}",
                "row": i,
                "prompt": prompt,
                "prompt_messages": [{"role": "user", "content": prompt}],
                "chosen": f"It is {2 * i}." + " Indeed." * (i % 3),
                "rejected": f"Maybe {i}?",
                "score_chosen": float(5 + i % 4),
                "score_rejected": float(3),
                "warnings": "",
            }
        )
    return pd.DataFrame(rows)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(scoring, "cache_dir", lambda: tmp_path / "cache")


@pytest.fixture(scope="module")
def tiny():
    return load_model(TINY_MODEL)


def test_score_logps_resumes_after_interruption(tiny):
    model, tokenizer = tiny
    pairs = make_pairs(10)
    key = "resume-test"

    class Interrupted(Exception):
        pass

    def stop_after_first_batch(done, total):
        if 0 < done < total:
            raise Interrupted

    with pytest.raises(Interrupted):
        scoring.score_logps(pairs, model, tokenizer, cache_key=key, batch_size=4, progress=stop_after_first_batch)
    parts_dir = scoring.cache_dir() / "logps" / key
    assert len(list(parts_dir.glob("part-*.parquet"))) == 1  # the finished batch was kept

    forwards = []
    handle = model.register_forward_hook(lambda module, args, output: forwards.append(1))
    try:
        resumed = scoring.score_logps(pairs, model, tokenizer, cache_key=key, batch_size=4)
    finally:
        handle.remove()
    assert len(forwards) == 2  # 6 remaining pairs in batches of 4
    fresh = scoring.score_logps(pairs, model, tokenizer, cache_key="fresh", batch_size=3)
    assert resumed.pair_id.tolist() == pairs.pair_id.tolist()
    np.testing.assert_allclose(resumed.chosen_logps, fresh.chosen_logps, rtol=1e-4)
    np.testing.assert_allclose(resumed.rejected_logps, fresh.rejected_logps, rtol=1e-4)


def test_cache_key_changes_with_data_truncation_and_precision(tiny_model_dir):
    pairs = make_pairs(3)
    key = scoring.logps_cache_key(pairs, tiny_model_dir, None, 512, 256, "fp32")
    assert key == scoring.logps_cache_key(pairs, tiny_model_dir, None, 512, 256, "fp32")
    assert key != scoring.logps_cache_key(pairs, tiny_model_dir, None, 256, 128, "fp32")
    assert key != scoring.logps_cache_key(pairs, tiny_model_dir, None, 512, 256, "bf16")
    edited = pairs.copy()
    edited.loc[0, "chosen"] = "something else"
    assert key != scoring.logps_cache_key(edited, tiny_model_dir, None, 512, 256, "fp32")


def test_implicit_margins_with_an_adapter_match_a_direct_computation(perturbed_adapter):
    pairs = make_pairs(5)
    table = scoring.implicit_margins(pairs, str(perturbed_adapter), batch_size=2)

    model, tokenizer = load_model(str(perturbed_adapter))
    batch = collate([encode_pair(tokenizer, list(r.prompt_messages), r.chosen, r.rejected, 512, 256) for r in pairs.itertuples()], tokenizer.pad_token_id)
    with torch.no_grad():
        policy = policy_logps(model, batch)
        with model.disable_adapter():
            reference = policy_logps(model, batch)
    expected = (policy["chosen_logps"] - policy["rejected_logps"]) - (reference["chosen_logps"] - reference["rejected_logps"])
    np.testing.assert_allclose(table.implicit_margin, expected.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(table.ref_chosen_logps, reference["chosen_logps"].numpy(), rtol=1e-4)
    assert np.abs(table.implicit_margin).max() > 1e-3  # the adapter really moved the policy


def test_untrained_adapter_gives_zero_implicit_margins(tmp_path, tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), LoraConfig(r=2, target_modules="all-linear"))
    model.save_pretrained(tmp_path / "zero")  # LoRA B starts at zero: policy == reference
    table = scoring.implicit_margins(make_pairs(4), str(tmp_path / "zero"))
    np.testing.assert_allclose(table.implicit_margin, 0.0, atol=1e-5)


def test_full_model_policy_needs_a_reference():
    with pytest.raises(ValueError, match="reference"):
        scoring.implicit_margins(make_pairs(2), TINY_MODEL)
    same = scoring.implicit_margins(make_pairs(2), TINY_MODEL, reference=TINY_MODEL)
    np.testing.assert_allclose(same.implicit_margin, 0.0, atol=1e-6)


def test_external_margins_from_dataset_scores():
    pairs = make_pairs(4)
    table, meta = scoring.external_margins(pairs, "dataset")
    assert table.external_margin.tolist() == [2.0, 3.0, 4.0, 5.0]
    assert meta["source"] == "dataset"
    no_scores = pairs.assign(score_chosen=np.nan, score_rejected=np.nan)
    with pytest.raises(ValueError, match="no score columns"):
        scoring.external_margins(no_scores, "dataset")


def test_margins_table_joins_and_fuses(tmp_path, perturbed_adapter):
    pairs = make_pairs(6)
    external, _ = scoring.external_margins(pairs, "dataset")
    implicit = scoring.implicit_margins(pairs, str(perturbed_adapter))
    table = build_margins_table(pairs.iloc[::-1], external, implicit)
    assert table.pair_id.tolist() == pairs.pair_id.tolist()[::-1]
    row = table.set_index("pair_id").loc["p3"]
    assert row.external_margin == 5.0
    assert row.implicit_margin == pytest.approx(implicit.set_index("pair_id").loc["p3"].implicit_margin)
    assert row.dm_add == pytest.approx(row.external_margin + row.implicit_margin)
    assert table.dm_mul.notna().all() and table.dm_mul.between(0, 1).all()
    assert row.chosen_chars == len(pairs.set_index("pair_id").loc["p3"].chosen)

    path = save_margins_table(table, tmp_path / "m.parquet", {"external": {"source": "dataset"}})
    loaded, meta = load_margins_table(path)
    pd.testing.assert_frame_equal(loaded, table)
    assert meta["n_pairs"] == 6 and meta["external"]["source"] == "dataset"

    external_only = build_margins_table(pairs, external, None)
    assert external_only.implicit_margin.isna().all() and external_only.dm_add.isna().all()


def test_score_cli_trains_a_warmup_proxy_and_writes_the_table(tmp_path):
    """`dpo-engine score` end to end on the tiny model: DM step 1 (warm-up proxy) then both margins and fusion."""
    import json

    from dpo_engine.cli import main
    from dpo_engine.data.pairs import save_pairs

    pairs_file = save_pairs(make_pairs(12), tmp_path / "pairs.jsonl")
    out = tmp_path / "margins.parquet"
    progress = tmp_path / "progress.json"
    code = main([
        "score", str(pairs_file), "--out", str(out), "--model", "tiny-random", "--seed-size", "8",
        "--warmup-epochs", "2", "--warmup-lr", "0.05", "--max-length", "128", "--max-prompt-length", "64",
        "--progress-file", str(progress),
    ])
    assert code == 0
    table, meta = load_margins_table(out)
    assert len(table) == 12 and table.external_margin.tolist() == make_pairs(12).eval("score_chosen - score_rejected").tolist()
    assert table.implicit_margin.notna().all() and np.abs(table.implicit_margin).max() > 0  # the proxy moved
    assert meta["implicit"]["source"] == "warmup" and meta["external"]["source"] == "dataset"
    assert table.in_warmup.sum() == 8  # the seed subset the proxy trained on is marked in-sample
    assert (tmp_path / "margins-warmup" / "adapter" / "adapter_config.json").exists()
    assert json.loads(progress.read_text())["state"] == "completed"

    # Scoring again with the same warm-up settings reuses the proxy (no training); other settings retrain it.
    adapter = tmp_path / "margins-warmup" / "adapter" / "adapter_model.safetensors"
    trained_at = adapter.stat().st_mtime_ns
    args = ["score", str(pairs_file), "--out", str(tmp_path / "again.parquet"), "--model", "tiny-random",
            "--seed-size", "8", "--warmup-lr", "0.05", "--max-length", "128", "--max-prompt-length", "64",
            "--warmup-dir", str(tmp_path / "margins-warmup"), "--external", "none"]
    assert main(args + ["--warmup-epochs", "2"]) == 0
    assert adapter.stat().st_mtime_ns == trained_at
    assert load_margins_table(tmp_path / "again.parquet")[0].implicit_margin.tolist() == table.implicit_margin.tolist()
    assert main(args + ["--warmup-epochs", "1"]) == 0
    assert adapter.stat().st_mtime_ns != trained_at


@pytest.mark.slow
def test_default_model_scores_twenty_bundled_pairs(tmp_path, monkeypatch):
    """The real SmolLM2-135M scores 20 bundled UltraFeedback pairs; a second call is served from the cache."""
    import time

    from peft import LoraConfig, get_peft_model

    from dpo_engine.data.pairs import bundled_datasets, load_pairs
    from dpo_engine.models.loading import DEFAULT_MODEL, resolve_model
    from transformers import AutoModelForCausalLM

    pairs = load_pairs(bundled_datasets()["ultrafeedback"]).pairs.iloc[:20]
    base = AutoModelForCausalLM.from_pretrained(resolve_model(DEFAULT_MODEL))
    proxy = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, parameter in proxy.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.01)
    proxy.save_pretrained(tmp_path / "proxy")
    (tmp_path / "proxy" / "adapter_config.json").write_text(
        (tmp_path / "proxy" / "adapter_config.json").read_text().replace(str(resolve_model(DEFAULT_MODEL)), DEFAULT_MODEL)
    )

    table = scoring.implicit_margins(pairs, str(tmp_path / "proxy"), max_length=256, max_prompt_length=128)
    assert len(table) == 20 and table.implicit_margin.notna().all()
    assert (table.ref_chosen_logps < 0).all() and (table.chosen_tokens > 0).all()
    assert table.implicit_margin.abs().max() > 0
    started = time.monotonic()
    again = scoring.implicit_margins(pairs, str(tmp_path / "proxy"), max_length=256, max_prompt_length=128)
    assert time.monotonic() - started < 30  # model load only: every batch comes from the cache
    pd.testing.assert_frame_equal(again, table)
