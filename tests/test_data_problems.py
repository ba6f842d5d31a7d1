"""Every problem of a file at once (unusable rows included), the listing cap, and "drop the invalid rows"
(`load_pairs(drop_invalid=True)`, ``--drop-invalid``) with the rows left out recorded in a selection's provenance.

The files are shaped like Hub preference sets (UltraFeedback-binarized rows: a prompt, chosen and rejected as
message lists, scores), with a few broken rows written by hand.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest

from dpo_engine.cli import main
from dpo_engine.data.pairs import ISSUE_LIST_CAP, InvalidRowsError, load_pairs, validate_source
from dpo_engine.data.report import ValidationReport
from dpo_engine.errors import DataError
from dpo_engine.margins.table import save_margins_table
from dpo_engine.selection.store import Selection, load_selection, save_selection


def hub_row(number: int, **changes) -> dict:
    """One UltraFeedback-binarized-shaped row."""
    prompt = f"Question {number}: what is {number} + {number}?"
    row = {
        "prompt": prompt,
        "prompt_id": f"p{number:04d}",
        "chosen": [{"role": "user", "content": prompt}, {"role": "assistant", "content": f"It is {2 * number}."}],
        "rejected": [{"role": "user", "content": prompt}, {"role": "assistant", "content": "No idea."}],
        "score_chosen": 8.0,
        "score_rejected": 3.0,
    }
    row.update(changes)
    return {key: value for key, value in row.items() if value is not DELETE}


DELETE = object()


def broken_file(path):
    """Rows 0 and 5 fine; 1 has no chosen; 2 a number as rejected; 3 an empty prompt (a warning only); 4 is a
    line that is not JSON."""
    lines = [
        json.dumps(hub_row(0)),
        json.dumps(hub_row(1, chosen=DELETE)),
        json.dumps(hub_row(2, rejected=42)),
        json.dumps(hub_row(3, prompt="", chosen="Hello there", rejected="Go away")),
        '{"prompt": "Broken", "chosen": "a", "rejected": ',
        json.dumps(hub_row(5)),
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_every_unusable_row_is_listed_at_once(tmp_path):
    path = broken_file(tmp_path / "prefs.jsonl")
    with pytest.raises(InvalidRowsError) as caught:
        load_pairs(path)
    error = caught.value
    # located at the first bad row, as a single-problem error would be, and counting the others
    assert (error.file, error.row, error.column, error.code) == (str(path), 1, "chosen", "wrong_type")
    assert "and 2 more unusable row(s)" in str(error) and "--drop-invalid" in str(error)
    report = ValidationReport.from_error(error)
    assert [(issue.row, issue.column, issue.code) for issue in report.errors] == [
        (1, "chosen", "wrong_type"), (2, "rejected", "wrong_type"), (4, None, "malformed_json"),
    ]
    assert "got a number (42)" in report.errors[1].message
    assert report.errors[2].message.startswith("line 5 is not valid JSON")
    assert report.error_counts == {"wrong_type": 2, "malformed_json": 1}
    assert report.invalid_rows == [1, 2, 4]
    assert report.n_pairs == 3 and report.droppable  # rows 0, 3 and 5 are usable
    assert [(issue.row, issue.code) for issue in report.warnings] == [(3, "empty_prompt")]


def test_validate_source_reports_the_same_problems(tmp_path):
    path = broken_file(tmp_path / "prefs.jsonl")
    with pytest.raises(InvalidRowsError) as streamed:
        validate_source(path)
    with pytest.raises(InvalidRowsError) as loaded:
        load_pairs(path)
    assert streamed.value.report.to_dict() == loaded.value.report.to_dict()


def test_a_file_level_problem_is_one_error_and_cannot_be_dropped(tmp_path):
    path = tmp_path / "prefs.jsonl"
    path.write_text(json.dumps({"prompt": "p", "good": "a", "rejected": "b"}) + "\n", encoding="utf-8")
    with pytest.raises(DataError) as caught:
        load_pairs(path, drop_invalid=True)
    report = ValidationReport.from_error(caught.value)
    assert len(report.errors) == 1 and not report.droppable
    assert "columns=" not in str(caught.value)  # no Python advice: the flag and the page's drop-downs instead
    assert "--chosen-col" in str(caught.value) and "drop-downs on the Data page" in str(caught.value)


def test_the_listing_stops_at_the_cap_but_the_counts_do_not(tmp_path):
    path = tmp_path / "prefs.jsonl"
    bad = ISSUE_LIST_CAP + 50
    lines = [json.dumps(hub_row(0))] + [json.dumps(hub_row(n, rejected=n)) for n in range(1, bad + 1)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(InvalidRowsError) as caught:
        load_pairs(path)
    report = caught.value.report
    assert len(report.errors) == ISSUE_LIST_CAP
    assert report.error_counts == {"wrong_type": bad}
    assert report.invalid_rows == list(range(1, bad + 1))
    payload = report.to_dict()
    assert payload["errors_listed_cap"] == ISSUE_LIST_CAP and len(payload["errors"]) == ISSUE_LIST_CAP


def test_drop_invalid_loads_only_the_valid_rows_and_says_which_were_left_out(tmp_path):
    loaded = load_pairs(broken_file(tmp_path / "prefs.jsonl"), drop_invalid=True)
    pairs, report = loaded.pairs, loaded.report
    assert pairs["row"].tolist() == [0, 3, 5]
    assert pairs["chosen"].tolist() == ["It is 0.", "Hello there", "It is 10."]
    assert pairs["warnings"].tolist() == ["", "empty_prompt", ""]  # warnings stay on their own (data) rows
    assert report.errors == [] and report.dropped and report.n_pairs == 3
    assert report.invalid_rows == [1, 2, 4]
    assert [issue.row for issue in report.dropped_issues] == [1, 2, 4]
    assert report.dropped_provenance() == {
        "dropped_rows": [1, 2, 4], "dropped_count": 3,
        "dropped_reason": "rows that cannot be used were left out when loading (2 wrong type, 1 malformed json)",
    }
    assert load_pairs(tmp_path / "prefs.jsonl", drop_invalid=True).report.to_dict()["dropped"] is True


def test_drop_invalid_of_a_clean_file_changes_nothing(tmp_path):
    path = tmp_path / "clean.jsonl"
    path.write_text("\n".join(json.dumps(hub_row(n)) for n in range(3)) + "\n", encoding="utf-8")
    plain, dropped = load_pairs(path), load_pairs(path, drop_invalid=True)
    pd.testing.assert_frame_equal(plain.pairs, dropped.pairs)
    assert dropped.report.to_dict() == plain.report.to_dict() == {"n_pairs": 3, "errors": [], "warnings": []}
    assert dropped.report.dropped_provenance() == {}


def test_dropping_every_row_still_fails_with_every_problem(tmp_path):
    path = tmp_path / "prefs.jsonl"
    path.write_text("\n".join(json.dumps(hub_row(n, rejected=None)) for n in range(3)) + "\n", encoding="utf-8")
    with pytest.raises(InvalidRowsError) as caught:
        load_pairs(path, drop_invalid=True)
    assert caught.value.report.invalid_rows == [0, 1, 2] and not caught.value.report.droppable


def test_duplicates_after_a_dropped_row_name_their_data_rows(tmp_path):
    path = tmp_path / "prefs.jsonl"
    path.write_text("\n".join(["not json", json.dumps(hub_row(1)), json.dumps(hub_row(1))]) + "\n", encoding="utf-8")
    loaded = load_pairs(path, drop_invalid=True)
    streamed = validate_source(path, drop_invalid=True)
    assert [(issue.row, issue.code) for issue in loaded.report.warnings] == [(2, "duplicate_pair")]
    assert streamed.report.to_dict() == loaded.report.to_dict()
    assert "row 1" in loaded.report.warnings[0].message


def test_csv_rows_with_too_many_cells_are_collected(tmp_path):
    path = tmp_path / "prefs.csv"
    path.write_text("prompt,chosen,rejected\np0,a,b\np1,a,b,extra\np2,c,d\n", encoding="utf-8")
    with pytest.raises(InvalidRowsError) as caught:
        load_pairs(path)
    assert caught.value.report.invalid_rows == [1]
    assert load_pairs(path, drop_invalid=True).pairs["prompt"].tolist() == ["p0", "p2"]


# ---- the command line ------------------------------------------------------------------------------------------


def test_cli_validate_lists_every_unusable_row(tmp_path, capsys):
    path = broken_file(tmp_path / "prefs.jsonl")
    assert main(["validate", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"error: file {path}, row 1, column 'chosen': ")
    assert "3 row(s) cannot be used (2 wrong_type, 1 malformed_json):" in captured.err
    for line in ("  row 1, column 'chosen':", "  row 2, column 'rejected':", "  row 4: line 5 is not valid JSON"):
        assert line in captured.err

    assert main(["validate", str(path), "--json"]) == 2
    payload = json.loads(capsys.readouterr().out)
    assert [issue["row"] for issue in payload["errors"]] == [1, 2, 4]
    assert payload["error_counts"] == {"wrong_type": 2, "malformed_json": 1} and payload["n_pairs"] == 3
    assert [issue["code"] for issue in payload["warnings"]] == ["empty_prompt"]


def test_cli_validate_drop_invalid_checks_the_rest(tmp_path, capsys):
    path = broken_file(tmp_path / "prefs.jsonl")
    assert main(["validate", str(path), "--drop-invalid"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("3 pairs (columns:")
    assert "3 row(s) left out (2 wrong_type, 1 malformed_json):" in out and "empty_prompt: 1 row(s)" in out
    assert main(["validate", str(path), "--drop-invalid", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["dropped"] is True and payload["invalid_rows"] == [1, 2, 4] and payload["errors"] == []


def test_cli_select_records_the_rows_scoring_left_out(tmp_path, capsys):
    dropped = load_pairs(broken_file(tmp_path / "prefs.jsonl"), drop_invalid=True)
    table = pd.DataFrame({"pair_id": dropped.pairs.pair_id, "external_margin": [3.0, 1.0, 2.0],
                          "implicit_margin": [0.1, 0.2, 0.3]})
    margins = save_margins_table(table, tmp_path / "margins.parquet",
                                 {"dataset_fingerprint": "fp", **dropped.report.dropped_provenance()})
    out = tmp_path / "top.json"
    argv = ["select", str(margins), "--rule", "top_k", "--score", "external_margin", "--k", "2", "--name", "top2",
            "--out", str(out)]
    assert main(argv) == 0
    selection = load_selection(out)
    assert selection.provenance == dropped.report.dropped_provenance()
    assert selection.provenance["dropped_rows"] == [1, 2, 4]


# ---- the selection's provenance --------------------------------------------------------------------------------


def test_selection_provenance_round_trips_and_old_files_still_load(tmp_path):
    provenance = {"dropped_rows": [1, 2, 4], "dropped_count": 3, "dropped_reason": "left out"}
    path = save_selection(Selection("s", "top_k", {"k": 2}, "fp", ["a", "b"], provenance=provenance), tmp_path)
    assert json.loads(path.read_text())["provenance"] == provenance
    assert load_selection(path).provenance == provenance
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"name": "old", "rule": "manual", "params": {}, "dataset_fingerprint": None,
                               "pair_ids": ["a"], "created": "2025-01-01T00:00:00Z"}))
    assert load_selection(old).provenance == {}
