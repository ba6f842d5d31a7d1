"""Issue #21 in a real browser, on a server of its own whose runs use the stand-in trainer (tests/runs_fake_train.py):
Enter does not launch, a run's progress shows an ETA, a sweep of 2 x 2 runs appears as one group, an evaluation
of answers identical to the baseline carries its warning, and a click on a chart point opens the pair."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
from browser_helpers import REPO_ROOT, screenshot, wait_for_app

from dpo_engine import runs

DEMO_EVALS = REPO_ROOT / "assets" / "demo" / "workspace" / "evals"
STEP_SECONDS = "1.5"  # the stand-in trainer's seconds per step: long enough for a running run to show its ETA


@pytest.fixture(scope="module")
def workspace_home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("workspace") / "home"
    [source] = DEMO_EVALS.iterdir()  # the demo study's evaluation, every answer replaced by the baseline's
    target = home / "evals" / source.name  # load_eval finds it by the eval_id in its meta.json
    shutil.copytree(source, target)
    per_prompt = pd.read_parquet(target / "per_prompt.parquet")
    per_prompt.assign(output=per_prompt.baseline_output, preference=0.5).to_parquet(target / "per_prompt.parquet")
    return home


@pytest.fixture(scope="module")
def workspace_url(workspace_home, tmp_path_factory):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {
        **os.environ, "MARGIN_LAB_HOME": str(workspace_home), "DPO_ENGINE_CACHE": str(workspace_home.parent / "cache"),
        "HF_HUB_OFFLINE": "1", "MARGIN_LAB_TRAIN_TARGET": "runs_fake_train:train", "FAKE_STEP_SECONDS": STEP_SECONDS,
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "tests"), os.environ.get("PYTHONPATH", "")]),
    }
    log = tmp_path_factory.mktemp("streamlit") / "server.log"
    command = [sys.executable, "-m", "streamlit", "run", "dashboard/app.py", "--server.headless", "true",
               "--server.address", "127.0.0.1", "--server.port", str(port), "--browser.gatherUsageStats", "false",
               "--server.fileWatcherType", "none"]
    with open(log, "wb") as handle:
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2):
                    break
            except OSError:
                time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def page(browser, workspace_url):
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, base_url=workspace_url)
    page = context.new_page()
    page.set_default_timeout(60_000)
    yield page
    context.close()


def set_field(page, label: str, value: str, *, enter: bool = False) -> None:
    field = page.get_by_label(label, exact=True).first
    field.fill(value)
    field.press("Enter" if enter else "Tab")


def test_enter_does_not_launch_and_a_run_shows_its_eta(page, workspace_home, monkeypatch):
    page.goto("/runs")
    wait_for_app(page, timeout=240_000)
    set_field(page, "model", "tiny-random", enter=True)
    for label, value in (("max_steps", "8"), ("batch_size", "2"), ("max_length", "128"), ("max_prompt_length", "64")):
        set_field(page, label, value, enter=True)  # Enter in every field: nothing is submitted
    wait_for_app(page)
    assert page.get_by_text("Will launch:").count() == 0
    assert not (workspace_home / "jobs").exists() or not any((workspace_home / "jobs").iterdir())

    page.get_by_role("button", name="Review launch", exact=True).click()
    page.get_by_text(re.compile(r"tiny-random · all pairs \(1,200 pairs\) · dpo \(beta 0\.1\) · 8 steps")).wait_for()
    page.get_by_role("button", name="Launch", exact=True).click()
    # The runs table's step column reads "training: i / 8 · r s/step · ETA t" while the run trains (the grid
    # draws on a canvas: its cells are in the DOM, hidden, for accessibility).
    eta = re.compile(r"training: \d / 8 · [\d.]+ s/step · ETA \d+ s")
    page.get_by_text(eta).first.wait_for(state="attached", timeout=240_000)
    [run_dir] = list((workspace_home / "runs").iterdir())
    # Its ETA shown, the run has served: stopped, it no longer holds the device the next test's sweep queues for.
    monkeypatch.setenv("MARGIN_LAB_HOME", str(workspace_home))
    assert runs.stop(run_dir.name, timeout=20).state == "stopped"


def test_a_two_by_two_sweep_appears_as_one_group(page):
    page.goto("/runs")
    wait_for_app(page, timeout=240_000)
    page.get_by_text("New sweep").click()
    page.get_by_text("Plan a sweep").click()
    wait_for_app(page)
    sweep = page.get_by_test_id("stForm").filter(has_text="Values to sweep")
    sweep.get_by_label("learning_rate", exact=True).fill("1e-5, 5e-6")
    sweep.get_by_label("loss_params.beta", exact=True).fill("0.1, 0.3")
    for label, value in (("model", "tiny-random"), ("max_steps", "2"), ("batch_size", "2")):
        field = sweep.get_by_label(label, exact=True)
        field.fill(value)
        field.press("Enter")
    page.get_by_test_id("stMultiSelect").filter(has_text="Selections to sweep over").click()
    page.get_by_role("option", name="all pairs").click()
    page.keyboard.press("Escape")
    page.get_by_role("button", name="Review sweep", exact=True).click()
    page.get_by_text("Will launch 4 runs").wait_for()
    page.get_by_role("button", name="Launch sweep", exact=True).click()
    page.get_by_text(re.compile(r"Sweep sw\d+ · 4 runs · 4 completed")).wait_for(timeout=400_000)
    page.get_by_text(re.compile(r"Sweep sw\d+ · 4 runs")).click()
    wait_for_app(page)
    screenshot(page, "runs-sweep")
    # beside the table, a parallel-coordinates chart of the runs' settings and final metrics
    chart = page.locator(".js-plotly-plot").filter(has=page.locator(".parcoords"))
    chart.first.wait_for()
    chart.first.scroll_into_view_if_needed()
    labels = chart.first.evaluate("node => node._fullData[0].dimensions.map(dimension => dimension.label)")
    assert {"learning_rate", "loss_params.beta", "final loss"} <= set(labels)
    chart.first.screenshot(path=str(REPO_ROOT / "docs" / "screenshots" / "sweep-parcoords.png"))


def test_identical_answers_carry_a_warning(page):
    page.goto("/results")
    wait_for_app(page, timeout=240_000)
    warning = page.get_by_test_id("stAlert").filter(has_text="answers are identical to the baseline's")
    warning.first.wait_for()
    assert warning.count() == 1 and "12 runs (" in warning.inner_text()  # one box names every run it concerns
    chart = page.locator(".st-key-win_rates .js-plotly-plot")  # not the first plot drawn: the paired one may be
    chart.wait_for()
    assert chart.evaluate("node => node._fullData[0].type") == "bar"
    screenshot(page, "results-warning")


def test_home_is_the_opening_page(page):
    page.goto("/")
    wait_for_app(page, timeout=120_000)
    page.get_by_role("heading", name="Margin Lab").wait_for()
    for link in ("Open Data", "Open Margins & Select", "Open Runs", "Open Results"):
        assert page.get_by_role("link", name=link).count() == 1
    page.locator(".js-plotly-plot").first.wait_for()
    screenshot(page, "home")


def test_a_click_on_a_chart_point_opens_the_pair(page):
    page.set_viewport_size({"width": 1400, "height": 1800})  # the whole scatter on screen, to click into
    page.goto("/margins")
    wait_for_app(page, timeout=120_000)
    chart = page.locator(".js-plotly-plot").first
    chart.wait_for()
    page.wait_for_timeout(1000)
    # The pair with the highest external margin, in page pixels (plotly's own conversion, on the scatter's subplot).
    pair_id, x, y = page.evaluate("""() => {
        const gd = document.querySelector('.js-plotly-plot'); const trace = gd._fullData[0];
        const xs = Array.from(trace.x), i = xs.indexOf(Math.max(...xs)), box = gd.getBoundingClientRect();
        const xa = gd._fullLayout['xaxis' + trace.xaxis.slice(1)], ya = gd._fullLayout['yaxis' + trace.yaxis.slice(1)];
        return [trace.customdata[i], box.left + xa._offset + xa.l2p(xs[i]), box.top + ya._offset + ya.l2p(trace.y[i])];
    }""")
    page.mouse.move(x, y)
    page.wait_for_timeout(300)
    page.mouse.click(x, y)
    page.get_by_text(f"Why this pair: {pair_id}").first.wait_for(timeout=60_000)  # the clicked pair's card
    why = page.locator(f".st-key-why-{pair_id}")
    why.get_by_text("Lengths (chosen / rejected)").wait_for()
    why.get_by_test_id("stDataFrame").wait_for()  # its rank under every selector
