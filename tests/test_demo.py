"""The shipped demo (``assets/demo/``, the dm_small study's results) loads through the normal engine code.

`make demo` installs it with ``python -m dpo_engine.demo install``; the Runs and Results pages then read it with
``dpo_engine.runs`` and ``dpo_engine.evaluation.report`` like any other run or evaluation. These tests do the same
into a fresh workspace and check that what the study report (docs/study-dm-small.md) states is what the shipped
files give when the engine recomputes it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from dpo_engine import runs
from dpo_engine.demo import DEMO_DIR, demo_manifest, install_demo
from dpo_engine.evaluation import report
from dpo_engine.evaluation.metrics import bootstrap_ci, win_rate
from dpo_engine.margins.table import load_margins_table
from dpo_engine.selection.rules import select_pairs
from dpo_engine.selection.store import load_selection
from test_dashboard_pages import APP, TIMEOUT, plotly_array

REPO_ROOT = Path(__file__).resolve().parent.parent
STUDY_REPORT = REPO_ROOT / "docs" / "study-dm-small.md"
# Issue #8: every selection variant (three random seeds) with DPO, and three more losses on the DM-MUL subset.
VARIANTS = {"dm-mul", "random-s0", "random-s1", "random-s2", "ex-bot", "im-bot", "ex-top", "im-top", "dm-add",
            "dm-mul-simpo", "dm-mul-alpha_dpo", "dm-mul-dpop"}


@pytest.fixture(scope="module")
def manifest() -> dict:
    manifest = demo_manifest()
    assert manifest is not None, f"no shipped demo in {DEMO_DIR}"
    return manifest


@pytest.fixture
def installed(workspace, manifest) -> dict:
    result = install_demo()
    assert result["installed"], result["reason"]
    return result


def test_demo_has_every_study_variant_with_its_loss(manifest):
    assert manifest["profile"] == "cpu" and manifest["study"] == "dm-small"
    by_variant = {entry["variant"]: entry for entry in manifest["runs"]}
    assert set(by_variant) >= VARIANTS
    assert {by_variant[key]["loss"] for key in ("dm-mul-simpo", "dm-mul-alpha_dpo", "dm-mul-dpop")} == {
        "simpo", "alpha_dpo", "dpop"}
    assert all(entry["n_pairs"] == 120 for key, entry in by_variant.items() if key != "full")


def test_shipped_selections_are_what_the_engine_selects_from_the_shipped_margins(manifest):
    table, meta = load_margins_table(DEMO_DIR / manifest["margins"])
    assert len(table) == 1200 and meta["dataset_fingerprint"]
    selections = DEMO_DIR / "workspace" / "selections"
    for name in ("dm-small-dm-mul.json", "dm-small-ex-bot.json", "dm-small-random-s1.json"):
        shipped = load_selection(selections / name)
        again = select_pairs(table, shipped.rule, shipped.params)
        assert list(again) == list(shipped.pair_ids), name
    # DM-MUL picks the 120 largest external x implicit products (methods §1.5).
    dm_mul = load_selection(selections / "dm-small-dm-mul.json")
    product = table.set_index("pair_id").dm_mul
    assert set(dm_mul.pair_ids) == set(product.nlargest(120).index)


def test_installed_demo_runs_load_through_the_engine(installed, manifest):
    listed = {run.name: run for run in runs.list_runs()}
    assert set(listed) >= VARIANTS and all(run.state == "completed" for run in listed.values())
    for entry in manifest["runs"]:
        run = listed[entry["variant"]]
        assert run.run_id == entry["run_id"] and run.config["loss"] == entry["loss"]
        metrics = runs.read_metrics(run.run_id)
        assert len(metrics) >= 25 and metrics["loss"].notna().all()  # 30 logged optimizer steps per 120 pairs
        assert len(pd.read_json(run.subset_path, lines=True)) == entry["n_pairs"]


def test_installed_demo_win_rates_are_what_the_engine_computes_from_the_judgements(installed, manifest):
    evals = report.list_evals()
    assert list(evals.eval_id) == [manifest["combined_eval"]]
    saved = report.load_eval(manifest["combined_eval"])
    assert set(saved.results.run_id) == {entry["run_id"] for entry in manifest["runs"]}
    assert saved.per_prompt.groupby("run_id").size().eq(saved.meta["prompt_set"]["n"]).all() and saved.meta["prompt_set"]["n"] == 100
    for run_id, rows in saved.per_prompt.groupby("run_id"):
        shipped = saved.results.set_index("run_id").loc[run_id]
        preferences = rows.preference.to_numpy(float)
        assert shipped.win_rate == pytest.approx(100 * np.nanmean(preferences))
        assert shipped.win_rate == pytest.approx(win_rate(preferences)["win_rate"])
        ci = bootstrap_ci(preferences, n_resamples=report.N_BOOTSTRAP, confidence=report.CONFIDENCE, seed=0)
        assert (shipped.ci_low, shipped.ci_high) == pytest.approx(ci)


def test_study_report_quotes_the_shipped_summary(manifest):
    """docs/study-dm-small.md carries the summary table the shipped results produce, number for number."""
    table = (DEMO_DIR / "summary" / "table.md").read_text(encoding="utf-8").strip()
    assert table.count("\n") >= len(VARIANTS)
    assert table in STUDY_REPORT.read_text(encoding="utf-8")


def test_dashboard_results_page_shows_the_installed_demo(installed, manifest):
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    at.switch_page("views/results.py")
    at.run()
    assert not at.exception, [error.message for error in at.exception]
    table = at.dataframe[0].value
    assert set(table.run_id) == {entry["run_id"] for entry in manifest["runs"]}
    bars = json.loads(at.get("plotly_chart")[0].proto.spec)["data"][0]
    assert len(plotly_array(bars["y"])) == len(manifest["runs"])


SHIPPED_LOOPS = {"demo-dm25", "demo-all"}  # docs/rounds.md, CPU run 3


def test_installed_demo_loops_load_through_the_engine(installed):
    from dpo_engine.rounds import list_loops, round_summary
    from dpo_engine.rounds.store import loop_dir

    assert set(installed["rounds"]) == SHIPPED_LOOPS and SHIPPED_LOOPS <= set(list_loops())
    for name in SHIPPED_LOOPS:
        summary = round_summary(name)
        assert list(summary["round"]) == [1, 2] and summary.win_rate.notna().all()
        assert (summary.ci_low <= summary.win_rate).all() and (summary.win_rate <= summary.ci_high).all()
        for run_id in summary.run_id:
            run = runs.get_run(run_id)  # registered where the install put it, inside the loop
            assert run.state == "completed" and loop_dir(name) in run.run_dir.parents
            assert not runs.read_metrics(run_id).empty
            subset = json.loads((run.run_dir / "resolved_config.json").read_text())["subset"]
            assert Path(subset) == run.run_dir / "subset.jsonl" and Path(subset).is_file()
    dm, everything = round_summary("demo-dm25"), round_summary("demo-all")
    assert (dm.selected < everything.selected).all()  # DM keeps a quarter of each round's pairs


def test_a_workspace_that_has_the_demo_gets_the_loops_shipped_later_once(workspace):
    import shutil

    from dpo_engine.demo import MARKER_FILE
    from dpo_engine.rounds.store import loop_dir

    assert install_demo()["installed"]
    marker = workspace / MARKER_FILE
    older = json.loads(marker.read_text())
    older.pop("rounds")  # a workspace installed before the loops were shipped, one of its demo runs deleted since
    marker.write_text(json.dumps(older))
    for name in SHIPPED_LOOPS:
        shutil.rmtree(loop_dir(name))
    deleted_run = sorted((workspace / "runs").iterdir())[0]
    shutil.rmtree(deleted_run)

    again = install_demo()
    assert again["installed"] and set(again["rounds"]) == SHIPPED_LOOPS and again["runs"] == []
    assert not deleted_run.exists()  # what the user deleted stays deleted
    shutil.rmtree(loop_dir("demo-all"))
    assert not install_demo()["installed"] and not loop_dir("demo-all").exists()
