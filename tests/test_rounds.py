"""The rounds loop: pair building (hand-computed), config checks, 2 tiny rounds end to end, and resume after a kill."""

from __future__ import annotations

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

from dpo_engine.errors import ConfigError
from dpo_engine.rounds.config import RoundsConfig
from dpo_engine.rounds.pairs import build_pairs
from dpo_engine.rounds.scorers import parse_rating

TINY = {
    "model": "tiny-random", "prompts_per_round": 16, "samples_per_prompt": 2, "max_new_tokens": 8,
    "temperature": 1.0, "eval_n": 4, "eval_max_new_tokens": 8, "device": "cpu",
    "train": {"max_steps": 2, "batch_size": 4, "max_length": 128, "max_prompt_length": 64, "save_steps": 1,
              "learning_rate": 1e-3},
}


def scored(rows):
    return pd.DataFrame(rows, columns=["prompt_id", "sample", "instruction", "output", "score"])


def test_best_vs_worst_pairs_drop_ties_and_unscored_answers():
    answers = scored([
        ("p1", 0, "q1", "a", 0.5), ("p1", 1, "q1", "b", 2.0), ("p1", 2, "q1", "c", -1.0),
        ("p2", 0, "q2", "x", 1.0), ("p2", 1, "q2", "y", 1.0),
        ("p3", 0, "q3", "same", 3.0), ("p3", 1, "q3", "same", 0.0),
        ("p4", 0, "q4", "u", np.nan), ("p4", 1, "q4", "v", 1.0),
    ])
    pairs, ties = build_pairs(answers)
    assert pairs[["id", "chosen", "rejected", "score_chosen", "score_rejected"]].values.tolist() == [
        ["p1:1>2", "b", "c", 2.0, -1.0]]
    assert ties.prompt_id.tolist() == ["p2", "p3", "p4"]
    assert ties.reason.tolist()[1] == "identical answers"


def test_all_pairs_orders_each_pair_by_score_and_respects_the_tolerance():
    answers = scored([("p1", 0, "q", "a", 0.5), ("p1", 1, "q", "b", 2.0), ("p1", 2, "q", "c", 0.6)])
    pairs, ties = build_pairs(answers, "all_pairs", tie_tolerance=0.2)
    assert pairs.id.tolist() == ["p1:1>0", "p1:1>2"]
    assert ties[["sample_a", "sample_b"]].values.tolist() == [[2, 0]]  # 0.6 - 0.5 <= 0.2


def test_parse_rating():
    assert parse_rating("8") == 8.0
    assert parse_rating("Rating: 10/10") == 10.0
    assert np.isnan(parse_rating("excellent"))


@pytest.mark.parametrize("values, field", [
    ({"name": "x", "typo": 1}, "typo"),
    ({"name": "x", "selection_params": {"frac": 0.25, "part": "top"}}, "selection_params.part"),
    ({"name": "x", "train": {"model": "other"}}, "train.model"),
    ({"name": "x", "train": {"learning_rate": "fast"}}, "train.learning_rate"),
    ({"name": "x", "samples_per_prompt": 1}, "samples_per_prompt"),
    ({"name": "x", "prompts_per_round": 1000, "rounds": 2}, "prompts"),
    ({"name": "bad name"}, "name"),
])
def test_config_errors_name_the_field(values, field):
    with pytest.raises(ConfigError) as error:
        RoundsConfig.from_dict(values).validate()
    assert error.value.field == field


def test_cli_reports_a_bad_config_with_exit_2(tmp_path, capsys):
    from dpo_engine.cli import main

    path = tmp_path / "loop.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "selection_rule": "best"}))
    assert main(["rounds", str(path)]) == 2
    assert "selection_rule" in capsys.readouterr().err


@pytest.mark.slow
def test_two_tiny_rounds_end_to_end_with_round_two_margins_from_round_one_policy(tiny_model_dir):
    from dpo_engine.margins.scoring import implicit_margins
    from dpo_engine.rounds.engine import load_round_pairs
    from dpo_engine.rounds.loop import run_loop
    from dpo_engine.rounds.store import round_summary
    from dpo_engine.runs import get_run

    started = time.perf_counter()
    directory = run_loop(RoundsConfig.from_dict({**TINY, "name": "dm", "rounds": 2}))
    assert time.perf_counter() - started < 300
    summary = round_summary("dm")
    assert summary["round"].tolist() == [1, 2] and summary.steps_done.tolist() == [8, 8]
    assert (summary.selected == np.floor(0.25 * summary.pairs)).all()
    for number in (1, 2):
        folder = directory / f"round-{number:02d}"
        assert len(pd.read_parquet(folder / "responses.parquet")) == 16 * 2
        assert get_run(summary.run_id[number - 1]).state == "completed"
        evaluation = json.loads((folder / "eval.json").read_text())
        assert evaluation["n"] == 4 and evaluation["ci_low"] <= evaluation["win_rate"] <= evaluation["ci_high"]

    round_one_adapter = json.loads((directory / "round-01" / "train.json").read_text())["adapter"]
    assert json.loads((directory / "round-01" / "margins.json").read_text())["policy_adapter"] is None
    assert json.loads((directory / "round-02" / "margins.json").read_text())["policy_adapter"] == round_one_adapter
    pairs = load_round_pairs(directory / "round-02" / "pairs.jsonl")
    stored = pd.read_parquet(directory / "round-02" / "margins.parquet")
    expected = implicit_margins(pairs, round_one_adapter, device="cpu", max_length=128, max_prompt_length=64)
    np.testing.assert_allclose(stored.implicit_margin, expected.implicit_margin, rtol=1e-5, atol=1e-6)
    assert np.abs(stored.implicit_margin).max() > 0  # not the base model's (all-zero) margins
    # Stack mode: round 2 trains on round 1's policy, merged.
    assert json.loads((directory / "round-02" / "policy.json").read_text())["train_base"].endswith("policy_merged")


@pytest.mark.slow
def test_a_killed_loop_resumes_without_redoing_finished_steps(tmp_path, tiny_model_dir):
    from dpo_engine.rounds.loop import run_loop
    from dpo_engine.rounds.store import STEP_FILES, loop_events, loop_status, round_dir

    config = RoundsConfig.from_dict({**TINY, "name": "killed", "rounds": 1})
    path = tmp_path / "loop.yaml"
    path.write_text(yaml.safe_dump(config.to_dict()))
    process = subprocess.Popen(
        [sys.executable, "-c", "import sys; from dpo_engine.cli import main; sys.exit(main(sys.argv[1:]))",
         "rounds", str(path)], env=os.environ.copy(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    folder = round_dir(Path(os.environ["MARGIN_LAB_HOME"]) / "rounds" / "killed", 1)
    deadline = time.time() + 180
    while not (folder / "scores.parquet").exists():
        assert process.poll() is None and time.time() < deadline
        time.sleep(0.2)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert loop_status("killed")["state"] == "interrupted"
    finished = {name: (folder / name).stat().st_mtime_ns for name in STEP_FILES.values() if (folder / name).exists()}
    assert {"policy.json", "responses.parquet", "scores.parquet"} <= set(finished)

    run_loop(config)
    assert loop_status("killed")["state"] == "completed" and loop_status("killed")["progress"] is None  # no stale count
    assert {name: (folder / name).stat().st_mtime_ns for name in finished} == finished
    done = [(event["round"], event["step"]) for event in loop_events("killed") if event["event"] == "finished"]
    assert len(done) == len(set(done)) == 8  # each step finished exactly once, across both processes


def test_cut_check_flags_a_top_k_cut_inside_tied_scores():
    from dpo_engine.rounds.loop import cut_check

    config = RoundsConfig(name="x")
    saturated = pd.DataFrame({"pair_id": ["a", "b", "c", "d"], "dm_mul": [1.0, 1.0, 1.0, 0.5]})
    distinct = saturated.assign(dm_mul=[0.9, 0.8, 0.7, 0.5])
    assert cut_check(config, saturated, ["a"]) == {"score": "dm_mul", "distinct_values": 2, "tied_at_cut": True}
    assert cut_check(config, distinct, ["a"])["tied_at_cut"] is False
    assert cut_check(RoundsConfig(name="x", selection_rule="all", selection_params={}), saturated,
                     ["a", "b", "c", "d"])["tied_at_cut"] is False


def test_cli_flags_override_the_yaml_and_absent_flags_keep_it(tmp_path):
    from dpo_engine.cli import build_parser
    from dpo_engine.cli.rounds import OVERRIDABLE
    from dpo_engine.cli.yaml_job import yaml_config_with_flags
    from dpo_engine.rounds.config import RoundsConfig

    path = tmp_path / "loop.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "rounds": 5, "samples_per_prompt": 3}))
    args = build_parser().parse_args(["rounds", str(path), "--rounds", "6"])
    config = yaml_config_with_flags(RoundsConfig, args, OVERRIDABLE)
    assert (config.rounds, config.samples_per_prompt, config.prompts_per_round) == (6, 3, 64)


def test_chat_rater_scores_each_answer_through_an_openai_compatible_endpoint():
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from dpo_engine.rounds.scorers import ChatRater

    class Endpoint(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            answer = body["messages"][1]["content"].split("Answer:\n")[1].split("\n\n")[0]
            if answer == "bad request":
                self.send_response(400)
                self.end_headers()
                return
            reply = {"choices": [{"message": {"content": "9" if answer == "good" else "no idea"}}]}
            self.send_response(200)
            self.end_headers()
            self.wfile.write(json.dumps(reply).encode())

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Endpoint)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        rater = ChatRater(f"http://127.0.0.1:{server.server_port}/v1", "stub", max_retries=0)
        scores = rater.score(["q", "q", "q"], ["good", "vague", "bad request"])
    finally:
        server.shutdown()
    assert scores[0] == 9.0 and np.isnan(scores[1]) and np.isnan(scores[2])


def test_fresh_mode_trains_each_round_on_the_base_and_scores_with_the_last_adapter(tmp_path):
    from dpo_engine.files import atomic_write_json
    from dpo_engine.rounds.loop import _policy_step

    config = RoundsConfig(name="fresh", model="tiny-random", adapter_mode="fresh")
    previous = tmp_path / "round-01"
    atomic_write_json(previous / "policy.json", {"round": 1, "policy": "tiny-random", "policy_adapter": None,
                                                 "reference": "tiny-random", "train_base": "tiny-random"})
    atomic_write_json(previous / "train.json", {"run_id": "r1", "adapter": "/runs/r1/adapter"})
    _policy_step(config, tmp_path, 2, None)
    record = json.loads((tmp_path / "round-02" / "policy.json").read_text())
    assert record == {"round": 2, "policy": "/runs/r1/adapter", "policy_adapter": "/runs/r1/adapter",
                      "reference": "tiny-random", "train_base": "tiny-random"}
    assert not (previous / "policy_merged").exists()
