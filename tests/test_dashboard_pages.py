"""Dashboard page flows with Streamlit's AppTest (no browser), and the pure helpers the pages use.

AppTest cannot drive plotly selections, so box/lasso is tested through the page's own session key, the mirror the
chart's on_select callback writes (see dashboard/views/margins.py); the real drag is in tests/browser/.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
from streamlit.testing.v1 import AppTest

from dashboard import figures
from dashboard.figures import hover_texts, margin_density, margin_scatter, selection_marginals, training_curves
from dpo_engine import jobs
from dpo_engine.data.pairs import bundled_datasets, fingerprint, load_pairs, save_pairs
from dpo_engine.paths import workspace_subdir
from dpo_engine.selection.store import list_selections

APP = str(Path(__file__).resolve().parent.parent / "dashboard" / "app.py")
SHIPPED = Path(__file__).resolve().parent.parent / "assets" / "margins" / "ultrafeedback.parquet"
TIMEOUT = 180  # the first run imports pandas/plotly; pages that read training settings import torch


def write_test_margins(home: Path) -> str:
    """A margins table for the UltraFeedback demo in the workspace ``home``, for tests only; returns the fingerprint.

    External margins come from the data's scores; the implicit margin and log-probs are random numbers.
    """
    from dpo_engine.margins.table import build_margins_table, save_margins_table
    from dpo_engine.margins.scoring import external_margins

    pairs = load_pairs(bundled_datasets()["ultrafeedback"]).pairs
    dataset_fp = fingerprint(pairs)
    external, meta = external_margins(pairs, "dataset")
    rng = np.random.default_rng(0)
    n = len(pairs)
    implicit = pd.DataFrame({"pair_id": pairs.pair_id, "implicit_margin": rng.normal(0.0, 2.0, n)})
    for column in ("policy_chosen_logps", "policy_rejected_logps", "ref_chosen_logps", "ref_rejected_logps"):
        implicit[column] = rng.normal(-300.0, 50.0, n)
    implicit["chosen_tokens"] = rng.integers(20, 500, n)
    implicit["rejected_tokens"] = rng.integers(20, 500, n)
    save_margins_table(
        build_margins_table(pairs, external, implicit),
        Path(home) / "margins" / f"{dataset_fp}.parquet",
        {"dataset_fingerprint": dataset_fp, "external": meta,
         "implicit": {"source": "test fixture", "description": "random numbers for the dashboard tests only"}},
    )
    return dataset_fp


@pytest.fixture(scope="module")
def demo_pairs() -> pd.DataFrame:
    return load_pairs(bundled_datasets()["ultrafeedback"]).pairs


@pytest.fixture
def with_margins(workspace) -> str:
    """The demo's fingerprint, with margins available (shipped, or written for the test)."""
    if SHIPPED.exists():
        return fingerprint(load_pairs(bundled_datasets()["ultrafeedback"]).pairs)
    return write_test_margins(workspace)


def app(page: str = "views/margins.py") -> AppTest:
    """The app on ``page`` (default Margins & Select, which the tests below exercise; the app opens on Home)."""
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    if page:
        at.switch_page(page)
        at.run()
    assert not at.exception, [error.message for error in at.exception]
    return at


def metric(at: AppTest, label: str) -> str:
    return next(item.value for item in at.metric if item.label == label)


def scatter_spec(at: AppTest) -> dict:
    return json.loads(at.get("plotly_chart")[0].proto.spec)


def plotly_array(value) -> np.ndarray:
    """An array from a figure's JSON: plotly sends numpy arrays base64-encoded as {"dtype", "bdata"}."""
    if isinstance(value, dict):
        return np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"])
    return np.asarray(value)


# ---- Margins & Select ----------------------------------------------------------------------------------------------


def test_margins_page_plots_every_pair_in_one_trace(with_margins, demo_pairs):
    at = app()
    trace = scatter_spec(at)["data"][0]
    assert trace["type"] == "scatter"  # SVG: 1,200 pairs are below figures.SVG_POINTS_UP_TO
    assert len(trace["customdata"]) == len(demo_pairs)
    assert set(trace["customdata"]) == set(demo_pairs.pair_id)
    assert metric(at, "Selected pairs") == f"{len(demo_pairs):,}"  # thresholds start wide open
    assert "How these margins were computed" in [expander.label for expander in at.expander]


def test_top_k_share_selects_that_share(with_margins, demo_pairs):
    at = app()
    at.button_group[0].set_value("top_k").run()
    at.slider(key=f"pct-top_k-{with_margins}").set_value(10).run()
    assert metric(at, "Selected pairs") == f"{len(demo_pairs) // 10:,}"
    assert metric(at, "Share of dataset") == "10.0%"


def test_random_baseline_selects_that_share(with_margins, demo_pairs):
    at = app()
    at.button_group[0].set_value("random").run()
    at.slider(key=f"pct-random-{with_margins}").set_value(25).run()
    assert metric(at, "Selected pairs") == f"{len(demo_pairs) // 4:,}"


def test_large_tables_open_binned_and_points_are_one_click_away(with_margins, demo_pairs, monkeypatch):
    monkeypatch.setattr(figures, "DENSITY_ABOVE", len(demo_pairs) - 1)  # the page reads it at every run
    at = app()
    at.button_group[0].set_value("top_k").run()
    at.slider(key=f"pct-top_k-{with_margins}").set_value(10).run()
    grey, chosen = scatter_spec(at)["data"][:2]
    assert grey["type"] == chosen["type"] == "heatmap"
    cells = np.array(grey["customdata"])  # [row][col] = [pairs, selected pairs]
    assert cells[..., 0].sum() == len(demo_pairs) and cells[..., 1].sum() == len(demo_pairs) // 10
    assert metric(at, "Selected pairs") == f"{len(demo_pairs) // 10:,}"
    assert any("binned" in caption.value for caption in at.caption)

    draw = at.button_group(key=f"draw-{with_margins}")
    draw.set_value("points").run()
    trace = scatter_spec(at)["data"][0]
    assert trace["type"] == "scatter" and len(trace["selectedpoints"]) == len(demo_pairs) // 10

    draw.set_value("binned").run()
    at.button_group[0].set_value("manual").run()  # box/lasso needs the points whatever the choice
    assert scatter_spec(at)["data"][0]["type"] == "scatter"
    assert not [group for group in at.button_group if group.key == f"draw-{with_margins}"]


def test_small_tables_open_as_points_and_can_be_binned(with_margins, demo_pairs):
    at = app()
    assert scatter_spec(at)["data"][0]["type"] == "scatter"
    at.button_group(key=f"draw-{with_margins}").set_value("binned").run()
    cells = np.array(scatter_spec(at)["data"][0]["customdata"])
    assert cells[..., 0].sum() == cells[..., 1].sum() == len(demo_pairs)  # thresholds open: every pair selected


def test_box_selection_mirror_drives_the_table_and_saving(with_margins, demo_pairs):
    at = app()
    at.button_group[0].set_value("manual").run()
    assert metric(at, "Selected pairs") == "0"
    assert any("Nothing selected yet" in item.value for item in at.info)

    chart = at.get("plotly_chart")[0].proto.spec
    assert "selectedpoints" not in json.loads(chart)["data"][0]  # nothing selected: no point is dimmed

    ids = list(demo_pairs.pair_id[:7])
    at.session_state["scatter_selection"] = {"fingerprint": with_margins, "ids": ids}  # as the on_select callback does
    at.run()
    assert metric(at, "Selected pairs") == "7"
    selected_table = at.dataframe[-1].value
    assert sorted(selected_table.pair_id) == sorted(ids)
    # The chart's figure stays byte for byte the same (plotly shows its own box; a new spec would mount a new
    # chart): the selection's marginals are drawn in a chart beneath it.
    charts = at.get("plotly_chart")
    assert charts[0].proto.spec == chart
    beneath = json.loads(charts[1].proto.spec)["data"]
    assert [plotly_array(bar["y"]).sum() for bar in beneath if bar["name"] == "selected"] == [7, 7]

    # A chart drawn anew (another colour; the rule switched away and back) marks the mirrored selection.
    at.selectbox(key="color_by").set_value("Selection").run()
    assert len(scatter_spec(at)["data"][0]["selectedpoints"]) == 7
    at.button_group[0].set_value("threshold").run()
    at.button_group[0].set_value("manual").run()
    assert len(scatter_spec(at)["data"][0]["selectedpoints"]) == 7
    assert metric(at, "Selected pairs") == "7"

    at.text_input(key="selection_name").set_value("seven").run()
    next(button for button in at.button if button.label == "Save selection").click().run()
    saved = {item.name: item for item in list_selections()}
    assert saved["seven"].rule == "manual" and sorted(saved["seven"].pair_ids) == sorted(ids)
    assert saved["seven"].dataset_fingerprint == with_margins


def test_a_mirror_from_another_dataset_is_ignored(with_margins):
    at = app()
    at.button_group[0].set_value("manual").run()
    at.session_state["scatter_selection"] = {"fingerprint": "another-dataset", "ids": ["x"]}
    at.run()
    assert metric(at, "Selected pairs") == "0"


def test_both_bundled_datasets_open_on_their_shipped_margins(workspace):
    at = app("views/data.py")
    at.selectbox[0].set_value("hh_rlhf").run()
    at.switch_page("views/margins.py")
    at.run()
    assert not at.exception
    assert len(scatter_spec(at)["data"][0]["customdata"]) == 1000


def test_without_margins_the_page_says_how_to_compute_them(workspace, tmp_path):
    own = save_pairs(load_pairs(bundled_datasets()["hh_rlhf"]).pairs.head(20), tmp_path / "own.jsonl")
    at = app("views/data.py")
    at.radio[0].set_value("Path or Hub dataset").run()
    at.text_input[0].set_value(str(own)).run()
    at.switch_page("views/margins.py")
    at.run()
    assert not at.get("plotly_chart")
    assert any("dpo-engine score" in item.value for item in at.info)
    assert "Review margins job" in [button.label for button in at.get("form_submit_button")]


def test_a_failed_margin_job_is_reported_with_its_error(workspace):
    from dashboard.state import computed_margins_path

    hh = load_pairs(bundled_datasets()["hh_rlhf"]).pairs
    job = jobs.start("score", ["score", "/no/such/pairs.jsonl", "--out", str(computed_margins_path(fingerprint(hh)))])
    for _ in range(600):
        if jobs.status(job)["state"] != "running":
            break
        time.sleep(0.1)
    at = app("views/data.py")
    at.selectbox[0].set_value("hh_rlhf").run()
    at.switch_page("views/margins.py")
    at.run()
    assert any("The last margin job failed" in item.value and "pairs.jsonl" in item.value for item in at.error)
    assert "Review margins job" in [button.label for button in at.get("form_submit_button")]


# ---- Data ------------------------------------------------------------------------------------------------------------


def test_data_page_reports_warnings_and_switches_dataset(workspace):
    at = app("views/data.py")
    assert any("1,200 pairs loaded" in item.value and "empty response" in item.value for item in at.warning)
    # the reply-length chart and its line: UltraFeedback's chosen reply is longer in 643 of 1,200 pairs
    assert any("longer one in **54%** of pairs, the rejected one in 46%; median 877 vs 808" in item.value
               for item in at.caption)
    assert at.get("plotly_chart")
    at.selectbox[0].set_value("hh_rlhf").run()
    assert "hh_rlhf" in at.session_state["data_source"].label
    assert any("longer one in **60%** of pairs" in item.value for item in at.caption)
    assert any("hh_rlhf" in item.value for item in at.sidebar.caption)


def test_data_page_blocks_on_errors(workspace, tmp_path):
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "p", "chosen": "a"}\n')
    at = app("views/data.py")
    at.radio[0].set_value("Path or Hub dataset").run()
    at.text_input[0].set_value(str(broken)).run()
    assert at.error and "rejected" in at.error[0].value
    assert not at.dataframe  # nothing to browse
    assert at.session_state["data_source"].bundled == "ultrafeedback"  # the current dataset is unchanged


def test_column_mapping_loads_renamed_columns(workspace, tmp_path):
    renamed = tmp_path / "renamed.csv"
    pd.DataFrame({"q": ["hi", "yo"], "good": ["a", "b"], "bad": ["c", "d"]}).to_csv(renamed, index=False)
    at = app("views/data.py")
    at.radio[0].set_value("Path or Hub dataset").run()
    at.text_input[0].set_value(str(renamed)).run()
    assert at.error
    for field, column in (("prompt", "q"), ("chosen", "good"), ("rejected", "bad")):
        next(box for box in at.selectbox if box.label == field).set_value(column)
    at.get("form_submit_button")[0].click().run()
    assert not at.error
    assert at.session_state["data_source"].column_map == {"prompt": "q", "chosen": "good", "rejected": "bad"}


def test_column_mapping_of_pairwise_data_with_a_label(workspace, tmp_path):
    labelled = tmp_path / "labelled.jsonl"
    rows = [{"q": "hi", "left": "a", "right": "b", "winner": "right"}, {"q": "yo", "left": "c", "right": "d", "winner": "left"}]
    labelled.write_text("".join(json.dumps(row) + "\n" for row in rows))
    at = app("views/data.py")
    at.radio[0].set_value("Path or Hub dataset").run()
    at.text_input[0].set_value(str(labelled)).run()
    assert at.error
    at.radio(key="mapping_shape").set_value("Two responses and a label").run()
    assert next(box for box in at.selectbox if box.label == "label").options == ["(detect)", "q", "left", "right", "winner"]
    for field, column in (("prompt", "q"), ("response_a", "left"), ("response_b", "right"), ("label", "winner")):
        next(box for box in at.selectbox if box.label == field).set_value(column)
    next(box for box in at.text_input if box.label == "first_preferred").set_value("left")
    at.get("form_submit_button")[0].click().run()
    assert not at.error
    assert at.session_state["data_source"].column_map == {
        "prompt": "q", "response_a": "left", "response_b": "right", "label": "winner", "first_preferred": "left",
    }
    assert any("2 pairs, no problems found" in item.value for item in at.success)


# ---- Runs and Results before anything exists --------------------------------------------------------------------------


def test_runs_page_explains_what_to_do_first(workspace):
    at = app("views/runs.py")
    assert any("No runs yet" in item.value for item in at.info)
    assert {"beta", "learning_rate", "lora_r", "max_steps"} <= {box.label for box in at.number_input}


def test_runs_form_refuses_a_launch_that_will_not_fit(workspace, tiny_model_dir):
    at = app("views/runs.py")
    assert "gradient_checkpointing" in {box.label for box in at.checkbox}
    next(box for box in at.text_input if box.label == "model").set_value("tiny-random")
    next(box for box in at.number_input if box.label == "max_length").set_value(131_072)  # the bound; too big here
    next(box for box in at.number_input if box.label == "batch_size").set_value(4096)
    next(box for box in at.selectbox if box.label == "device").set_value("cpu")
    at.get("form_submit_button")[0].click().run()
    refusal = [item.value for item in at.error]
    assert refusal and "Not launched" in refusal[0] and "gradient_checkpointing" in refusal[0] and "GiB" in refusal[0]
    assert not jobs.list_jobs("launch")


def test_results_page_explains_what_to_do_first(workspace):
    at = app("views/results.py")
    assert any("No completed runs yet" in item.value for item in at.info)
    assert not at.get("plotly_chart")


# ---- pure helpers ----------------------------------------------------------------------------------------------------


def test_margin_scatter_is_one_trace_with_ids_and_marks_the_selection():
    table = pd.DataFrame({"pair_id": ["a", "b", "c"], "external_margin": [1.0, 2.0, np.nan], "implicit_margin": [0.5, -1.0, 2.0]})
    selected = np.array([True, False, False])
    figure = margin_scatter(table, ["x", "y", "z"], selected=selected)
    scatter = figure.data[0]
    assert scatter.type == "scatter" and [trace.type for trace in figure.data].count("scatter") == 1
    assert list(scatter.customdata) == ["a", "b", "c"]
    assert list(scatter.selectedpoints) == [0]
    assert scatter.selected.marker.color == "#3b5bdb" and scatter.unselected.marker.color == "#b8bfcc"
    assert scatter.text == ("x", "y", "z") and scatter.hovertemplate.startswith("%{text}")
    coloured = margin_scatter(table, ["x", "y", "z"], selected=selected, color=np.array([0.1, 0.2, 0.3]),
                              thresholds={"external_margin": (0.5, None)})
    assert list(coloured.data[0].selectedpoints) == [0]
    assert len(coloured.layout.shapes) == 1
    lean = margin_scatter(table, None, selected=selected)  # large tables: id and margins only, no text per point
    assert lean.data[0].text is None and lean.data[0].hovertemplate.startswith("<b>%{customdata}</b>")
    many = figures.SVG_POINTS_UP_TO + 1  # above it the points (and the warm-up rings over them) are WebGL
    large = pd.DataFrame({"pair_id": np.arange(many).astype(str), "external_margin": np.linspace(0, 1, many),
                          "implicit_margin": np.linspace(1, 0, many)})
    drawn = margin_scatter(large, None, selected=None, rings=figures.Rings(np.arange(many) < 3, figures.WARMUP_RINGS))
    assert [trace.type for trace in drawn.data[:2]] == ["scattergl", "scattergl"]


def test_a_selection_assembled_on_the_scatter_base_is_the_figure_plotly_builds():
    """`with_selection` writes dicts by hand: they must equal what plotly's add_trace / add_vline / add_hline
    calls make of the same selection and thresholds (the reference: `_finish_margins_frame` over the same points)."""
    rng = np.random.default_rng(3)
    n = 300
    table = pd.DataFrame({"pair_id": [f"p{i}" for i in range(n)], "external_margin": rng.normal(size=n),
                          "implicit_margin": rng.normal(size=n)})
    table.loc[5, "external_margin"] = np.nan
    selected, color = table.external_margin.to_numpy() > 0.3, rng.random(n)
    rings = figures.Rings(np.arange(n) < 20, figures.WARMUP_RINGS)
    thresholds = {"external_margin": (0.3, None), "implicit_margin": (-1.0, 2.0)}
    assembled = margin_scatter(table, None, selected=selected, thresholds=thresholds, rings=rings, color=color,
                               color_label="score")

    reference = figures._margins_frame()
    points = assembled.data[0].to_plotly_json()
    reference.add_trace(go.Scatter({k: v for k, v in points.items() if k not in ("xaxis", "yaxis")}), row=2, col=1)
    reference.add_trace(assembled.data[1], row=2, col=1)  # the warm-up rings
    figures._finish_margins_frame(reference, table.external_margin.to_numpy(float),
                                  table.implicit_margin.to_numpy(float), selected, thresholds)
    assert json.loads(assembled.to_json()) == json.loads(reference.to_json())
    assert len(assembled.layout.shapes) == 3 and list(assembled.data[0].selectedpoints) == list(np.flatnonzero(selected))

    base = figures.margin_scatter_base(table, None)
    before = json.dumps(base.figure, default=str)
    figures.with_selection(base, selected, thresholds=thresholds)
    assert json.dumps(base.figure, default=str) == before  # the cached base is only read


def test_hover_texts_escape_and_truncate():
    pairs = pd.DataFrame({"pair_id": ["<1>"], "prompt": ["<b>bold</b> " + "word " * 100], "chosen": [""], "rejected": ["ok"]})
    (text,) = hover_texts(pairs)
    assert "&lt;b&gt;bold" in text and "<b>bold" not in text
    assert "…" in text and "(empty)" in text


def test_training_curves_overlay_runs():
    frame = pd.DataFrame({"step": [1, 2], "loss": [0.69, 0.6], "rewards/margins": [0.0, 0.1], "rewards/accuracies": [0.5, 1.0]})
    figure = training_curves({"run-a": frame, "run-b": frame})
    assert len(figure.data) == 6
    assert sum(trace.showlegend for trace in figure.data) == 2


def test_a_failed_jobs_message_is_its_failure_line_not_a_later_progress_bar(workspace):
    job_dir = workspace_subdir("jobs") / "eval-1"
    job_dir.mkdir(parents=True)
    (job_dir / "job.json").write_text(json.dumps({"kind": "eval", "argv": ["eval"], "created": 1.0}))
    (job_dir / "exit.json").write_text(json.dumps({"returncode": 1, "finished": 2.0}))
    (job_dir / "output.log").write_text(
        "Traceback (most recent call last):\n  File \"peft/config.py\", line 330\n"
        "    return loaded_attributes[\"peft_type\"]\nKeyError: 'peft_type'\n"
        "generating: run-a:   0%|          | 0/4 [00:00<?, ?item/s]\n")
    assert jobs.status(job_dir)["message"] == "KeyError: 'peft_type'"
    (job_dir / "output.log").write_text("loading\nerror: pairs.jsonl, row 3: no 'chosen' field\nbye\n")
    assert jobs.status(job_dir)["message"] == "error: pairs.jsonl, row 3: no 'chosen' field"
    (job_dir / "output.log").write_text("loading\nkilled\n")
    assert jobs.status(job_dir)["message"] == "killed"


def test_jobs_record_how_a_command_ended(workspace, tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
    done = jobs.start("validate", ["validate", str(pairs)], progress_file=False)
    failed = jobs.start("validate", ["validate", str(tmp_path / "missing.jsonl")], progress_file=False)
    for job_dir in (done, failed):
        for _ in range(600):
            if jobs.status(job_dir)["state"] != "running":
                break
            time.sleep(0.1)
    assert jobs.status(done)["state"] == "completed"
    status = jobs.status(failed)
    assert status["state"] == "failed" and "missing.jsonl" in status["message"]
    assert [path.name for path in jobs.list_jobs("validate")] and len(jobs.list_jobs("validate")) == 2


def test_margin_marginals_are_binned_counts_of_all_and_selected_pairs():
    table = pd.DataFrame({"pair_id": list("abcd"), "external_margin": [0.0, 1.0, 2.0, np.nan],
                          "implicit_margin": [1.0, 1.0, 3.0, 0.5]})
    figure = margin_scatter(table, None, selected=np.array([True, False, True, True]))
    bars = [trace for trace in figure.data if trace.type == "bar"]
    assert [trace.name for trace in bars] == ["all pairs", "selected", "all pairs", "selected"]
    external_all, external_selected, implicit_all, implicit_selected = bars
    assert sum(external_all.y) == 3 and sum(external_selected.y) == 2  # the NaN margin is left out of its marginal
    assert sum(implicit_all.x) == 4 and sum(implicit_selected.x) == 3
    assert implicit_all.orientation == "h" and external_all.x[0] < external_all.x[-1]

    # The box/lasso chart: no selection in its figure; the selection's marginals go in a chart of their own.
    plain = margin_scatter(table, None, selected=None, selected_marginals=False)
    assert plain.data[0].selectedpoints is None
    assert [trace.name for trace in plain.data if trace.type == "bar"] == ["all pairs", "all pairs"]
    beneath = selection_marginals(table, np.array([True, False, True, True]))
    assert [sum(trace.y) for trace in beneath.data] == [3, 2, 4, 3]


def test_margin_density_counts_pairs_and_selected_pairs_per_cell():
    # bins=2 over x in [0, 2], y in [0, 1]: cells split at x = 1 and y = 0.5.
    table = pd.DataFrame({"pair_id": list("abcdef"), "external_margin": [0.0, 0.2, 2.0, 1.8, 0.1, np.nan],
                          "implicit_margin": [0.0, 0.1, 1.0, 1.0, 1.0, 0.3]})
    selected = np.array([True, False, True, True, False, True])
    figure = margin_density(table, selected=selected, bins=2)
    grey, chosen = figure.data[:2]
    assert grey.type == chosen.type == "heatmap"
    cells = np.array(grey.customdata)  # [row = y][col = x] = [pairs, selected]; the NaN pair is not drawn
    assert cells[..., 0].tolist() == [[2, 0], [1, 2]] and cells[..., 1].tolist() == [[1, 0], [0, 2]]
    assert np.array_equal(np.array(chosen.customdata), cells)
    z = np.array(grey.z, dtype=float)
    assert np.allclose(z[[0, 1, 1], [0, 0, 1]], np.log10([2, 1, 2])) and np.isnan(z[0, 1])
    shade = np.array(chosen.z, dtype=float)  # log10 of the selected count; cells without a selected pair are empty
    assert np.allclose(shade[[0, 1], [0, 1]], [0.0, np.log10(2)]) and np.isnan(shade[[0, 1], [1, 0]]).all()
    assert [trace.name for trace in figure.data[2:]] == ["all pairs", "selected", "all pairs", "selected"]

    coloured = margin_density(table, selected=selected, color=np.array([1.0, 9.0, 3.0, 5.0, 7.0, 2.0]), bins=2,
                              thresholds={"external_margin": (0.5, None)})
    mean = np.array(coloured.data[1].z, dtype=float)  # the mean over the cell's selected pairs: (3 + 5) / 2
    assert mean[0, 0] == 1.0 and mean[1, 1] == 4.0 and np.isnan(mean[1, 0])
    assert coloured.data[1].showscale and len(coloured.layout.shapes) == 1

    # Scores on a scale get one cell per distinct value, centred on it: x in {0, 0.5, 2}, y all equal.
    discrete = pd.DataFrame({"pair_id": list("abcd"), "external_margin": [0.0, 0.5, 2.0, 2.0],
                             "implicit_margin": [1.0, 1.0, 1.0, 1.0]})
    cells = margin_density(discrete, selected=np.array([True, True, False, True])).data[0]
    assert list(cells.x) == [0.0, 0.5, 2.0] and list(cells.y) == [1.0]
    assert np.array(cells.customdata).tolist() == [[[1, 1], [1, 1], [2, 1]]]
