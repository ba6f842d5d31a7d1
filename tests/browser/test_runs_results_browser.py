"""End to end in the browser: launch a tiny-model run from the Runs page, watch it complete, evaluate it on Results."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from browser_helpers import REPO_ROOT, choose, screenshot, wait_for_app
from playwright.sync_api import expect

JUDGE_ARTIFACT = REPO_ROOT / "assets" / "judge" / "embedding_judge_uf.npz"


@pytest.fixture(scope="module")
def saved_selection(server_env) -> str:
    """A small saved selection of the demo dataset in the server's workspace, as the Margins page would save it."""
    import os

    from dpo_engine.data.pairs import bundled_datasets, fingerprint, load_pairs
    from dpo_engine.selection.store import Selection, save_selection

    pairs = load_pairs(bundled_datasets()["ultrafeedback"]).pairs
    selection = Selection("tiny-eight", "manual", {"pair_ids": list(pairs.pair_id[:8])}, fingerprint(pairs), list(pairs.pair_id[:8]))
    directory = Path(server_env["MARGIN_LAB_HOME"]) / "selections"
    save_selection(selection, directory)
    assert os.listdir(directory)
    return selection.name


def set_number(page, label: str, value: str) -> None:
    field = page.get_by_label(label, exact=True)
    field.fill(value)
    field.press("Tab")


def test_tiny_run_completes_with_curves_then_evaluates(page, saved_selection):
    page.goto("/runs")
    wait_for_app(page, timeout=240_000)  # the launch form reads TrainConfig: the first visit imports torch
    name = page.get_by_placeholder("dpo-tiny-eight")  # the saved selection is the default training pairs
    name.wait_for(state="attached")
    if not name.is_visible():  # "New run" opens by itself only in an empty workspace; other tests' runs may be here
        page.get_by_text("New run", exact=True).click()
    name.wait_for()
    model = page.get_by_label("model", exact=True)
    model.fill("tiny-random")
    model.press("Tab")
    set_number(page, "max_steps", "2")
    set_number(page, "batch_size", "2")
    set_number(page, "max_length", "128")
    set_number(page, "max_prompt_length", "64")
    page.get_by_role("button", name="Review launch", exact=True).click()
    page.get_by_role("button", name="Launch", exact=True).click()

    # The run details line reads "<run id> · <state> · step i/n · subset <name>" and follows the run live.
    details = page.get_by_text(re.compile(r"· completed · step 2/2 · subset tiny-eight"))
    details.wait_for(timeout=300_000)
    run_id = details.inner_text().split(" · ")[0]
    wait_for_app(page)
    page.locator(".js-plotly-plot").first.wait_for(timeout=60_000)
    assert page.evaluate("() => document.querySelector('.js-plotly-plot')._fullData.length") >= 1  # its loss curve
    screenshot(page, "runs")

    if not JUDGE_ARTIFACT.exists():
        pytest.skip(f"no offline judge artifact at {JUDGE_ARTIFACT}: Results evaluation not exercised")
    page.goto("/results")
    wait_for_app(page, timeout=240_000)
    prompts = page.get_by_label("Prompts (of the 805 AlpacaEval ones; 0 = all)", exact=True)
    prompts.wait_for(state="attached")
    if not prompts.is_visible():  # "New evaluation" opens by itself only with no evaluation (the demo may be installed)
        page.get_by_text("New evaluation", exact=True).click()
    # Other tests' runs of this session are preselected too (the newest four): evaluate this run alone.
    picker = page.get_by_test_id("stMultiSelect").filter(has_text="Runs to evaluate")
    others = picker.locator(f"button[aria-label^='Remove ']:not([aria-label='Remove {run_id}'])")
    while (left := others.count()) > 0:
        others.first.click()
        expect(others).to_have_count(left - 1)
    expect(picker.get_by_role("button", name=f"Remove {run_id}", exact=True)).to_have_count(1)
    set_number(page, "Prompts (of the 805 AlpacaEval ones; 0 = all)", "4")
    set_number(page, "Max new tokens per answer", "16")
    page.get_by_role("button", name="Review evaluation", exact=True).click()
    page.get_by_role("button", name="Evaluate", exact=True).click()
    # Done when the newest evaluation (selected by default) is this run's; a failed one stops the wait at once.
    page.wait_for_function(
        "runId => document.querySelector('input[role=combobox][aria-label=Evaluation]')?.value.includes(runId)"
        " || document.body.innerText.includes('The last evaluation failed')",
        arg=run_id, timeout=400_000, polling=1000,
    )
    assert page.get_by_text("The last evaluation failed").count() == 0, page.get_by_test_id("stMain").inner_text()
    wait_for_app(page)
    chart = page.locator(".st-key-win_rates .js-plotly-plot")
    chart.wait_for()
    assert chart.evaluate("node => node._fullData[0].type") == "bar"
    screenshot(page, "results")


def test_shipped_demo_study_shows_on_results(page, server_env):
    """After `make demo`'s install, the Results page shows the dm_small study's win rates, one bar per variant."""
    import os

    from dpo_engine.demo import demo_manifest, install_demo

    manifest = demo_manifest()
    assert manifest is not None, "no shipped demo in assets/demo"
    previous = os.environ.get("MARGIN_LAB_HOME")
    os.environ["MARGIN_LAB_HOME"] = server_env["MARGIN_LAB_HOME"]
    try:
        result = install_demo()  # another test of this session (the Rounds page's) may have installed it already
        assert result["installed"] or "was installed" in result["reason"], result
    finally:
        if previous is None:
            os.environ.pop("MARGIN_LAB_HOME")
        else:
            os.environ["MARGIN_LAB_HOME"] = previous
    page.goto("/results")
    wait_for_app(page, timeout=240_000)
    choose(page, "Evaluation", re.compile(r"all variants"))  # newest first: the tests' own evaluation is above the demo's
    wait_for_app(page)
    # Until the rerun ends the previous evaluation's chart is still on screen: wait for one bar per study variant.
    page.wait_for_function(
        "n => document.querySelector('.st-key-win_rates .js-plotly-plot')?._fullData?.[0]?.y?.length === n",
        arg=len(manifest["runs"]), timeout=60_000,
    )
    screenshot(page, "study-results")
