"""The Arena page in a real browser: its launch form on an empty workspace, and a finished arena (its files put on
disk the way the arena leaves them, nothing trained) with the table, the paired differences, the overlaps, the
figures and the report downloads; with screenshots."""

from __future__ import annotations

import os
import time
from pathlib import Path
from threading import Event

import numpy as np
import pandas as pd
import pytest
from browser_helpers import screenshot, wait_for_app

from dpo_engine.paths import ASSETS_DIR

BUNDLED_PAIRS = ASSETS_DIR / "data" / "ultrafeedback_binarized_scored_1200.jsonl"
SELECTORS = [{"name": "dm-mul", "rule": "top_k", "params": {"score": "dm_mul"}},
             {"name": "smallest-gap", "rule": "smallest_gap", "params": {}},
             {"name": "alignment-potential", "rule": "alignment_potential", "params": {}}]
# Each contestant's chance of beating the base model on a prompt, so the table has a spread to show.
WIN_CHANCE = {"dm-mul": 0.75, "smallest-gap": 0.55, "alignment-potential": 0.35, "random-s1": 0.5, "random-s2": 0.45}


def test_the_arena_page_renders_its_form(page):
    page.goto("/arena")
    wait_for_app(page)
    page.get_by_text("Start an arena").wait_for()
    page.get_by_text("No arena yet").wait_for()
    assert page.get_by_test_id("stException").count() == 0
    screenshot(page, "arena")


def _event(directory: Path, step: str, contestant: str | None, event: str) -> None:
    from dpo_engine.arena.store import EVENTS_FILE
    from dpo_engine.files import append_jsonl

    append_jsonl(directory / EVENTS_FILE, {"time": time.time(), "step": step, "contestant": contestant,
                                           "event": event})


def finish_an_arena(name: str, tmp_path: Path) -> Path:
    """The files of a finished arena in the current workspace, written by the engine's own steps wherever they train
    nothing: the arena's select step; runs created as the arena creates them and finished by the worker's own
    `run_training` around a stand-in trainer (metrics, no model); a saved evaluation of seeded preferences through
    the engine's results table; then the arena's report step (`write_summary`) and the completed status."""
    from dpo_engine import runs
    from dpo_engine.arena.config import ArenaConfig
    from dpo_engine.arena.loop import _run_step
    from dpo_engine.arena.store import CONFIG_FILE, CONTESTANT_STEP_FILES, EVAL_FILE, arena_dir, contestant_dir
    from dpo_engine.evaluation.generation import load_eval_prompts
    from dpo_engine.evaluation.report import describe_run
    from dpo_engine.evaluation.results import results_table
    from dpo_engine.evaluation.store import PER_PROMPT_COLUMNS, save_evaluation
    from dpo_engine.files import atomic_write_json
    from dpo_engine.job_directory import set_status
    from dpo_engine.runs.worker import run_training

    pairs = tmp_path / "pairs64.jsonl"
    pairs.write_text("".join(BUNDLED_PAIRS.read_text(encoding="utf-8").splitlines(keepends=True)[:64]))
    config = ArenaConfig.from_dict({"name": name, "pairs": str(pairs), "budget": 16, "selectors": SELECTORS,
                                    "random_seeds": [1, 2], "model": "tiny-random", "eval_n": 40,
                                    "train": {"max_steps": 3}})
    directory = arena_dir(name)
    directory.mkdir(parents=True)
    atomic_write_json(directory / CONFIG_FILE, config.to_dict())
    contestants = [contestant["name"] for contestant in config.contestants()]
    for contestant in contestants:
        _run_step(config, directory, "select", contestant, None)  # the arena's own select step: no model
    run_ids = []
    for contestant in contestants:
        _event(directory, "train", contestant, "started")
        folder = contestant_dir(directory, contestant)
        label = f"{name}-{contestant}"
        run_id = runs.create_run({**config.train, "model": config.model, "subset": str(folder / "subset.jsonl"),
                                  "device": config.device, "precision": config.precision},
                                 name=label, selection_name=label, run_dir=folder / "run")
        status = run_training(folder / "run", stand_in_trainer(folder / "run", WIN_CHANCE[contestant]), Event())
        assert status["state"] == "completed", status
        adapter = runs.get_run(run_id).adapter_dir
        atomic_write_json(folder / CONTESTANT_STEP_FILES["train"], {"run_id": run_id, "adapter": str(adapter)})
        _event(directory, "train", contestant, "finished")
        run_ids.append(run_id)

    _event(directory, "eval", None, "started")
    prompts = load_eval_prompts(None, n=config.eval_n, seed=0)
    rng = np.random.default_rng(0)
    per_prompt = pd.concat([pd.DataFrame({
        "prompt_id": prompts.prompt_id, "run_id": run_id, "dataset": prompts.dataset,
        "instruction": prompts.instruction, "output": [f"answer {'x' * int(n)}" for n in rng.integers(5, 60, len(prompts))],
        "output_tokens": rng.integers(5, 60, len(prompts)), "baseline_output": "base answer",
        "preference": (rng.random(len(prompts)) < WIN_CHANCE[contestant]).astype(float),
    }) for contestant, run_id in zip(contestants, run_ids)], ignore_index=True)[PER_PROMPT_COLUMNS]
    judge = {"name": "builtin", "description": "seeded test preferences", "extra": {}}
    results, _ = results_table(per_prompt, [describe_run(run_id) for run_id in run_ids], run_ids[0], "base", judge)
    saved = save_evaluation(f"arena-{name}", results, per_prompt, [], prompts, {
        "name": f"arena-{name}", "runs": run_ids, "baseline": "base", "judge": judge,
        "prompt_set": {**prompts.attrs.get("prompt_set", {}), "prompt_ids": prompts.prompt_id.tolist()}})
    atomic_write_json(directory / EVAL_FILE, {"eval_id": saved.eval_id, "run_ids": run_ids,
                                              "n_prompts": len(prompts)})
    _event(directory, "eval", None, "finished")
    _run_step(config, directory, "report", None, None)  # write_summary: results.csv, overlap.csv, mix.json, report/
    set_status(directory, state="completed", step=None, pid=os.getpid(),
               message=f"{len(contestants)} contestants trained and evaluated")
    return directory


def stand_in_trainer(run_dir: Path, quality: float, steps: int = 3):
    """What the worker calls to train (`run_training`'s ``call_trainer``), with no model: it logs the metrics
    records the trainer logs (loss, reward accuracy and margin) and leaves an adapter directory that is never
    loaded."""
    from dpo_engine.files import append_jsonl

    def call_trainer(config: dict, on_progress) -> dict:
        for step in range(1, steps + 1):
            loss = 0.69 - 0.1 * quality * step
            append_jsonl(run_dir / "metrics.jsonl", {"step": step, "loss": loss, "rewards/accuracies": quality,
                                                     "rewards/margins": 0.05 * quality * step})
            on_progress(step, steps)
        (run_dir / "adapter").mkdir()
        (run_dir / "adapter" / "adapter_config.json").write_text("{}")
        return {"stopped": False, "steps": steps, "total_steps": steps, "final_loss": loss}

    return call_trainer


def _plotly_data(page, index: int) -> list[dict]:
    """The traces plotly drew in the index-th chart of the page (what the browser holds, not what was sent)."""
    return page.evaluate("(i) => document.querySelectorAll('.js-plotly-plot')[i].data.map("
                         "t => ({type: t.type || 'scatter', x: t.x, y: t.y, z: t.z, name: t.name}))", index)


def _values(array) -> list:
    """A plotly array as the browser holds it: a list, or a typed array with its input list beside it."""
    values = array["_inputArray"] if isinstance(array, dict) else array
    return [value for value in (np.asarray(values, float).ravel() if values is not None else [])]


def _grid_rows(frame) -> list[list[str]]:
    """The cell texts of a dataframe's rows in view, from the grid's accessibility table (the cells are drawn on a
    canvas)."""
    frame.locator("[role=gridcell]").first.wait_for(state="attached")
    return [row.locator("[role=gridcell]").all_text_contents() for row in frame.locator("[role=row]").all()
            if row.locator("[role=gridcell]").count()]


def test_a_finished_arena_shows_its_table_differences_overlaps_figures_and_report(page, server_env, monkeypatch,
                                                                                 tmp_path):
    from dpo_engine.arena.store import arena_events, arena_results, arena_status, report_path

    monkeypatch.setenv("MARGIN_LAB_HOME", server_env["MARGIN_LAB_HOME"])  # the served app's workspace
    directory = finish_an_arena("finished", tmp_path)
    table, overlap, mixes = arena_results("finished")
    contestants = ["dm-mul", "smallest-gap", "alignment-potential", "random-s1", "random-s2"]
    assert table.contestant.tolist() == [*contestants, "random (mean)"]
    assert table.vs_random.iloc[:3].notna().all() and table.vs_random.iloc[3:].isna().all()
    finished = [(event["step"], event["contestant"]) for event in arena_events("finished") if event["event"] == "finished"]
    assert len(finished) == len(set(finished)) == 5 + 5 + 2 and arena_status("finished")["state"] == "completed"

    page.goto("/arena")
    wait_for_app(page)
    page.get_by_text("5 contestants trained and evaluated").wait_for()
    page.locator(".js-plotly-plot").nth(2).wait_for()
    wait_for_app(page)
    # The contestants: each selected its budget, trained, and its run is completed.
    steps = _grid_rows(page.get_by_test_id("stDataFrame").nth(0))
    assert [row[0] for row in steps] == contestants
    assert all(row[2] == "16" and "completed" in row for row in steps)
    # The arena table: win rate with its CI and the paired difference against the random mean with its CI and p,
    # in view without scrolling (the first ten columns), as the engine wrote them.
    shown = {row[0]: row for row in _grid_rows(page.get_by_test_id("stDataFrame").nth(1))}
    assert list(shown) == [*contestants, "random (mean)"]
    numbers = ["win_rate", "ci_low", "ci_high", "vs_random", "vs_random_low", "vs_random_high", "vs_random_p"]
    for row in table.itertuples():
        cells = shown[row.contestant]
        assert cells[1] == row.rule and cells[2] == ("" if pd.isna(row.params) else row.params)
        for column, text in zip(numbers, cells[3:10]):
            expected = getattr(row, column)
            assert (text == "") if pd.isna(expected) else float(text) == pytest.approx(expected), (row, column)
    # The figures as plotly drew them: win rates (6 markers) beside the differences (the 3 selectors), the 5 x 5
    # Jaccard heatmap with a label per cell, and one stacked bar per contestant and source, in the table's order.
    page.get_by_text("Difference vs random mean (points)").wait_for()
    win, versus = _plotly_data(page, 0)
    assert win["y"] == [*contestants, "random (mean)"] and versus["y"] == contestants[:3]
    assert _values(win["x"]) == pytest.approx(table.win_rate.tolist())
    assert _values(versus["x"]) == pytest.approx(table.vs_random.iloc[:3].tolist())
    assert page.locator(".js-plotly-plot").nth(0).locator(".scatterlayer .point").count() == 6 + 3
    (heatmap,) = _plotly_data(page, 1)
    assert heatmap["type"] == "heatmap" and heatmap["x"] == heatmap["y"] == contestants
    assert np.allclose(_values(heatmap["z"]), overlap.loc[contestants, contestants].to_numpy().ravel())
    assert page.locator(".js-plotly-plot").nth(1).locator(".heatmaplayer text").count() == 25
    bars = _plotly_data(page, 2)
    sources = sorted({source for mix in mixes.values() for source in mix["sources"]})
    assert [trace["type"] for trace in bars] == ["bar"] * len(sources)
    assert all(trace["y"] == contestants for trace in bars)
    assert page.locator(".js-plotly-plot").nth(2).locator(".barlayer .point").count() == len(sources) * 5
    assert page.locator(".js-plotly-plot").nth(2).locator(".legend .traces").count() == len(sources)
    # The report export: report.md downloads as the engine wrote it; the offline HTML is offered beside it.
    downloads = page.get_by_test_id("stDownloadButton")
    downloads.filter(has_text="Figures (.html, offline)").wait_for()
    with page.expect_download() as download:
        downloads.filter(has_text="Report (.md)").get_by_role("button").click()
    assert download.value.suggested_filename == "arena-finished.md"
    assert Path(download.value.path()).read_text(encoding="utf-8") == report_path(directory).read_text(encoding="utf-8")
    wait_for_app(page)
    assert page.get_by_test_id("stException").count() == 0
    screenshot(page, "arena-finished")
