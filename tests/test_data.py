"""Loading, normalising and validating preference pairs (dpo_engine.data) and ``dpo-engine validate``."""

from __future__ import annotations

import hashlib
import json
import math
import random
import time

import pandas as pd
import pytest

from dpo_engine.cli import main
from dpo_engine.data.pairs import (
    PAIR_COLUMNS,
    bundled_datasets,
    fingerprint,
    load_pairs,
    pairs_to_records,
    save_pairs,
)
from dpo_engine.errors import DataError

PLAIN_ROWS = [
    {"id": "a", "prompt": "What is 2+2?", "chosen": "4", "rejected": "5", "score_chosen": 9.0, "score_rejected": 2.5},
    {"id": "b", "prompt": "Name a colour.", "chosen": " Blue. ", "rejected": "Seven", "score_chosen": 8, "score_rejected": 1},
]
HH_TRANSCRIPT = "\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?\n\nHuman: Recommend a book.\n\nAssistant:"
HH_MESSAGES = [
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello! How can I help?"},
    {"role": "user", "content": "Recommend a book."},
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def load_rows(tmp_path, rows, **kwargs):
    return load_pairs(write_jsonl(tmp_path / "pairs.jsonl", rows), **kwargs)


# --------------------------------------------------------------------------------------------------
# Formats
# --------------------------------------------------------------------------------------------------


def test_jsonl_plain_strings_give_the_documented_frame(tmp_path):
    loaded = load_rows(tmp_path, PLAIN_ROWS)
    pairs = loaded.pairs
    assert list(pairs.columns) == PAIR_COLUMNS
    assert pairs["pair_id"].tolist() == ["a", "b"]
    assert pairs["row"].tolist() == [0, 1]
    assert pairs["prompt"].tolist() == ["What is 2+2?", "Name a colour."]
    assert pairs["prompt_messages"][0] == [{"role": "user", "content": "What is 2+2?"}]
    assert pairs["chosen"][1] == "Blue."  # outer whitespace of responses is stripped
    assert pairs["score_chosen"].dtype == "float64" and pairs["score_chosen"].tolist() == [9.0, 8.0]
    assert pairs["warnings"].tolist() == ["", ""]
    assert loaded.report.to_dict() == {"n_pairs": 2, "errors": [], "warnings": []}


def test_json_list_of_objects(tmp_path):
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps(PLAIN_ROWS))
    assert load_pairs(path).pairs["pair_id"].tolist() == ["a", "b"]


def test_json_object_at_top_level_is_rejected(tmp_path):
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps({"data": PLAIN_ROWS}))
    with pytest.raises(DataError, match="expected a JSON list of row objects") as caught:
        load_pairs(path)
    assert caught.value.file == str(path)


def test_csv_keeps_text_cells_and_parses_scores(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text("id,instruction,chosen,rejected,score_chosen,score_rejected\n007,Say hi,hello,,4.5,1\n")
    pairs = load_pairs(path).pairs
    assert pairs["pair_id"][0] == "007"
    assert pairs["prompt"][0] == "Say hi"  # "instruction" is detected as the prompt column
    assert pairs["rejected"][0] == "" and pairs["warnings"][0] == "empty_response"
    assert pairs["score_chosen"][0] == 4.5


def test_parquet_with_conversational_prompt(tmp_path):
    rows = [{"prompt": HH_MESSAGES, "chosen": [{"role": "assistant", "content": "Dune."}], "rejected": "No."}]
    path = tmp_path / "pairs.parquet"
    pd.DataFrame(rows).to_parquet(path)
    pairs = load_pairs(path).pairs
    assert pairs["prompt_messages"][0] == HH_MESSAGES
    assert (pairs["chosen"][0], pairs["rejected"][0]) == ("Dune.", "No.")
    assert math.isnan(pairs["score_chosen"][0])


def test_save_to_disk_directory_and_dataset_dict_split(tmp_path):
    import datasets

    datasets.Dataset.from_list(PLAIN_ROWS).save_to_disk(tmp_path / "single")
    assert load_pairs(tmp_path / "single").pairs["pair_id"].tolist() == ["a", "b"]

    splits = datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(PLAIN_ROWS[:1]), "test": datasets.Dataset.from_list(PLAIN_ROWS[1:])}
    )
    splits.save_to_disk(tmp_path / "splits")
    assert load_pairs(tmp_path / "splits", split="test").pairs["pair_id"].tolist() == ["b"]
    with pytest.raises(DataError, match="has no split 'validation'; available splits: train, test"):
        load_pairs(tmp_path / "splits", split="validation")


def test_conversational_prompt_repeated_or_not_gives_the_same_pair(tmp_path):
    reply = [{"role": "assistant", "content": "Dune."}]
    worse = [{"role": "assistant", "content": "No."}]
    separate = {"prompt": HH_MESSAGES, "chosen": reply, "rejected": worse}
    repeated = {"prompt": HH_MESSAGES, "chosen": HH_MESSAGES + reply, "rejected": HH_MESSAGES + worse}
    pairs = load_rows(tmp_path, [separate, repeated]).pairs
    assert pairs["prompt_messages"][0] == pairs["prompt_messages"][1] == HH_MESSAGES
    assert pairs["chosen"].tolist() == ["Dune.", "Dune."]
    assert pairs["prompt"][0] == "User: Hi there\nAssistant: Hello! How can I help?\nUser: Recommend a book."


def test_implicit_prompt_is_the_shared_conversation(tmp_path):
    row = {
        "chosen": HH_MESSAGES + [{"role": "assistant", "content": "Dune."}],
        "rejected": HH_MESSAGES + [{"role": "assistant", "content": "No."}],
    }
    loaded = load_rows(tmp_path, [row])
    assert loaded.pairs["prompt_messages"][0] == HH_MESSAGES
    assert "prompt" not in loaded.columns


def test_hh_full_transcripts_become_alternating_messages(tmp_path):
    row = {"chosen": HH_TRANSCRIPT + " Try Dune.", "rejected": HH_TRANSCRIPT + " No."}
    pairs = load_rows(tmp_path, [row]).pairs
    assert pairs["prompt_messages"][0] == HH_MESSAGES
    assert (pairs["chosen"][0], pairs["rejected"][0]) == ("Try Dune.", "No.")


def test_hh_split_form_drops_the_assistant_cue(tmp_path):
    pairs = load_rows(tmp_path, [{"prompt": HH_TRANSCRIPT, "chosen": " Try Dune.", "rejected": " No."}]).pairs
    assert pairs["prompt_messages"][0] == HH_MESSAGES
    assert pairs["chosen"][0] == "Try Dune."


def test_column_mapping_and_alias_detection(tmp_path):
    rows = [{"pair_id": "x1", "question": "Q?", "good": "yes", "bad": "no", "r_good": 1, "r_bad": 0}]
    columns = {"chosen": "good", "rejected": "bad", "score_chosen": "r_good", "score_rejected": "r_bad"}
    loaded = load_rows(tmp_path, rows, columns=columns)
    assert loaded.columns == {"prompt": "question", "id": "pair_id", **columns}
    assert loaded.pairs[["pair_id", "prompt", "chosen", "score_chosen"]].iloc[0].tolist() == ["x1", "Q?", "yes", 1.0]


# --------------------------------------------------------------------------------------------------
# Bundled datasets
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ultrafeedback():
    return load_pairs(bundled_datasets()["ultrafeedback"])


def test_bundled_paths_exist():
    paths = bundled_datasets()
    assert set(paths) == {"ultrafeedback", "hh_rlhf"}
    assert all(path.is_file() and path.parent.name == "data" for path in paths.values())


def test_bundled_ultrafeedback(ultrafeedback):
    pairs = ultrafeedback.pairs.set_index("pair_id")
    assert len(pairs) == 1200 and pairs.index.is_unique
    assert pairs["score_chosen"].dtype == "float64" and pairs["score_chosen"].notna().all()
    margins = pairs["score_chosen"] - pairs["score_rejected"]
    assert (margins == 0).sum() == 136 and (margins >= 0).all()
    assert pairs.loc["ufb-trl-train-7618", "rejected"] == "" and pairs.loc["ufb-trl-train-28230", "chosen"] == ""
    flagged = pairs.index[pairs["warnings"].str.contains("empty_response")]
    assert sorted(flagged) == ["ufb-trl-train-28230", "ufb-trl-train-7618"]
    empty = [issue for issue in ultrafeedback.report.warnings if issue.code == "empty_response"]
    assert {(issue.row, issue.column) for issue in empty} == {
        (pairs.loc["ufb-trl-train-7618", "row"], "rejected"),
        (pairs.loc["ufb-trl-train-28230", "row"], "chosen"),
    }


def test_bundled_hh_rlhf():
    pairs = load_pairs(bundled_datasets()["hh_rlhf"]).pairs
    assert len(pairs) == 1000 and pairs["pair_id"].is_unique
    assert pairs["score_chosen"].isna().all() and (pairs["warnings"] == "").all()
    first = pairs.iloc[0]  # hh-helpful-base-test-1: a three-human-turn conversation
    assert [message["role"] for message in first["prompt_messages"]] == ["user", "assistant"] * 2 + ["user"]
    assert first["prompt_messages"][0]["content"] == "How can I find out what types of butterflies are in my area?"
    assert first["prompt"].startswith("User: How can I find out")
    assert first["chosen"].startswith("About 150 species")  # leading space of the split form stripped


# --------------------------------------------------------------------------------------------------
# Fatal problems: DataError names file, row and column
# --------------------------------------------------------------------------------------------------

MESSAGES_WITHOUT_ROLE = {"prompt": [{"content": "hi"}], "chosen": "a", "rejected": "b"}


@pytest.mark.parametrize(
    ("rows", "row", "column", "text"),
    [
        ([PLAIN_ROWS[0], {**PLAIN_ROWS[1], "chosen": 3}], 1, "chosen", "got a number (3)"),
        ([{**PLAIN_ROWS[0], "rejected": {"text": "x"}}], 0, "rejected", "got an object/dict"),
        ([{**PLAIN_ROWS[0], "rejected": None}], 0, "rejected", "got an empty value (null)"),
        ([MESSAGES_WITHOUT_ROLE], 0, "prompt", "message 0 must be an object with text 'role' and 'content'"),
        ([{"prompt": "p", "chosen": [{"role": "user", "content": "a"}], "rejected": "b"}], 0, "chosen", "last role: user"),
        (
            [{"chosen": HH_TRANSCRIPT + " a", "rejected": "\n\nHuman: Other\n\nAssistant: b"}],
            0,
            "rejected",
            "continue different conversations",
        ),
        ([{"chosen": "a", "rejected": "b"}], 0, "prompt", "missing required column (columns found: chosen, rejected)"),
    ],
    ids=["number", "dict", "null", "no-role", "ends-with-user", "different-conversations", "no-prompt"],
)
def test_wrong_values_name_file_row_and_column(tmp_path, rows, row, column, text):
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    with pytest.raises(DataError) as caught:
        load_pairs(path)
    error = caught.value
    assert (error.file, error.row, error.column) == (str(path), row, column)
    assert text in str(error)
    assert str(error).startswith(f"file {path}, row {row}, column '{column}': ")


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="file not found") as caught:
        load_pairs(tmp_path / "nope.jsonl")
    assert caught.value.file == str(tmp_path / "nope.jsonl")


def test_unknown_extension(tmp_path):
    path = tmp_path / "pairs.txt"
    path.write_text("prompt,chosen,rejected\n")
    with pytest.raises(DataError, match=r"unknown file format '\.txt'"):
        load_pairs(path)


def test_malformed_json_line_names_the_line(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(PLAIN_ROWS[0]) + "\n\n{not json}\n")
    with pytest.raises(DataError, match="line 3 is not valid JSON") as caught:
        load_pairs(path)
    assert (caught.value.file, caught.value.row) == (str(path), 1)


def test_missing_required_column_lists_the_columns_found(tmp_path):
    with pytest.raises(DataError, match=r"missing required column \(columns found: prompt, good, rejected\)") as caught:
        load_rows(tmp_path, [{"prompt": "p", "good": "a", "rejected": "b"}])
    assert caught.value.column == "chosen"
    with pytest.raises(DataError, match="mapped column for prompt not found") as caught:
        load_rows(tmp_path, PLAIN_ROWS, columns={"prompt": "query"})
    assert caught.value.column == "query"


def test_unreadable_parquet(tmp_path):
    path = tmp_path / "pairs.parquet"
    path.write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="is not a readable parquet file"):
        load_pairs(path)


# --------------------------------------------------------------------------------------------------
# Soft problems: flagged, never dropped
# --------------------------------------------------------------------------------------------------


def test_soft_problems_are_flagged_and_kept(tmp_path):
    rows = [
        {"prompt": "p0", "chosen": "same", "rejected": " same", "score_chosen": "abc", "score_rejected": 1},
        {"prompt": "p1", "chosen": "", "rejected": "b", "score_chosen": float("nan"), "score_rejected": 1},
        {"prompt": "p2", "chosen": "x" * 30, "rejected": "b", "score_chosen": 2, "score_rejected": 1},
    ]
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    before = path.read_bytes()
    loaded = load_pairs(path, max_chars=20)
    assert loaded.pairs["warnings"].tolist() == ["bad_score;identical_responses", "bad_score;empty_response", "very_long"]
    assert math.isnan(loaded.pairs["score_chosen"][0]) and loaded.pairs["score_rejected"][0] == 1.0
    payload = loaded.report.to_dict()
    assert payload["n_pairs"] == 3 and payload["errors"] == []
    assert payload["warnings"][0] == {
        "file": str(path),
        "row": 0,
        "column": "score_chosen",
        "code": "bad_score",
        "message": "score 'abc' is not a finite number; stored as NaN",
    }
    assert [(issue["row"], issue["column"]) for issue in payload["warnings"][1:]] == [
        (0, "chosen,rejected"),
        (1, "score_chosen"),
        (1, "chosen"),
        (2, "chosen"),
    ]
    assert path.read_bytes() == before  # loading never writes to the source


def test_duplicate_content_without_ids(tmp_path):
    row = {"prompt": "p", "chosen": "a", "rejected": "b"}
    pairs = load_rows(tmp_path, [row, {"prompt": "q", "chosen": "a", "rejected": "b"}, row, row]).pairs
    first = pairs["pair_id"][0]
    assert len(first) == 16 and pairs["pair_id"].is_unique
    assert pairs["pair_id"][2:].tolist() == [f"{first}-dup1", f"{first}-dup2"]
    assert pairs["warnings"].tolist() == ["", "", "duplicate_pair", "duplicate_pair"]


def test_duplicate_ids_and_duplicate_content_under_other_ids(tmp_path):
    rows = [
        {"id": "x", "prompt": "p", "chosen": "a", "rejected": "b"},
        {"id": "x", "prompt": "q", "chosen": "c", "rejected": "d"},
        {"id": "x-dup1", "prompt": "r", "chosen": "e", "rejected": "f"},
        {"id": "y", "prompt": "p", "chosen": "a", "rejected": "b"},
    ]
    loaded = load_rows(tmp_path, rows)
    assert loaded.pairs["pair_id"].tolist() == ["x", "x-dup2", "x-dup1", "y"]  # a suffix never takes a real id
    assert loaded.pairs["warnings"].tolist() == ["", "duplicate_pair", "", "duplicate_pair"]
    messages = [issue.message for issue in loaded.report.warnings]
    assert messages == ["pair id 'x' repeats row 0; this row is kept as 'x-dup2'", "same prompt, chosen and rejected as row 0"]


# --------------------------------------------------------------------------------------------------
# Ids, round trips and fingerprints
# --------------------------------------------------------------------------------------------------


def test_content_hash_ids_survive_reload_and_shuffling(tmp_path):
    rows = [{"prompt": f"prompt {i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(30)]
    original = load_rows(tmp_path, rows).pairs
    random.Random(0).shuffle(rows)
    shuffled = load_pairs(write_jsonl(tmp_path / "shuffled.jsonl", rows)).pairs
    assert dict(zip(original["prompt"], original["pair_id"])) == dict(zip(shuffled["prompt"], shuffled["pair_id"]))
    assert fingerprint(original) == fingerprint(shuffled)
    shuffled.loc[0, "chosen"] = "edited"
    assert fingerprint(original) != fingerprint(shuffled)


def test_fingerprint_is_the_sha1_of_each_pair_as_compact_json_in_id_order(tmp_path):
    # Fixed by what is hashed: selections and margin tables on disk (the shipped demo's too) are keyed by it.
    pairs = load_rows(tmp_path, [{"prompt": "Grüße?", "chosen": "b", "rejected": "c"},
                                 {"prompt": "a", "chosen": "é", "rejected": "d"}]).pairs
    lines = b"".join(
        json.dumps([pair_id, [{"role": "user", "content": prompt}], chosen, rejected], ensure_ascii=False,
                   separators=(",", ":")).encode("utf-8") + b"\n"
        for pair_id, prompt, chosen, rejected in sorted(zip(pairs.pair_id, pairs.prompt, pairs.chosen, pairs.rejected))
    )
    assert fingerprint(pairs) == hashlib.sha1(lines).hexdigest()[:16]


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_save_pairs_round_trips(tmp_path, ultrafeedback, suffix):
    subset = ultrafeedback.pairs.sample(50, random_state=0)
    path = save_pairs(subset, tmp_path / "out" / f"subset{suffix}")
    reloaded = load_pairs(path).pairs
    kept = ["pair_id", "prompt", "prompt_messages", "chosen", "rejected", "score_chosen", "score_rejected"]
    assert reloaded[kept].to_dict("records") == subset[kept].to_dict("records")
    assert fingerprint(reloaded) == fingerprint(subset)


def test_round_trip_of_conversations_without_scores(tmp_path):
    pairs = load_rows(tmp_path, [{"prompt": HH_TRANSCRIPT, "chosen": " a", "rejected": " b"}] * 2).pairs
    records = pairs_to_records(pairs)
    assert set(records[0]) == {"pair_id", "prompt", "chosen", "rejected"}  # all-NaN scores are left out
    reloaded = load_pairs(save_pairs(pairs, tmp_path / "copy.jsonl")).pairs
    assert reloaded["pair_id"].tolist() == pairs["pair_id"].tolist()
    assert reloaded["prompt_messages"][1] == HH_MESSAGES
    assert reloaded["warnings"].tolist() == ["", "duplicate_pair"]  # same content, so still flagged


def test_a_pairs_frame_written_as_it_is_reloads(tmp_path):
    pairs = load_rows(tmp_path, [{"prompt": HH_TRANSCRIPT, "chosen": " a", "rejected": " b"}]).pairs
    pairs.to_parquet(tmp_path / "frame.parquet")
    reloaded = load_pairs(tmp_path / "frame.parquet")
    assert reloaded.columns["prompt"] == "prompt_messages"
    assert reloaded.pairs["prompt_messages"][0] == HH_MESSAGES
    assert reloaded.pairs["pair_id"][0] == pairs["pair_id"][0]


def test_save_pairs_rejects_other_formats(tmp_path, ultrafeedback):
    with pytest.raises(DataError, match="use a .jsonl or .parquet path"):
        save_pairs(ultrafeedback.pairs.head(2), tmp_path / "out.csv")


# --------------------------------------------------------------------------------------------------
# Hub names
# --------------------------------------------------------------------------------------------------


def test_hub_name_fails_fast_offline():
    start = time.monotonic()
    with pytest.raises(DataError, match="no local file named 'margin-lab-tests/no-such-dataset'") as caught:
        load_pairs("margin-lab-tests/no-such-dataset")  # conftest sets HF_HUB_OFFLINE=1
    assert time.monotonic() - start < 10
    assert "HF_HUB_OFFLINE is set" in str(caught.value)


def test_hub_name_fails_fast_online(monkeypatch):
    import datasets

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    start = time.monotonic()
    with pytest.raises(DataError) as caught:
        load_pairs("margin-lab-tests/no-such-dataset")
    assert time.monotonic() - start < 10
    assert caught.value.code in {"hub_unreachable", "dataset_not_found"}  # no network here; 404 where there is


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------


def test_cli_validate_summary(capsys):
    assert main(["validate", str(bundled_datasets()["ultrafeedback"])]) == 0
    out = capsys.readouterr().out
    assert out.startswith("1200 pairs (columns: prompt=prompt, chosen=chosen, rejected=rejected")
    assert "empty_response: 2 row(s)" in out and "identical_responses: 5 row(s)" in out
    assert "column 'rejected': the response is empty" in out


def test_cli_validate_json_and_column_flags(tmp_path, capsys):
    rows = [{"q": "Q?", "good": "yes", "bad": "yes", "s": "x"}]
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    flags = ["--prompt-col", "q", "--chosen-col", "good", "--rejected-col", "bad", "--score-chosen-col", "s"]
    assert main(["validate", str(path), "--json", *flags]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["n_pairs"] == 1 and payload["errors"] == []
    assert [issue["code"] for issue in payload["warnings"]] == ["bad_score", "identical_responses"]


def test_cli_validate_errors_exit_2(tmp_path, capsys):
    path = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "p", "chosen": 1, "rejected": "b"}])
    assert main(["validate", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"error: file {path}, row 0, column 'chosen': expected text")

    assert main(["validate", str(path), "--json"]) == 2
    payload = json.loads(capsys.readouterr().out)
    assert payload["n_pairs"] == 0 and payload["warnings"] == []
    assert payload["errors"][0] | {"message": ""} == {
        "file": str(path),
        "row": 0,
        "column": "chosen",
        "code": "wrong_type",
        "message": "",
    }


def test_cli_validate_help(capsys):
    with pytest.raises(SystemExit) as caught:
        main(["validate", "--help"])
    assert caught.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--json", "--split", "--prompt-col", "--score-rejected-col", "--id-col", "Exit status"):
        assert flag in text
