"""The Results and Runs pages over real engine output: two tiny-model runs and one evaluation of them.

The judge is a deterministic score function (letters and digits), so the test needs no judge artifact; the runs,
generations, win rates and paired differences are the engine's own.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from dpo_engine import jobs, runs
from dpo_engine.cli.eval import add_parser
from dpo_engine.cli.flags import config_from_args, config_to_argv
from dpo_engine.evaluation.config import EvalConfig
from dpo_engine.evaluation.generation import GenerationSettings, load_eval_prompts
from dpo_engine.evaluation.judges import ScoreFunctionJudge
from dpo_engine.evaluation.report import evaluate
from dpo_engine.models.loading import TINY_MODEL
from test_dashboard_pages import APP, TIMEOUT

PAIRS = [
    {"prompt": f"Question {i}: what is {i} plus {i}?", "chosen": f"It is {2 * i}.", "rejected": "No idea."}
    for i in range(8)
]


def alnum_judge() -> ScoreFunctionJudge:
    def score(prompts, responses):
        return np.array([0.5 * sum(char.isascii() and char.isalnum() for char in text) for text in responses])

    return ScoreFunctionJudge(score, name="alnum-judge", description="counts ASCII letters and digits (test judge)")


@pytest.fixture(scope="module")
def shared_home(tmp_path_factory):
    return tmp_path_factory.mktemp("margin_lab_home")


@pytest.fixture
def workspace(shared_home, monkeypatch):
    """Overrides conftest's per-test workspace: the tests here share the module's runs and evaluation."""
    monkeypatch.setenv("MARGIN_LAB_HOME", str(shared_home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return shared_home


@pytest.fixture(scope="module")
def evaluation(shared_home, tmp_path_factory) -> tuple[list[str], str]:
    """Two completed tiny runs (dpo, simpo) and an evaluation of both on four prompts: (run ids, eval id)."""
    data = tmp_path_factory.mktemp("data")
    subset = data / "pairs.jsonl"
    subset.write_text("".join(json.dumps(pair) + "\n" for pair in PAIRS))
    prompts = data / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"q{i}", "instruction": f"Say {i} twice."}) + "\n" for i in range(4)))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MARGIN_LAB_HOME", str(shared_home))
        run_ids = []
        for loss in ("dpo", "simpo"):
            run_id = runs.create_run({
                "model": TINY_MODEL, "subset": str(subset), "loss": loss, "max_steps": 2, "batch_size": 4,
                "max_length": 96, "max_prompt_length": 48,
            }, name=f"tiny-{loss}")
            assert runs.run_foreground(run_id)["state"] == "completed"
            run_ids.append(run_id)
        result = evaluate(
            run_ids, judge=alnum_judge(), prompts=load_eval_prompts(prompts),
            settings=GenerationSettings(max_new_tokens=8, batch_size=4), eval_name="tiny",
        )
    return run_ids, result.eval_id


def page(name: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    at.switch_page(name)
    at.run()
    assert not at.exception, [error.message for error in at.exception]
    return at


def test_results_page_shows_win_rates_table_and_per_prompt_viewer(workspace, evaluation):
    run_ids, eval_id = evaluation
    at = page("views/results.py")
    charts = [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]
    bars = charts[0]["data"][0]
    assert bars["type"] == "bar" and len(bars["x"]["bdata"] if isinstance(bars["x"], dict) else bars["x"]) >= 1
    assert "error_y" in bars  # 95 % CI error bars
    assert len(charts) == 2  # win rates, and paired differences (two runs)
    table = at.dataframe[0].value
    assert list(table.run_id) == run_ids
    assert {"win_rate", "lc_win_rate", "mean_length"} <= set(table.columns)
    assert "Per prompt" in [heading.value for heading in at.subheader]
    assert at.text  # the instruction and both answers, in full


def test_results_page_repairs_against_another_baseline_run(workspace, evaluation):
    run_ids, _ = evaluation
    at = page("views/results.py")
    first = at.dataframe[0].value
    assert first.set_index("run_id").paired_difference.isna()[run_ids[0]]
    at.selectbox(key="pair_against").set_value(run_ids[1]).run()
    repaired = at.dataframe[0].value.set_index("run_id")
    assert repaired.paired_difference.isna()[run_ids[1]]
    assert not repaired.paired_difference.isna()[run_ids[0]]


def test_runs_page_lists_runs_and_overlays_their_curves(workspace, evaluation):
    run_ids, _ = evaluation
    at = page("views/runs.py")
    table = at.dataframe[0].value
    assert set(table.run) == set(run_ids) and set(table.state) == {"completed"}
    curves = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert {trace["name"] for trace in curves["data"]} == set(run_ids)
    assert any("completed" in item.value for item in at.markdown)
    differences = at.dataframe[-1].value  # the config fields the two plotted runs differ on
    assert "loss" in differences.index and "model" not in differences.index


def test_results_form_starts_the_eval_job_from_an_eval_config(workspace, evaluation, monkeypatch):
    run_ids, _ = evaluation
    started = []
    monkeypatch.setattr(jobs, "start", lambda kind, argv, **options: started.append((kind, argv)))
    at = page("views/results.py")
    next(box for box in at.number_input if box.label.startswith("Max new tokens")).set_value(0)  # device default
    at.get("form_submit_button")[0].click().run()  # "Review evaluation": nothing starts yet
    assert not started
    next(item for item in at.button if item.label == "Evaluate").click().run()
    assert len(started) == 1 and started[0][0] == "eval"
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    assert isinstance(started[0][1], EvalConfig)
    argv = ["eval", *config_to_argv(started[0][1], positional=("run_ids",))]
    config = config_from_args(EvalConfig, parser.parse_args(argv))
    assert sorted(config.run_ids) == sorted(run_ids) and config.max_new_tokens is None and config.dtype == "auto"
    assert config.n == 32 and config.compare_to == config.run_ids[0]
