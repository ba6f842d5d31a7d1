"""Run annotations on disk, sweep grids and EMA smoothing, against hand-computed values."""

import numpy as np
import pytest

from dpo_engine.runs import annotations, smoothing, sweeps


def test_tags_and_notes_round_trip_in_the_run_directory(tmp_path):
    assert annotations.read_annotations(tmp_path) == annotations.Annotations()
    tags = annotations.parse_tags("baseline, dm-mul  lr=1e-5,baseline sweep:ab12")
    assert tags == ("baseline", "dm-mul", "lr=1e-5", "sweep:ab12")
    annotations.write_annotations(tmp_path, annotations.Annotations(tags=tags, notes="first try"))
    assert (tmp_path / "annotations.json").exists()
    read = annotations.read_annotations(tmp_path)
    assert read.tags == tags and read.notes == "first try" and read.sweep == "ab12"


def test_a_bad_tag_names_the_field():
    with pytest.raises(annotations.AnnotationError, match="tags: 'ça'"):
        annotations.parse_tags("ok, ça")


def test_parse_values_casts_to_the_field_type():
    assert sweeps.parse_values("learning_rate", "1e-5, 5e-6", 5e-7) == [1e-5, 5e-6]
    assert sweeps.parse_values("lora_r", "8,16", 8) == [8, 16]
    assert sweeps.parse_values("lora_r", "", 8) == [8]
    with pytest.raises(sweeps.SweepError, match="sweep field lora_r: 'big'"):
        sweeps.parse_values("lora_r", "big", 8)


def test_expand_sweep_is_the_grid_times_the_selections():
    base = {"loss": "dpo", "learning_rate": 5e-7, "loss_params": {"beta": 0.1}}
    grid = {"learning_rate": [1e-5, 5e-6], "loss_params.beta": [0.1, 0.3], "lora_r": [8]}
    points = sweeps.expand_sweep(base, grid, ["top-k-dm_mul-10pct", "random-10pct"])
    assert len(points) == 8
    first = points[0]
    assert first.config == {"loss": "dpo", "learning_rate": 1e-5, "loss_params": {"beta": 0.1}, "lora_r": 8}
    assert first.overrides == {"learning_rate": 1e-5, "loss_params.beta": 0.1}
    assert first.label == "learning_rate=1e-05 beta=0.1 on top-k-dm_mul-10pct"
    assert {(p.selection, p.config["learning_rate"], p.config["loss_params"]["beta"]) for p in points} == {
        (s, lr, b) for s in ("top-k-dm_mul-10pct", "random-10pct") for lr in (1e-5, 5e-6) for b in (0.1, 0.3)
    }
    assert base["loss_params"] == {"beta": 0.1}  # the base config is not modified


def test_expand_sweep_refuses_an_oversized_grid():
    with pytest.raises(sweeps.SweepError, match="more than 64"):
        sweeps.expand_sweep({}, {"seed": list(range(65))}, ["a"])


def test_ema_by_hand():
    # weight 0.5: s0 = 0.5*2 / (1-0.5) = 2; s1 = (0.5*1 + 0.5*4) / 0.75 = 3.333...; NaN is skipped and kept.
    smoothed = smoothing.ema(np.array([2.0, np.nan, 4.0]), 0.5)
    assert smoothed[0] == pytest.approx(2.0)
    assert np.isnan(smoothed[1])
    assert smoothed[2] == pytest.approx(2.5 / 0.75)
    assert np.allclose(smoothing.ema(np.array([1.0, 5.0]), 0.0), [1.0, 5.0])


def test_cli_launch_stores_tags_and_a_bad_tag_creates_no_run(workspace, tmp_path, monkeypatch, capsys):
    from dpo_engine.cli import main
    from dpo_engine import runs

    monkeypatch.setattr(runs, "launch", lambda run_id: None)  # the run directory is what is tested, not training
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
    config = tmp_path / "config.yaml"
    config.write_text(f"model: tiny-random\nsubset: {pairs}\nmax_steps: 2\n")
    assert main(["runs", "launch", str(config), "--tags", "sweep:sw01,baseline"]) == 0
    run_id = capsys.readouterr().out.strip()
    stored = annotations.read_annotations(runs.get_run(run_id).run_dir)
    assert stored.tags == ("sweep:sw01", "baseline") and stored.sweep == "sw01"
    assert main(["runs", "show", run_id]) == 0
    assert "  tags: sweep:sw01, baseline" in capsys.readouterr().out.splitlines()
    assert main(["runs", "launch", str(config), "--tags", "no/slash"]) == 2
    assert "tags: 'no/slash'" in capsys.readouterr().err
    assert [run.run_id for run in runs.list_runs()] == [run_id]
