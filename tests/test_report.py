"""Evaluations end to end on the tiny model: two trained runs, a deterministic judge, saved results, figure, CLI."""

from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import pytest
import torch

from dpo_engine import runs
from dpo_engine.cli import eval as eval_cli
from dpo_engine.cli import main
from dpo_engine.errors import ConfigError
from dpo_engine.evaluation import report
from dpo_engine.evaluation.generation import (
    GenerationSettings,
    generate,
    load_eval_prompts,
)
from dpo_engine.evaluation.judges import OpenAIChatJudge, ScoreFunctionJudge
from dpo_engine.evaluation.metrics import (
    bootstrap_ci,
    length_controlled_win_rate,
    mean_length,
    paired_difference,
    win_rate,
)
from dpo_engine.models.loading import DEFAULT_MODEL, TINY_MODEL

# Sampling: the tiny random model's greedy answers are newlines only, the same for every run.
SETTINGS = GenerationSettings(max_new_tokens=12, batch_size=3, temperature=1.0, seed=0)
PAIRS = [
    {"prompt": f"Tell me about {topic}.", "chosen": f"{topic.title()} are interesting, and here is why. " * 2,
     "rejected": f"{topic}?"}
    for topic in ["cats", "dogs", "boats", "trees", "clouds", "rivers", "songs", "maps"]
]
INSTRUCTIONS = ["Name a colour.", "What is two plus two?", "Write a haiku about rain.", "Hi", "List three fruits.",
                "Why is the sky blue?"]


def alnum_score(prompts, responses) -> np.ndarray:
    """A deterministic content score: half a logit per ASCII letter or digit."""
    return np.array([0.5 * sum(char.isascii() and char.isalnum() for char in response) for response in responses])


def fake_judge() -> ScoreFunctionJudge:
    return ScoreFunctionJudge(alnum_score, name="alnum-judge", description="counts ASCII letters and digits (test)",
                              extra={"heldout_agreement": 0.75})


@pytest.fixture(scope="module")
def shared_home(tmp_path_factory):
    return tmp_path_factory.mktemp("margin_lab_home")


@pytest.fixture
def workspace(shared_home, monkeypatch):
    """Overrides conftest's per-test workspace: the tests here share the module's two trained runs."""
    monkeypatch.setenv("MARGIN_LAB_HOME", str(shared_home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return shared_home


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny-model ops are dominated by thread synchronisation on a busy 2-core machine: run single-threaded."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield previous
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def trained_runs(shared_home, tmp_path_factory, one_torch_thread) -> list[str]:
    """Two runs on the tiny model through dpo_engine.runs + dpo_engine.training: 2 steps each, dpo and simpo."""
    subset = tmp_path_factory.mktemp("data") / "pairs.jsonl"
    subset.write_text("".join(json.dumps(pair) + "\n" for pair in PAIRS))
    run_ids = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MARGIN_LAB_HOME", str(shared_home))
        for loss in ("dpo", "simpo"):
            run_id = runs.create_run({
                "model": TINY_MODEL, "subset": str(subset), "loss": loss, "max_steps": 2, "batch_size": 4,
                "learning_rate": 0.05, "warmup_ratio": 0.0, "lr_scheduler": "constant", "max_length": 128,
                "max_prompt_length": 64,
            })
            assert runs.run_foreground(run_id)["state"] == "completed"
            run_ids.append(run_id)
    return run_ids


@pytest.fixture
def prompts(tmp_path) -> pd.DataFrame:
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(
        json.dumps({"id": f"q{i}", "instruction": text, "reference_output": f"A reference answer number {i}."}) + "\n"
        for i, text in enumerate(INSTRUCTIONS)
    ))
    return load_eval_prompts(path)


def test_two_run_evaluation_matches_metrics_recomputed_from_per_prompt(trained_runs, prompts):
    first, second = trained_runs
    stages = []
    result = report.evaluate(trained_runs, judge=fake_judge(), prompts=prompts, settings=SETTINGS, eval_name="e2e",
                             progress=lambda stage, done, total: stages.append(stage))
    assert {path.name for path in result.directory.iterdir()} == {
        "results.csv", "per_prompt.parquet", "judgements.jsonl", "meta.json"}
    assert any(stage.startswith("generating") for stage in stages) and stages[-1] == "judging"

    per_prompt, results = result.per_prompt, result.results.set_index("run_id")
    assert list(results.index) == trained_runs
    base_outputs = generate(TINY_MODEL, None, prompts, SETTINGS).output.tolist()
    for run_id in trained_runs:
        rows = per_prompt[per_prompt.run_id == run_id]
        assert rows.prompt_id.tolist() == prompts.prompt_id.tolist()
        assert rows.baseline_output.tolist() == base_outputs
        logits = alnum_score(None, rows.output) - alnum_score(None, rows.baseline_output)
        np.testing.assert_allclose(rows.preference, 1 / (1 + np.exp(-logits)))

        p = rows.preference.to_numpy()
        row = results.loc[run_id]
        expected = win_rate(p)
        for column in ("win_rate", "standard_error", "discrete_win_rate", "n", "n_failed", "n_wins"):
            assert row[column] == pytest.approx(expected[column], nan_ok=True)
        assert (row.ci_low, row.ci_high) == pytest.approx(bootstrap_ci(p, n_resamples=2000, seed=0))
        lc = length_controlled_win_rate(p, rows.output.str.len(), rows.baseline_output.str.len())
        assert row.lc_win_rate == pytest.approx(lc["lc_win_rate"])
        assert row.mean_length == pytest.approx(mean_length(rows.output.tolist()))
        assert row.baseline_mean_length == pytest.approx(mean_length(base_outputs))
        assert row.judge == "alnum-judge" and row.judge_agreement == 0.75 and row.baseline == "base"
        assert row.subset_size == len(PAIRS) and row.model == TINY_MODEL
    assert results.loss.tolist() == ["dpo", "simpo"]
    assert per_prompt[per_prompt.run_id == first].output.tolist() != \
        per_prompt[per_prompt.run_id == second].output.tolist()

    paired = paired_difference(per_prompt[per_prompt.run_id == second].preference.to_numpy(),
                               per_prompt[per_prompt.run_id == first].preference.to_numpy())
    assert results.loc[second, "paired_vs"] == first
    assert results.loc[second, "paired_difference"] == pytest.approx(paired["difference"])
    assert results.loc[second, ["paired_ci_low", "paired_ci_high"]].tolist() == pytest.approx([paired["low"], paired["high"]])
    assert results.loc[first, "paired_vs"] == "" and np.isnan(results.loc[first, "paired_difference"])

    lines = [json.loads(line) for line in (result.directory / "judgements.jsonl").read_text().splitlines()]
    assert len(lines) == 2 * len(prompts) and {"run_id", "prompt_id", "preference", "raw"} <= set(lines[0])
    assert result.meta["judge"]["description"] == "counts ASCII letters and digits (test)"
    assert result.meta["settings"] == SETTINGS.to_dict()
    assert result.meta["resolved_settings"] == {**SETTINGS.to_dict(), "dtype": "fp32", "device": "cpu"}
    assert result.meta["prompt_set"]["prompt_ids"] == prompts.prompt_id.tolist()
    assert "offline" in result.meta["notes"]["lc_win_rate"]

    reloaded = report.load_eval(result.eval_id)
    pd.testing.assert_frame_equal(reloaded.results, result.results)
    assert result.eval_id in report.list_evals().eval_id.tolist()


def test_win_rate_figure_has_one_bar_per_run_with_ci_error_bars(trained_runs, prompts):
    result = report.evaluate(trained_runs, judge=fake_judge(), prompts=prompts, settings=SETTINGS)
    results = result.results
    figure = report.win_rate_figure(results, title="tiny")
    [bars] = [trace for trace in figure.data if trace.type == "bar"]
    assert len(bars.x) == len(trained_runs)
    np.testing.assert_allclose(bars.y, results.win_rate)
    np.testing.assert_allclose(np.asarray(bars.y) + np.asarray(bars.error_y.array), results.ci_high)
    np.testing.assert_allclose(np.asarray(bars.y) - np.asarray(bars.error_y.arrayminus), results.ci_low)
    [markers] = [trace for trace in figure.data if trace.type == "scatter"]
    np.testing.assert_allclose(markers.y, results.lc_win_rate)
    assert any(shape.y0 == 50 for shape in figure.layout.shapes)
    assert list(figure.layout.xaxis.ticktext) == results.variant.tolist()

    forest = report.paired_figure(results)
    assert len(forest.data[0].x) == len(trained_runs) - 1


def test_reference_baseline_uses_the_prompts_reference_answers(trained_runs, prompts):
    result = report.evaluate(trained_runs[:1], judge=fake_judge(), prompts=prompts, settings=SETTINGS,
                             baseline="reference")
    assert result.per_prompt.baseline_output.tolist() == prompts.reference_output.tolist()
    assert result.results.baseline.tolist() == ["reference"]

    without_references = prompts.assign(reference_output="")
    with pytest.raises(ConfigError, match="reference output"):
        report.evaluate(trained_runs[:1], judge=fake_judge(), prompts=without_references, baseline="reference")


def test_export_results_csv_across_evaluations(trained_runs, prompts, tmp_path):
    ids = [report.evaluate(trained_runs, judge=fake_judge(), prompts=prompts, settings=SETTINGS, eval_name=name).eval_id
           for name in ("one", "two")]
    path = report.export_results_csv(tmp_path / "all.csv", eval_ids=ids)
    table = pd.read_csv(path)
    assert len(table) == 2 * len(trained_runs)
    assert table.eval_id.tolist() == [ids[0]] * 2 + [ids[1]] * 2
    assert table.eval_name.tolist() == ["one", "one", "two", "two"]


def test_cli_eval_prints_the_results_table(trained_runs, prompts, tmp_path, monkeypatch, capsys):
    prompts_file = tmp_path / "cli_prompts.jsonl"
    prompts_file.write_text("".join(json.dumps({"id": r.prompt_id, "instruction": r.instruction}) + "\n"
                                    for r in prompts.itertuples()))
    monkeypatch.setattr(eval_cli, "make_judge", lambda spec: fake_judge())
    progress_file = tmp_path / "progress.json"
    code = main(["eval", *trained_runs, "--prompts", str(prompts_file), "--max-new-tokens", "12", "--batch-size", "3",
                 "--temperature", "1.0", "--name", "from-cli", "--progress-file", str(progress_file)])
    assert code == 0
    out = capsys.readouterr().out
    assert all(run_id in out for run_id in trained_runs) and "win rate %" in out
    assert "generation: cpu, fp32, 3 slots, up to 12 new tokens, temperature 1, top-p 1" in out
    assert json.loads(progress_file.read_text())["state"] == "completed"
    saved = report.list_evals()
    assert "from-cli" in saved.name.tolist()

    assert main(["eval", "no-such-run-20260101-000000-abcd", "--prompts", str(prompts_file)]) == 2
    assert "no run" in capsys.readouterr().err


def test_judge_specs():
    judge = eval_cli.make_judge("openai:http://localhost:8000/v1:org/model:8b")
    assert isinstance(judge, OpenAIChatJudge)
    assert (judge.url, judge.model) == ("http://localhost:8000/v1/chat/completions", "org/model:8b")
    assert eval_cli.make_judge("openai:https://api.example.com:gpt-4o").url == "https://api.example.com/chat/completions"
    with pytest.raises(ConfigError) as error:
        eval_cli.make_judge("gpt4")
    assert error.value.field == "judge"


def test_offline_judge_is_a_described_stand_in():
    if not report.JUDGE_ARTIFACT.exists():
        pytest.skip(f"{report.JUDGE_ARTIFACT} not built yet")
    judge = report.offline_judge()
    assert "stand-in" in judge.description.lower()
    assert 0.5 < judge.extra["heldout_agreement"] <= 1


@pytest.mark.slow
def test_default_model_answers_bundled_prompts_and_offline_judge_scores_them(tmp_path, monkeypatch, one_torch_thread):
    monkeypatch.setenv("MARGIN_LAB_HOME", str(tmp_path))  # a fresh generation cache: really generate
    prompts = load_eval_prompts(n=8, seed=0)
    # 16 tokens: enough for a non-empty answer the judge can score; the throughput is bench_generation's to measure.
    settings = GenerationSettings(max_new_tokens=16, batch_size=8)
    torch.set_num_threads(one_torch_thread)  # the real model wants every core
    try:
        started = time.perf_counter()
        outputs = generate(DEFAULT_MODEL, None, prompts, settings)
        seconds = time.perf_counter() - started
    finally:
        torch.set_num_threads(1)
    tokens = int(outputs.output_tokens.sum())
    print(f"\n{DEFAULT_MODEL}: 8 prompts, {tokens} tokens in {seconds:.1f} s = {tokens / seconds:.1f} tokens/s (batch 8)")
    assert (outputs.output.str.len() > 0).all()

    judged = report.offline_judge().judge(prompts.instruction.tolist(), outputs.output.tolist(),
                                          prompts.reference_output.tolist())
    assert np.isfinite(judged.preferences).all() and ((judged.preferences >= 0) & (judged.preferences <= 1)).all()
    print(f"offline judge vs GPT-4 Turbo references: win rate {win_rate(judged.preferences)['win_rate']:.1f}%")
