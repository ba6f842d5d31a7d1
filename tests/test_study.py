"""The dm_small study runner (experiments/dm_small) end to end in its ``smoke`` profile.

The tiny random model, the first 16 bundled UltraFeedback pairs, margins computed with `dpo-engine score`, three
variants (DM-MUL, random seed 0, Ex-BOT: 4 pairs each), 3 AlpacaEval prompts. The study runs once per module; the
tests then check its outputs on disk, that a second invocation trains and evaluates nothing, that a study killed
mid-run resumes its run from the last checkpoint, and that the export loads through the engine's own loaders.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from dpo_engine import runs
from dpo_engine.demo import install_demo
from dpo_engine.errors import UserError
from dpo_engine.evaluation import report
from dpo_engine.margins.table import load_margins_table
from dpo_engine.selection.store import load_selection
from experiments.dm_small.cli import main
from experiments.dm_small.pipeline import workspace_env

REPO_ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ["dm-mul", "random-s0", "ex-bot"]


@contextlib.contextmanager
def tiny_model_threads():
    """One torch thread: the tiny model's ops are too small to share, and a second thread that spins waiting for a
    busy core makes each step several times slower on a loaded 2-core machine. Workers inherit OMP_NUM_THREADS."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("HF_HUB_OFFLINE", "1")
            patch.setenv("OMP_NUM_THREADS", "1")
            yield
    finally:
        torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    """The smoke study's output directory, after one full invocation."""
    out = tmp_path_factory.mktemp("dm_small") / "out"
    with tiny_model_threads():
        assert main(["run", "--profile", "smoke", "--out", str(out)]) == 0
    return out


def state(out: Path) -> dict:
    return json.loads((out / "study.json").read_text())


def test_smoke_study_writes_runs_evaluations_and_summary(study):
    recorded = state(study)
    assert set(recorded["variants"]) == set(VARIANTS)  # (study.json is written with sorted keys)
    table, meta = load_margins_table(recorded["margins"]["path"])
    assert meta["implicit"]["model"] == "tiny-random" and len(table) == 16

    # Selections in the engine's format: DM-MUL is the top 25 % by dm_mul, Ex-BOT the bottom 25 % by external margin.
    dm_mul = load_selection(study / "selections" / "dm-small-dm-mul.json")
    assert (dm_mul.rule, dm_mul.params) == ("top_k", {"score": "dm_mul", "frac": 0.25})
    assert set(dm_mul.pair_ids) == set(table.nlargest(4, "dm_mul").pair_id)
    ex_bot = load_selection(study / "selections" / "dm-small-ex-bot.json")
    assert ex_bot.params["part"] == "bot" and len(ex_bot.pair_ids) == 4
    assert table.set_index("pair_id").external_margin[ex_bot.pair_ids].max() <= table.external_margin.quantile(0.5)

    with workspace_env(study / "workspace"):
        all_runs = {run.name: run for run in runs.list_runs()}
        assert set(all_runs) == set(VARIANTS)
        for key in VARIANTS:
            run = all_runs[key]
            assert run.state == "completed" and run.run_id == recorded["variants"][key]["run_id"]
            assert run.selection_name == f"dm-small-{key}" and run.loss == "dpo"
            assert (run.adapter_dir / "adapter_config.json").exists() and run.pair_rewards_path.exists()
            assert len(runs.read_metrics(run.run_id)) == 4  # 4 pairs, batch 1, one epoch
            single = report.load_eval(recorded["variants"][key]["eval_id"])
            assert list(single.results.run_id) == [run.run_id] and int(single.results.n.iloc[0]) == 3

        combined = report.load_eval(recorded["combined_eval_id"])
        run_ids = [recorded["variants"][key]["run_id"] for key in VARIANTS]
        assert list(combined.results.run_id) == run_ids
        assert list(combined.results.paired_vs) == [run_ids[1], "", run_ids[1]]  # paired against random seed 0
        assert set(combined.per_prompt.columns) >= {"output", "baseline_output", "preference"}
        rule = combined.results.subset_rule.iloc[0]  # from the workspace copy of the selection
        assert rule.startswith("top_k(") and "score=dm_mul" in rule and "frac=0.25" in rule

    results = pd.read_csv(study / "summary" / "results.csv")
    assert list(results.variant_key) == VARIANTS and results.win_rate.between(0, 100).all()
    assert results.subset_size.tolist() == [4, 4, 4]
    table_md = (study / "summary" / "table.md").read_text()
    for label in ("DM-MUL 25 %", "Random 25 % (seed 0)", "Ex-BOT 25 %", "Random (mean of 1 seed)", "Δ vs random"):
        assert label in table_md
    summary = (study / "summary" / "summary.md").read_text()
    assert "DM-MUL ≥ random:" in summary and "Ex-BOT clearly worse than random:" in summary
    assert (study / "summary" / "win_rates.html").exists() and (study / "summary" / "paired.html").exists()
    summary_json = json.loads((study / "summary" / "summary.json").read_text())
    assert {check["a"] for check in summary_json["checks"]} == {"dm-mul", "ex-bot"}

    # Training: each run's last steps (all four here), the same numbers as its metrics.jsonl.
    with workspace_env(study / "workspace"):
        dm_mul_metrics = runs.read_metrics(recorded["variants"]["dm-mul"]["run_id"])
    training = {row["variant"]: row for row in summary_json["training"]}
    assert list(training) == VARIANTS and training["dm-mul"]["steps"] == 4
    assert training["dm-mul"]["final_loss"] == pytest.approx(dm_mul_metrics["loss"].mean())
    assert training["dm-mul"]["reward_accuracy"] == pytest.approx(100 * dm_mul_metrics["rewards/accuracies"].mean())
    assert (study / "summary" / "training.md").read_text().count("| DPO | 4 |") == 3
    assert "**Training**" in summary


def test_a_second_invocation_trains_and_evaluates_nothing(study):
    adapters = sorted((study / "workspace" / "runs").glob("*/adapter/adapter_model.safetensors"))
    before = {path: path.stat().st_mtime_ns for path in adapters}
    evals_before = sorted(path.name for path in (study / "workspace" / "evals").iterdir())
    log_size = (study / "study.log").stat().st_size

    with tiny_model_threads():
        assert main(["run", "--profile", "smoke", "--out", str(study)]) == 0

    log = (study / "study.log").read_text()[log_size:]
    for key in VARIANTS:
        assert f"train {key}: skip (completed run" in log and f"eval {key}: skip (evaluation" in log
    assert "new run" not in log and "combined evaluation: skip" in log
    assert {path: path.stat().st_mtime_ns for path in adapters} == before and len(before) == 3
    assert sorted(path.name for path in (study / "workspace" / "evals").iterdir()) == evals_before


def test_a_killed_study_resumes_its_run_from_the_last_checkpoint(study, tmp_path):
    """Kill the study (SIGKILL) while it trains; the next invocation resumes that run instead of starting over.

    Its own output directory (the module's study keeps its settings), with the module study's margins table.
    """
    out = tmp_path / "out"
    margins = state(study)["margins"]["path"]
    args = ["run", "--profile", "smoke", "--out", str(out), "--margins", margins, "--only", "im-top", "--no-eval",
            "--set", "train.num_epochs=8", "--set", "train.save_steps=2"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    process = subprocess.Popen([sys.executable, "-m", "experiments.dm_small", *args], cwd=REPO_ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        checkpoint = None
        while checkpoint is None:  # a complete checkpoint (the Trainer writes trainer_state.json last)
            assert process.poll() is None, "the study ended before it could be killed"
            assert time.monotonic() < deadline, "no checkpoint within 180 s"
            checkpoint = next(iter((out / "workspace" / "runs").glob("im-top-*/checkpoints/*/trainer_state.json")), None)
            time.sleep(0.1)
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    run_dir = checkpoint.parent.parent.parent
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "running" and status["step"] < 32  # killed mid-run: nobody recorded the end
    complete = [path.parent for path in (run_dir / "checkpoints").glob("*/trainer_state.json")]
    resumed_from = max(json.loads((path / "trainer_state.json").read_text())["global_step"] for path in complete)
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    kept = [line for line in lines if json.loads(line)["step"] <= resumed_from]

    with tiny_model_threads():
        assert main(args) == 0
    log = (out / "study.log").read_text()
    assert f"train im-top: resuming failed run {run_dir.name}" in log
    with workspace_env(out / "workspace"):
        run = runs.get_run(run_dir.name)
        assert run.state == "completed" and run.step == 32 and len(runs.list_runs()) == 1
        steps = list(runs.read_metrics(run.run_id).step)
    assert steps == list(range(1, 33))  # no step logged twice or missing
    # Continued from the checkpoint: the records before it are the killed process's own (times and all).
    assert (run_dir / "metrics.jsonl").read_text().splitlines()[: len(kept)] == kept and resumed_from >= 2
    assert "(resume)" in (run_dir / "train.log").read_text()  # the engine's detached worker finished it


def test_export_ships_engine_formats_that_the_engine_loads(study, tmp_path, workspace):
    demo = tmp_path / "demo"
    assert main(["export", "--profile", "smoke", "--out", str(study), "--to", str(demo),
                 "--set", "export.max_adapter_mb=0"]) == 0
    manifest = json.loads((demo / "manifest.json").read_text())
    assert manifest["profile"] == "smoke" and manifest["command"] == "python -m experiments.dm_small run --profile smoke"
    assert manifest["invocations"][0].endswith(f"run --profile smoke --out {study}")
    assert [entry["variant"] for entry in manifest["runs"]] == VARIANTS
    assert not any(entry["adapter_shipped"] for entry in manifest["runs"])
    assert "profile **smoke**" in (demo / "README.md").read_text()
    assert not list(demo.rglob("checkpoints")) and not list(demo.rglob("adapter_model.safetensors"))
    table, meta = load_margins_table(demo / manifest["margins"])
    assert len(table) == 16 and meta["dataset_fingerprint"]
    assert load_selection(demo / "workspace" / "selections" / "dm-small-dm-mul.json").rule == "top_k"

    # Installed into a fresh workspace (this test's MARGIN_LAB_HOME), the normal engine code reads it.
    installed = install_demo(demo)
    assert installed["installed"] and len(installed["runs"]) == 3 and len(installed["evals"]) == 1
    listed = runs.list_runs()
    assert sorted(run.name for run in listed) == sorted(VARIANTS) and all(run.state == "completed" for run in listed)
    for run in listed:
        assert Path(run.config["subset"]) == run.subset_path and run.subset_path.exists()
        assert not runs.read_metrics(run.run_id).empty and "weights not included" in run.message
    with pytest.raises(UserError, match="no trained adapter"):
        report.describe_run(listed[0].run_id)
    evals = report.list_evals()
    assert list(evals.eval_id) == [manifest["combined_eval"]]
    saved = report.load_eval(manifest["combined_eval"])
    assert len(saved.results) == 3
    # The Results page re-pairs against any run of the evaluation with the engine's results_table.
    other = saved.results.run_id.iloc[0]
    repaired, _ = report.results_table(saved.per_prompt, saved.meta["run_details"], other, saved.meta["baseline"],
                                       saved.meta["judge"])
    assert set(repaired.paired_vs) == {"", other}

    # Once per demo: a second install copies nothing, and a deleted demo run stays deleted.
    runs.delete(listed[0].run_id)
    assert not install_demo(demo)["installed"]
    assert len(runs.list_runs()) == 2
