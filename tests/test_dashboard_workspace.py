"""The run workspace of issue #21 through AppTest and the figure builders: review-then-launch forms that launch
once, sweeps as tagged groups, an evaluation that warns when it cannot mean anything, the zoomed win-rate chart,
smoothed curves, and the Home page."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import yaml
from streamlit.testing.v1 import AppTest

from dashboard.figures import training_curves, win_rate_chart
from dpo_engine import jobs
from dpo_engine.demo import DEMO_DIR
from dpo_engine.runs.smoothing import ema
from test_dashboard_pages import APP, TIMEOUT

DEMO_EVALS = DEMO_DIR / "workspace" / "evals"


def page(name: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    at.switch_page(name)
    at.run()
    assert not at.exception, [error.message for error in at.exception]
    return at


@pytest.fixture
def started(monkeypatch) -> list[tuple[str, object]]:
    """The jobs the pages start (kind and config or argv), recorded instead of run (no model is loaded)."""
    calls = []
    monkeypatch.setattr(jobs, "start", lambda kind, argv, **_: calls.append((kind, argv)))
    return calls


def button(at: AppTest, label: str):
    return next(item for item in [*at.button, *at.get("form_submit_button")] if item.label == label)


def test_the_app_opens_on_home_with_links_to_the_three_steps(workspace):
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    assert not at.exception
    assert at.title[0].value == "Margin Lab"
    assert [item.proto.page for item in at.get("page_link")] == ["data", "margins", "runs", "results"]
    [chart] = at.get("plotly_chart")
    assert len(json.loads(chart.proto.spec)["data"][0]["x"]) == 12  # the demo study's 12 variants


def test_review_shows_the_summary_and_only_launch_starts_once(workspace, started):
    at = page("views/runs.py")
    model = next(box for box in at.text_input if box.label == "model")
    model.set_value("tiny-random")
    next(box for box in at.number_input if box.label == "max_steps").set_value(16)
    button(at, "Review launch").click().run()
    assert not started  # reviewing launches nothing
    summary = next(item.value for item in at.markdown if item.value.startswith("**Will launch:**"))
    assert "tiny-random · all pairs (1,200 pairs) · dpo (beta 0.1) · 16 steps" in summary
    assert "an ETA appears once its first steps are measured" in summary  # no finished run of this shape yet
    button(at, "Launch").click().run()
    assert [kind for kind, _ in started] == ["launch"]
    # The same launch again within seconds (a double click): refused by the engine's config hash.
    button(at, "Review launch").click().run()
    button(at, "Launch").click().run()
    assert len(started) == 1
    assert any("launched seconds ago" in item.value for item in at.warning)


def test_a_sweep_launches_one_tagged_run_per_grid_point(workspace, started):
    at = page("views/runs.py")
    at.toggle(key="plan_sweep").set_value(True).run()
    next(box for box in at.text_input if box.key == "sweep-learning_rate").set_value("1e-5, 5e-6")
    next(box for box in at.text_input if box.key == "sweep-loss_params.beta").set_value("0.1, 0.3")
    at.multiselect(key="sweep_selections").set_value(["__all__"])
    button(at, "Review sweep").click().run()
    assert not started
    button(at, "Launch sweep").click().run()
    assert len(started) == 4
    tags = {request.tags for _, request in started}  # each a runs.LaunchRequest
    assert len(tags) == 1 and tags.pop().startswith("sweep:sw")
    configs = [yaml.safe_load(open(request.config, encoding="utf-8")) for _, request in started]
    assert sorted((c["learning_rate"], c["loss_params"]["beta"]) for c in configs) == [
        (5e-6, 0.1), (5e-6, 0.3), (1e-5, 0.1), (1e-5, 0.3)]


@pytest.fixture
def identical_eval(workspace) -> str:
    """The demo study's evaluation with every answer replaced by the baseline's: the judge ties everything."""
    [source] = DEMO_EVALS.iterdir()
    target = workspace / "evals" / source.name
    shutil.copytree(source, target)
    per_prompt = pd.read_parquet(target / "per_prompt.parquet")
    per_prompt.assign(output=per_prompt.baseline_output, preference=0.5).to_parquet(target / "per_prompt.parquet")
    return source.name


def test_results_warn_when_answers_equal_the_baseline(identical_eval):
    at = page("views/results.py")
    [warning] = [item.value for item in at.warning]  # one box for the twelve runs that share the problem
    assert warning.startswith("**12 runs (") and "100 of 100 answers are identical to the baseline's" in warning
    table = at.dataframe[0].value
    assert {"n_wins", "n_draws", "n_losses"} <= set(table.columns)


def demo_results() -> pd.DataFrame:
    [source] = DEMO_EVALS.iterdir()
    return pd.read_csv(source / "results.csv")


def test_win_rate_chart_is_zoomed_around_50_with_every_interval_inside():
    results = demo_results()
    figure = win_rate_chart(results)
    low, high = figure.layout.yaxis.range
    assert low < results.ci_low.min() and high > results.ci_high.max()
    assert high - low < 30 and low + high == pytest.approx(100)  # centred on 50 %, far tighter than 0-100
    bars = figure.data[0]
    np.testing.assert_allclose(np.asarray(bars.base) + np.asarray(bars.y), results.win_rate)
    np.testing.assert_allclose(np.asarray(bars.y) + 50 + np.asarray(bars.error_y.array), results.ci_high)
    first = results.iloc[0]
    assert f"{first.n_wins} W · {first.n_draws} T · {first.n_losses} L" in bars.x[0]


def test_training_curves_smooth_with_ema_and_can_use_a_log_loss_axis():
    frame = pd.DataFrame({"step": [1, 2, 3], "loss": [25.0, 20.0, 24.0], "rewards/margins": [0.0, 0.1, 0.3],
                          "rewards/accuracies": [0.5, 1.0, 0.5]})
    figure = training_curves({"ipo": frame}, smoothing=0.6, log_loss=True)
    raw, smoothed = figure.data[0], figure.data[1]
    np.testing.assert_allclose(raw.y, frame.loss)
    np.testing.assert_allclose(smoothed.y, ema(frame.loss.to_numpy(), 0.6))
    assert raw.opacity < 1 and not raw.showlegend
    assert figure.layout.yaxis.type == "log" and figure.layout.yaxis2.type != "log"


def test_the_default_selection_name_follows_the_rule(workspace):
    from test_dashboard_pages import SHIPPED, write_test_margins

    if not SHIPPED.exists():
        write_test_margins(workspace)
    at = page("views/margins.py")
    at.button_group[0].set_value("top_k").run()
    assert at.text_input(key="selection_name").value == "top-k-dm_mul-10pct"
    at.slider(key=next(s.key for s in at.slider if s.label == "Share of all pairs (%)")).set_value(20).run()
    assert at.text_input(key="selection_name").value == "top-k-dm_mul-20pct"  # not stale
    save = next(item for item in at.button if item.label == "Save selection")
    metric = next(item for item in at.metric if item.label == "Selected pairs")
    assert save and metric.value == "240"
    # The pair card of the first selected pair shows its margins and their ranks.
    card = next(item.value for item in at.markdown if "DM-MUL **" in item.value)
    rank = int(card.split("DM-MUL **")[1].split("rank ")[1].split(" of")[0].replace(",", ""))
    assert "of 1,200" in card and rank <= 240  # a selected pair of the top 20 % by DM-MUL


@pytest.mark.slow  # trains the tiny random model for two steps (seconds)
def test_the_summary_estimates_the_time_from_a_finished_run_of_the_same_shape(workspace, started, tmp_path):
    from dpo_engine import runs

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
    run_id = runs.create_run({"model": "tiny-random", "subset": str(pairs), "max_steps": 2})
    assert runs.run_foreground(run_id)["state"] == "completed"
    at = page("views/runs.py")
    next(box for box in at.text_input if box.label == "model").set_value("tiny-random")
    next(box for box in at.number_input if box.label == "max_steps").set_value(40)
    button(at, "Review launch").click().run()
    summary = next(item.value for item in at.markdown if item.value.startswith("**Will launch:**"))
    assert f"as {run_id} took)" in summary and "time ≈ " in summary and "40 steps" in summary


def test_a_run_from_a_selection_with_rows_left_out_says_so(workspace, tmp_path):
    from dpo_engine import runs
    from dpo_engine.selection.store import Selection, save_selection

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
    provenance = {"dropped_rows": [3, 7], "dropped_count": 2, "dropped_reason": "rows that cannot be used were left out"}
    save_selection(Selection("cleaned", "manual", {}, "fp", ["x"], provenance=provenance))
    runs.create_run({"model": "tiny-random", "subset": str(pairs), "max_steps": 2}, selection_name="cleaned")
    at = page("views/runs.py")
    notes = [item.value for item in at.caption if "left out" in item.value]
    assert notes == ["Selection **cleaned** was made with 2 rows of its dataset left out: rows that cannot be used were "
                     "left out."]
