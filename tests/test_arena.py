"""The selection arena: its numbers against hand computation, its config checks, and a tiny arena end to end
(64 pairs, 3 selectors + 2 random seeds) killed mid-way and resumed without redoing finished steps."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from dpo_engine.arena.config import ArenaConfig, ArenaRequest
from dpo_engine.arena.stats import (
    jaccard,
    jaccard_matrix,
    random_mean_preferences,
    subset_mix,
    training_dynamics,
    versus_random,
)
from dpo_engine.errors import ConfigError
from dpo_engine.paths import ASSETS_DIR

BUNDLED_PAIRS = ASSETS_DIR / "data" / "ultrafeedback_binarized_scored_1200.jsonl"


def test_jaccard_by_hand():
    assert jaccard(["a", "b", "c"], ["b", "c", "d", "e"]) == pytest.approx(2 / 5)
    assert jaccard([], []) == 1.0
    matrix = jaccard_matrix({"x": ["a", "b"], "y": ["b", "c"], "z": ["d"]})
    expected = [[1, 1 / 3, 0], [1 / 3, 1, 0], [0, 0, 1]]
    np.testing.assert_allclose(matrix.to_numpy(), expected)
    assert list(matrix.index) == list(matrix.columns) == ["x", "y", "z"]


def test_random_mean_skips_failed_judgements():
    randoms = np.array([[1.0, np.nan, 0.0, np.nan], [0.0, 0.5, 1.0, np.nan]])
    np.testing.assert_allclose(random_mean_preferences(randoms), [0.5, 0.5, 0.5, np.nan])


def test_versus_random_by_hand():
    preferences = np.array([1.0, 0.5, 0.0, 1.0])
    randoms = np.array([[0.5, 0.5, 0.5, 0.0], [0.5, 0.0, 0.5, 1.0]])
    differences = preferences - randoms.mean(axis=0)  # [0.5, 0.25, -0.5, 0.5]
    result = versus_random(preferences, randoms, n_resamples=20000)
    assert result["difference"] == pytest.approx(100 * differences.mean()) == pytest.approx(18.75)
    assert result["n"] == 4 and result["low"] <= result["difference"] <= result["high"]
    # The exact sign-flip p: all 2^4 sign patterns, two-sided.
    null = [abs(np.mean(np.array(signs) * differences)) for signs in itertools.product([-1, 1], repeat=4)]
    exact = np.mean(np.array(null) >= abs(differences.mean()) - 1e-12)
    assert result["p_value"] == pytest.approx(exact, abs=0.02)
    # Bootstrap bounds: every resampled mean lies between the smallest and the largest difference.
    assert 100 * differences.min() <= result["low"] and result["high"] <= 100 * differences.max()
    constant = versus_random(np.full(5, 0.75), np.full((2, 5), 0.5))
    assert constant["difference"] == constant["low"] == constant["high"] == pytest.approx(25.0)


def test_training_dynamics_takes_the_last_logged_values():
    metrics = pd.DataFrame({"step": [1, 2, 3], "loss": [0.69, 0.6, 0.5],
                            "rewards/accuracies": [0.5, 0.75, None], "rewards/margins": [0.0, 0.1, 0.2]})
    assert training_dynamics(metrics) == {"final_loss": 0.5, "reward_accuracy": 0.75, "reward_margin": 0.2,
                                          "steps": 3}
    empty = training_dynamics(pd.DataFrame())
    assert empty["steps"] == 0 and np.isnan(empty["final_loss"])


def test_subset_mix_by_hand():
    pairs = pd.DataFrame({"pair_id": ["a", "b", "c"], "chosen": ["xx", "xxxx", "x"], "rejected": ["y", "y", "yyy"],
                          "extra": ['{"source": "s1"}', '{"source": "s2"}', ""]})
    margins = pd.DataFrame({"pair_id": ["a", "b", "c"], "chosen_tokens": [2, 4, 6], "rejected_tokens": [1, 1, 1]})
    mix = subset_mix(pairs, margins, ["a", "b", "c"], "source")
    assert mix["n"] == 3 and mix["chosen_chars"] == pytest.approx(7 / 3) and mix["rejected_chars"] == 5 / 3
    assert mix["chosen_tokens"] == 4 and mix["rejected_tokens"] == 1
    assert mix["sources"] == pytest.approx({"(none)": 1 / 3, "s1": 1 / 3, "s2": 1 / 3})


@pytest.mark.parametrize("values, field", [
    ({"name": ""}, "name"),
    ({"budget": 0}, "budget"),
    ({"random_seeds": []}, "random_seeds"),
    ({"random_seeds": [1, 1]}, "random_seeds"),
    ({"selectors": [{"name": "x", "rule": "nope"}]}, "selectors[0].rule"),
    ({"selectors": [{"name": "x", "rule": "top_k", "params": {"k": 5}}]}, "selectors[0].params.k"),
    ({"selectors": [{"name": "x", "rule": "top_k", "params": {"scroe": "dm_mul"}}]}, "selectors[0].params.scroe"),
    ({"selectors": [{"name": "random-s1", "rule": "top_k"}]}, "selectors[0].name"),
    ({"train": {"model": "x"}}, "train.model"),
    ({"train": {"learning_rate": -1}}, "train.learning_rate"),
    ({"pairs": "/no/such/file.jsonl"}, "pairs"),
])
def test_config_errors_name_the_field(values, field):
    with pytest.raises(ConfigError) as caught:
        ArenaConfig.from_dict({"name": "a", **values}).validate()
    assert caught.value.field == field


def test_bad_types_are_refused_when_read():
    with pytest.raises(ConfigError) as caught:
        ArenaConfig.from_dict({"selectors": [{"name": "x", "rule": "top_k", "weight": 2}]})
    assert caught.value.field == "selectors[0].weight"
    with pytest.raises(ConfigError) as caught:
        ArenaConfig.from_dict({"random_seeds": [1, "two"]})
    assert caught.value.field == "random_seeds[1]"


def test_the_arena_job_runs_the_arena_command(tmp_path):
    from dpo_engine.cli import build_parser
    from dpo_engine.cli.flags import config_to_argv
    from dpo_engine.jobs import JOB_COMMANDS

    command = JOB_COMMANDS["arena"]
    argv = [*command.prefix, *config_to_argv(ArenaRequest(config="a.yaml"), positional=command.positional)]
    assert argv == ["arena", "a.yaml"]
    args = build_parser().parse_args([*argv, "--budget", "7", "--progress-file", "p.json"])
    assert args.budget == 7 and args.name is None and args.progress_file == "p.json"


TINY = {
    "budget": 16, "random_seeds": [1, 2], "model": "tiny-random", "eval_n": 4, "eval_max_new_tokens": 8,
    "device": "cpu",
    "selectors": [{"name": "dm-mul", "rule": "top_k", "params": {"score": "dm_mul"}},
                  {"name": "smallest-gap", "rule": "smallest_gap", "params": {}},
                  {"name": "alignment-potential", "rule": "alignment_potential", "params": {}}],
    "train": {"max_steps": 2, "batch_size": 4, "max_length": 128, "max_prompt_length": 64, "save_steps": 1,
              "learning_rate": 1e-2, "warmup_ratio": 0.0},
}


def tiny_arena_config(tmp_path: Path, name: str) -> ArenaConfig:
    """64 bundled UltraFeedback pairs; the bundled margins table holds them (and more, which the arena drops)."""
    pairs = tmp_path / "pairs64.jsonl"
    pairs.write_text("".join(BUNDLED_PAIRS.read_text(encoding="utf-8").splitlines(keepends=True)[:64]))
    return ArenaConfig.from_dict({**TINY, "name": name, "pairs": str(pairs)})


@pytest.mark.slow
def test_a_tiny_arena_killed_mid_way_resumes_and_reports(tmp_path, tiny_model_dir):
    from dpo_engine.arena.loop import run_arena
    from dpo_engine.arena.store import arena_events, arena_results, arena_status
    from dpo_engine.evaluation.store import load_eval

    started = time.perf_counter()
    config = tiny_arena_config(tmp_path, "tiny")
    path = tmp_path / "arena.yaml"
    path.write_text(yaml.safe_dump(config.to_dict()))
    process = subprocess.Popen(
        [sys.executable, "-c", "import sys; from dpo_engine.cli import main; sys.exit(main(sys.argv[1:]))",
         "arena", str(path)], env=os.environ.copy(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    directory = Path(os.environ["MARGIN_LAB_HOME"]) / "arenas" / "tiny"
    first_trained = directory / "contestants" / "dm-mul" / "train.json"
    deadline = time.time() + 240
    while not first_trained.exists():
        assert process.poll() is None and time.time() < deadline
        time.sleep(0.2)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert arena_status("tiny")["state"] == "interrupted"
    finished = {path: path.stat().st_mtime_ns for path in directory.glob("contestants/*/*.json")}
    assert len(finished) >= 6  # five selections and the first run's train.json

    run_arena(config)
    assert time.perf_counter() - started < 300
    assert arena_status("tiny")["state"] == "completed" and arena_status("tiny")["progress"] is None
    assert {path: path.stat().st_mtime_ns for path in finished} == finished
    done = [(event["step"], event["contestant"]) for event in arena_events("tiny") if event["event"] == "finished"]
    assert len(done) == len(set(done)) == 5 + 5 + 2  # select and train per contestant, eval, report: once each

    table, overlap, mixes = arena_results("tiny")
    names = ["dm-mul", "smallest-gap", "alignment-potential", "random-s1", "random-s2"]
    assert table.contestant.tolist() == [*names, "random (mean)"]
    assert (table.subset_size.iloc[:5] == 16).all() and (table.n.iloc[:5] == 4).all()
    assert (table.steps.iloc[:5] == 2).all() and table.final_loss.iloc[:5].notna().all()
    selections = {name: json.loads((directory / "contestants" / name / "selection.json").read_text())["pair_ids"]
                  for name in names}
    np.testing.assert_allclose(overlap.loc[names, names].to_numpy(), jaccard_matrix(selections).to_numpy())
    # The paired difference, recomputed from the saved evaluation's per-prompt preferences.
    evaluation = load_eval(json.loads((directory / "eval.json").read_text())["eval_id"])
    wide = evaluation.per_prompt.pivot(index="run_id", columns="prompt_id", values="preference")
    preferences = wide.loc[table.run_id.iloc[:5]].to_numpy(float)
    random_mean = preferences[3:].mean(axis=0)
    for row in range(3):
        assert table.vs_random[row] == pytest.approx(100 * np.mean(preferences[row] - random_mean))
    assert table.vs_random.iloc[3:].isna().all()
    assert table.win_rate.iloc[5] == pytest.approx(100 * random_mean.mean())
    assert set(mixes) == set(names) and all(abs(sum(mix["sources"].values()) - 1) < 1e-9 for mix in mixes.values())
    report = (directory / "report" / "report.md").read_text()
    assert "| dm-mul |" in report and "Jaccard" in report
    html = (directory / "report" / "arena.html").read_text()
    assert len(html) > 1_000_000 and '<script src="http' not in html  # plotly.js embedded: opens offline
    try:
        import kaleido  # noqa: F401
    except ImportError:
        assert "kaleido is not installed" in report


def test_the_arena_page_offers_the_form_and_names_a_bad_field():
    from streamlit.testing.v1 import AppTest

    page = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "dashboard" / "views" / "arena.py"),
                             default_timeout=60).run()
    assert not page.exception
    assert any("No arena yet" in info.value for info in page.info)
    page.button[0].click().run()  # Start with an empty name
    assert not page.exception
    assert any("name" in error.value for error in page.error)
