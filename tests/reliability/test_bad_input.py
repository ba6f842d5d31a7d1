"""Bad input, finished: YAML alias bombs, list elements, numeric bounds, names that escape, silent overwrites,
dataset text in markdown."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest
from markdown_it import MarkdownIt

from dashboard.components import escape_markdown
from dpo_engine.cli import main
from dpo_engine.errors import ConfigError, UserError
from dpo_engine.paths import check_name
from dpo_engine.runs.processes import engine_environment
from dpo_engine.selection.store import Selection, SelectionExists, list_selections, save_selection, selection_path
from dpo_engine.training.config import TrainConfig

ALIAS_BOMB = "\n".join(
    ["a: &a [x, x, x, x, x, x, x, x, x]"]
    + [f"{chr(98 + k)}: &{chr(98 + k)} [*{chr(97 + k)}, *{chr(97 + k)}, *{chr(97 + k)}, *{chr(97 + k)}]" for k in range(8)]
)


def test_a_yaml_alias_bomb_in_a_list_field_is_refused_at_once(tmp_path, capsys):
    config = tmp_path / "bomb.yaml"
    config.write_text("model: tiny-random\nsubset: pairs.jsonl\nreport_to:\n  - &x tensorboard\n  - *x\n")
    with pytest.raises(UserError, match="YAML aliases"):
        TrainConfig.from_yaml(config)

    nested = "\n".join(f"  {line}" for line in ALIAS_BOMB.splitlines())
    config.write_text(f"model: tiny-random\nreport_to:\n  - x\nextra:\n{nested}\n")
    started = time.monotonic()
    assert main(["runs", "launch", str(config)]) == 2
    assert time.monotonic() - started < 5 and "YAML aliases" in capsys.readouterr().err


@pytest.mark.parametrize(("values", "field"), [
    ({"report_to": ["tensorboard", 3]}, "report_to[1]"),
    ({"report_to": [["nested"]]}, "report_to[0]"),
    ({"lora_target_modules": ["q_proj", None]}, "lora_target_modules[1]"),
    ({"lora_target_modules": 5}, "lora_target_modules"),
    ({"max_steps": "1e12"}, "max_steps"),
    ({"learning_rate": 1e300}, "learning_rate"),
    ({"batch_size": 10**9}, "batch_size"),
    ({"seed": -1}, "seed"),
])
def test_list_elements_and_numeric_bounds_are_checked_naming_the_field(values, field):
    with pytest.raises(ConfigError) as refused:
        TrainConfig.from_dict({"model": "tiny-random", **values})
    assert refused.value.field == field and f"'{field}'" in str(refused.value)


def test_sane_values_still_load():
    config = TrainConfig.from_dict({"report_to": ["tensorboard"], "lora_target_modules": ["q_proj", "v_proj"],
                                    "max_steps": "200", "learning_rate": "5e-5"})
    assert (config.max_steps, config.learning_rate, config.report_to) == (200, 5e-5, ["tensorboard"])


@pytest.mark.parametrize("name", ["../evil", "a/b", "..", "", " padded", "x" * 81, "new\nline", "C:\\x", ".hidden"])
def test_one_naming_rule_refuses_names_that_could_escape(name):
    with pytest.raises(UserError, match="is not allowed: use 1 to 80 letters"):
        check_name(name, "selection name")


@pytest.mark.parametrize("name", ["dm-mul-2k", "Baseline run", "bees.pos_10"])
def test_one_naming_rule_accepts_ordinary_names(name):
    assert check_name(name) == name


def test_every_selection_file_stays_inside_the_workspace(workspace):
    for name in ("../../outside", "/etc/passwd", "a/../../b"):
        assert selection_path(name).parent == workspace / "selections"


def selection(name: str, ids: list[str]) -> Selection:
    return Selection(name=name, rule="manual", params={}, dataset_fingerprint=None, pair_ids=ids)


def test_concurrent_saves_under_one_name_keep_exactly_one(workspace):
    outcomes, barrier = [], threading.Barrier(8)

    def save(number: int) -> None:
        barrier.wait()
        try:
            save_selection(selection("same", [str(number)]))
            outcomes.append(("saved", number))
        except SelectionExists:
            outcomes.append(("refused", number))

    threads = [threading.Thread(target=save, args=(number,)) for number in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    saved = [number for outcome, number in outcomes if outcome == "saved"]
    assert len(saved) == 1 and len(outcomes) == 8
    assert [item.pair_ids for item in list_selections()] == [[str(saved[0])]]  # the winner's file, whole


def test_names_that_sanitise_to_one_file_collide_loudly_and_overwrite_is_explicit(workspace):
    save_selection(selection("a/b", ["1"]))
    with pytest.raises(SelectionExists, match="already exists"):
        save_selection(selection("a_b", ["2"]))
    save_selection(selection("a_b", ["2"]), overwrite=True)
    assert [item.name for item in list_selections()] == ["a_b"]


def test_two_cli_selects_at_once_one_wins_and_the_other_says_so(workspace, tmp_path):
    table = tmp_path / "margins.csv"
    table.write_text("pair_id,external_margin\n" + "".join(f"p{k},{k}\n" for k in range(20)))
    command = [sys.executable, "-c", "import sys; from dpo_engine.cli import main; sys.exit(main())", "select", str(table), "--rule", "top_k", "--score",
               "external_margin", "--k", "5", "--name", "same"]
    env = {**engine_environment(), "MARGIN_LAB_HOME": str(workspace)}
    processes = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
    results = sorted((process.wait(timeout=120), process.stderr.read()) for process in processes)
    assert [code for code, _ in results] == [0, 2]
    assert "already exists" in results[1][1]
    assert subprocess.run([*command, "--overwrite"], env=env, timeout=120).returncode == 0
    refused = subprocess.run([*command[:-1], "../evil"], env=env, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "is not allowed" in refused.stderr
    assert not (workspace.parent / "evil.json").exists()


@pytest.mark.parametrize("text", [
    "id`<img src=x>` ![tracker](http://evil.example/p.png)",
    "[click](http://evil.example) **bold** `code`",
    "x` ![i](http://evil.example/i.png) `",
])
def test_dataset_text_cannot_become_markup(text):
    rendered = MarkdownIt("commonmark").render(f"**Pair {escape_markdown(text)}** · source row 3")
    assert "<img" not in rendered and "<a " not in rendered and "<code>" not in rendered
    assert rendered.count("<strong>") == 1
    assert "evil.example" in rendered  # shown as text, not dropped
