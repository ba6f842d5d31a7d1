"""Every common Hub preference schema loads right: each test writes a small file of exactly that shape."""

from __future__ import annotations

import json
import math

import pytest

from dpo_engine.cli import main
from dpo_engine.data import load_pairs, validate_source
from dpo_engine.errors import DataError

SYSTEM = {"role": "system", "content": "You are terse."}
TURNS = [
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "Name a prime."},
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def assistant(text):
    return [{"role": "assistant", "content": text}]


# --------------------------------------------------------------------------------------------------
# Conversations
# --------------------------------------------------------------------------------------------------


def test_tulu3_prompt_is_the_last_user_turn_and_replies_are_full_conversations(tmp_path):
    row = {"id": "t1", "prompt": "Name a prime.", "chosen": [SYSTEM, *TURNS, *assistant("7")],
           "rejected": [SYSTEM, *TURNS, *assistant("8")]}
    pair = load_pairs(write_jsonl(tmp_path / "tulu.jsonl", [row])).pairs.iloc[0]
    assert pair["prompt_messages"] == [SYSTEM, *TURNS]  # in order, system first, last turn not repeated
    assert (pair["chosen"], pair["rejected"], pair["conversational"]) == ("7", "8", True)


def test_full_conversations_without_a_prompt_column(tmp_path):
    row = {"chosen": [SYSTEM, *TURNS, *assistant("7")], "rejected": [SYSTEM, *TURNS, *assistant("8")]}
    pair = load_pairs(write_jsonl(tmp_path / "conversations.jsonl", [row])).pairs.iloc[0]
    assert pair["prompt_messages"] == [SYSTEM, *TURNS]
    assert pair["prompt"] == "System: You are terse.\nUser: Hi\nAssistant: Hello.\nUser: Name a prime."


def test_orca_system_column_becomes_the_first_message(tmp_path):
    rows = [
        {"system": "You are an AI assistant.", "question": "2+2?", "chosen": "4", "rejected": "5"},
        {"system": "", "question": "3+3?", "chosen": "6", "rejected": "7"},
    ]
    loaded = load_pairs(write_jsonl(tmp_path / "orca.jsonl", rows))
    pairs = loaded.pairs
    assert pairs["prompt_messages"][0] == [
        {"role": "system", "content": "You are an AI assistant."}, {"role": "user", "content": "2+2?"},
    ]
    assert pairs["prompt_messages"][1] == [{"role": "user", "content": "3+3?"}]  # an empty system is no message
    assert loaded.columns["system"] == "system" and loaded.columns["prompt"] == "question"
    assert pairs["conversational"].tolist() == [True, False]


def test_ultrafeedback_binarized_message_lists_and_scores(tmp_path):
    question = [{"role": "user", "content": "Capital of France?"}]
    row = {"prompt": "Capital of France?", "prompt_id": "p1", "chosen": question + assistant("Paris"),
           "rejected": question + assistant("Lyon"), "messages": question + assistant("Paris"),
           "score_chosen": 9.0, "score_rejected": 3.5}
    pair = load_pairs(write_jsonl(tmp_path / "ufb.jsonl", [row])).pairs.iloc[0]
    assert pair["prompt_messages"] == question
    assert (pair["chosen"], pair["rejected"], pair["score_chosen"], pair["score_rejected"]) == ("Paris", "Lyon", 9.0, 3.5)
    assert json.loads(pair["extra"]) == {"prompt_id": "p1", "messages": row["messages"]}


@pytest.mark.parametrize(
    ("chosen_name", "rejected_name"),
    [("chosen-rating", "rejected-rating"), ("chosen_rating", "rejected_rating"), ("rating_chosen", "rating_rejected")],
)
def test_argilla_rating_columns_are_scores(tmp_path, chosen_name, rejected_name):
    row = {"instruction": "Say hi", "chosen": "Hi!", "rejected": "No.", chosen_name: 5, rejected_name: "2"}
    loaded = load_pairs(write_jsonl(tmp_path / "argilla.jsonl", [row]))
    assert (loaded.columns["score_chosen"], loaded.columns["score_rejected"]) == (chosen_name, rejected_name)
    assert loaded.pairs[["score_chosen", "score_rejected"]].iloc[0].tolist() == [5.0, 2.0]


# --------------------------------------------------------------------------------------------------
# Pairwise with a label
# --------------------------------------------------------------------------------------------------


def test_pku_saferlhf_better_response_id(tmp_path):
    rows = [
        {"prompt": "q0", "response_0": "good0", "response_1": "bad0", "better_response_id": 0},
        {"prompt": "q1", "response_0": "bad1", "response_1": "good1", "better_response_id": 1},
    ]
    loaded = load_pairs(write_jsonl(tmp_path / "pku.jsonl", rows))
    assert loaded.pairs["chosen"].tolist() == ["good0", "good1"]
    assert loaded.pairs["rejected"].tolist() == ["bad0", "bad1"]
    assert loaded.columns["label"] == "better_response_id" and loaded.columns["first_preferred"] == "0"
    assert loaded.pairs["score_chosen"].isna().all()


def test_shp_labels_one_means_a_preferred(tmp_path):
    rows = [
        {"history": "h0", "human_ref_A": "A0", "human_ref_B": "B0", "labels": 1, "score_A": 10, "score_B": 2},
        {"history": "h1", "human_ref_A": "A1", "human_ref_B": "B1", "labels": 0, "score_A": 1, "score_B": 5},
    ]
    pairs = load_pairs(write_jsonl(tmp_path / "shp.jsonl", rows)).pairs
    assert pairs["chosen"].tolist() == ["A0", "B1"] and pairs["rejected"].tolist() == ["B0", "A1"]
    assert pairs["prompt"].tolist() == ["h0", "h1"]


def test_helpsteer3_signed_preference_is_the_margin_and_zero_a_tie(tmp_path):
    context = [{"role": "user", "content": "Explain DPO."}]
    rows = [
        {"context": context, "response1": "r1 better", "response2": "r2", "overall_preference": -2},
        {"context": context, "response1": "r1", "response2": "r2 better", "overall_preference": 3},
        {"context": context, "response1": "tie a", "response2": "tie b", "overall_preference": 0},
    ]
    loaded = load_pairs(write_jsonl(tmp_path / "helpsteer3.jsonl", rows))
    pairs = loaded.pairs
    assert pairs["chosen"].tolist() == ["r1 better", "r2 better", "tie a"]
    assert pairs["score_chosen"].tolist() == [2.0, 3.0, 0.0] and pairs["score_rejected"].tolist() == [0.0, 0.0, 0.0]
    assert pairs["warnings"].tolist() == ["", "", "tie"]
    assert [(issue.row, issue.column) for issue in loaded.report.warnings] == [(2, "overall_preference")]


def test_pairwise_mapping_given_explicitly(tmp_path):
    rows = [{"q": "p", "left": "x", "right": "y", "winner": "right"}]
    path = write_jsonl(tmp_path / "custom.jsonl", rows)
    columns = {"prompt": "q", "response_a": "left", "response_b": "right", "label": "winner", "first_preferred": "left"}
    pair = load_pairs(path, columns=columns).pairs.iloc[0]
    assert (pair["chosen"], pair["rejected"]) == ("y", "x")
    with pytest.raises(DataError, match="missing first_preferred") as caught:
        load_pairs(path, columns={key: value for key, value in columns.items() if key != "first_preferred"})
    assert caught.value.column == "first_preferred"


def test_cli_validate_pairwise_flags(tmp_path, capsys):
    rows = [{"q": "p", "left": "x", "right": "y", "strength": 1.5}]
    path = write_jsonl(tmp_path / "custom.jsonl", rows)
    flags = ["--prompt-col", "q", "--response-a-col", "left", "--response-b-col", "right", "--label-col", "strength",
             "--first-preferred", "signed"]
    assert main(["validate", str(path), *flags]) == 0
    assert "response_a=left, response_b=right, label=strength, first_preferred=signed" in capsys.readouterr().out


def test_bad_labels_name_row_and_column(tmp_path):
    rows = [{"context": "q", "response1": "a", "response2": "b", "overall_preference": 1},
            {"context": "q", "response1": "a", "response2": "b", "overall_preference": "n/a"}]
    with pytest.raises(DataError, match="must be a number") as caught:
        load_pairs(write_jsonl(tmp_path / "h.jsonl", rows))
    assert (caught.value.row, caught.value.column) == (1, "overall_preference")
    rows = [{"prompt": "q", "response_0": "a", "response_1": "b", "better_response_id": None}]
    with pytest.raises(DataError, match="the label is empty"):
        load_pairs(write_jsonl(tmp_path / "p.jsonl", rows))


# --------------------------------------------------------------------------------------------------
# Encodings, dialects, DatasetDict
# --------------------------------------------------------------------------------------------------


def test_jsonl_with_utf8_bom_and_crlf(tmp_path):
    path = tmp_path / "windows.jsonl"
    lines = [json.dumps({"prompt": "Café?", "chosen": "Oui", "rejected": "Non"}, ensure_ascii=False)] * 2
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode("utf-8") + b"\r\n")
    pairs = load_pairs(path).pairs
    assert pairs["prompt"].tolist() == ["Café?", "Café?"] and pairs["rejected"].tolist() == ["Non", "Non"]


def test_csv_with_semicolons_and_latin1_is_sniffed(tmp_path):
    path = tmp_path / "excel.csv"
    text = ('prompt;chosen;rejected;score_chosen\r\n"Où est né Zoë ?";"À Paris; en 1990";Genève;4,5\r\n'
            "q;a;b;1.234,5\r\n")
    path.write_bytes(text.encode("latin-1"))
    pairs = load_pairs(path).pairs
    pair = pairs.iloc[0]
    assert (pair["prompt"], pair["chosen"], pair["rejected"]) == ("Où est né Zoë ?", "À Paris; en 1990", "Genève")
    assert pair["score_chosen"] == 4.5 and pair["warnings"] == ""  # a decimal comma, as spreadsheets write it
    assert math.isnan(pairs["score_chosen"][1]) and pairs["warnings"][1] == "bad_score"  # ambiguous: not guessed


def test_csv_encoding_and_delimiter_overrides(tmp_path, capsys):
    path = tmp_path / "tabs.csv"
    path.write_bytes("prompt|chosen|rejected\nq|a,b|c\n".encode("utf-8"))
    assert load_pairs(path, delimiter="|").pairs["chosen"][0] == "a,b"
    assert main(["validate", str(path), "--delimiter", ",", "--json"]) == 2
    assert "--delimiter" in json.loads(capsys.readouterr().out)["errors"][0]["message"]
    path.write_bytes("prompt,chosen,rejected\nq,\u00e9t\u00e9,c\n".encode("utf-16"))
    assert load_pairs(path).pairs["chosen"][0] == "été"  # a UTF-16 BOM is honoured
    with pytest.raises(DataError, match="--encoding"):
        load_pairs(path, encoding="utf-8")
    with pytest.raises(DataError, match="unknown encoding 'klingon'"):
        load_pairs(path, encoding="klingon")


def test_latin1_jsonl_needs_encoding_and_loads_with_it(tmp_path, capsys):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(json.dumps({"prompt": "Zoë", "chosen": "a", "rejected": "b"}, ensure_ascii=False).encode("latin-1"))
    assert main(["validate", str(path)]) == 2
    assert "is not UTF-8 text" in capsys.readouterr().err
    assert load_pairs(path, encoding="latin-1").pairs["prompt"][0] == "Zoë"


def test_dataset_dict_split_through_the_cli(tmp_path, capsys):
    import datasets

    rows = {"prompt": ["q"], "chosen": ["a"], "rejected": ["b"]}
    datasets.DatasetDict({"train_prefs": datasets.Dataset.from_dict(rows),
                          "test_prefs": datasets.Dataset.from_dict({**rows, "chosen": ["c"]})}).save_to_disk(tmp_path / "d")
    assert load_pairs(tmp_path / "d", split="test_prefs").pairs["chosen"].tolist() == ["c"]
    assert main(["validate", str(tmp_path / "d"), "--split", "test_prefs"]) == 0
    assert main(["validate", str(tmp_path / "d")]) == 2
    assert "available splits: train_prefs, test_prefs" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# The error contract
# --------------------------------------------------------------------------------------------------


def test_deep_nesting_is_a_located_error(tmp_path):
    path = tmp_path / "deep.jsonl"
    good = json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"})
    path.write_text(good + "\n" + '{"prompt": ' + "[" * 100000 + "]" * 100000 + "}\n", encoding="utf-8")
    with pytest.raises(DataError, match="nested too deeply") as caught:
        load_pairs(path)
    assert caught.value.row == 1


def test_lone_surrogate_is_a_located_error(tmp_path):
    path = tmp_path / "surrogate.jsonl"
    path.write_text('{"prompt": "q", "chosen": "bad \\ud800 text", "rejected": "b"}\n', encoding="utf-8")
    with pytest.raises(DataError, match="lone UTF-16 surrogate") as caught:
        load_pairs(path)
    assert (caught.value.row, caught.value.column) == (0, "chosen")


def test_oversized_and_ragged_csv_rows_are_located_errors(tmp_path, monkeypatch):
    import dpo_engine.data.readers as readers

    path = tmp_path / "big.csv"
    path.write_text("prompt,chosen,rejected\nq,a,b\nq," + "x" * 5000 + ",b\n", encoding="utf-8")
    monkeypatch.setattr(readers, "CSV_FIELD_LIMIT", 1000)
    with pytest.raises(DataError, match="field larger than field limit") as caught:
        load_pairs(path)
    assert caught.value.row == 1
    path.write_text("prompt,chosen,rejected\nq,a,b,extra\n", encoding="utf-8")
    with pytest.raises(DataError, match="has 4 cells but the header has 3"):
        load_pairs(path)


def test_validate_source_reports_what_load_pairs_does(tmp_path):
    rows = [{"id": "x", "prompt": "q", "chosen": "a", "rejected": "a"}, {"id": "x", "prompt": "q", "chosen": "", "rejected": "b"}]
    path = write_jsonl(tmp_path / "soft.jsonl", rows)
    checked, loaded = validate_source(path), load_pairs(path)
    assert checked.report.to_dict() == loaded.report.to_dict()
    assert [issue.code for issue in checked.report.warnings] == ["identical_responses", "empty_response", "duplicate_pair"]
    assert list(checked.chosen_chars) == [1, 0] and list(checked.rejected_chars) == [1, 1]


def test_score_external_dataset_without_scores_exits_2(tmp_path, capsys):
    path = write_jsonl(tmp_path / "noscores.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b"}])
    code = main(["score", str(path), "--external", "dataset", "--implicit", "none", "--out", str(tmp_path / "m.parquet")])
    assert code == 2
    assert "config field '--external'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "row",
    [{"prompt": "Zoë \"quoted\"\n", "chosen": " ünïcode ", "rejected": "b\\t"},  # the plain-text fast path
     {"prompt": [{"role": "user", "content": "Zoë"}], "chosen": "a", "rejected": "b"},
     {"system": "Be kind.", "prompt": "Zoë", "chosen": "a", "rejected": "b"}],
    ids=["plain", "messages", "system"],
)
def test_content_hash_ids_are_the_sha1_of_the_canonical_json(tmp_path, row):
    import hashlib

    pair = load_pairs(write_jsonl(tmp_path / "one.jsonl", [row])).pairs.iloc[0]
    canonical = json.dumps(
        {"prompt_messages": pair["prompt_messages"], "chosen": pair["chosen"], "rejected": pair["rejected"]},
        sort_keys=True, ensure_ascii=False, separators=(",", ":"),
    )
    assert pair["pair_id"] == hashlib.sha1(canonical.encode("utf-8")).hexdigest()[:16]
    assert validate_source(tmp_path / "one.jsonl").report.n_pairs == 1


@pytest.mark.parametrize("column", ["id", "note"])
def test_lone_surrogates_in_ids_and_extra_columns_are_located_errors(tmp_path, column):
    path = tmp_path / "surrogate.jsonl"
    row = '{"prompt": "q", "chosen": "a", "rejected": "b", "%s": "x\\udfff"}\n' % column
    path.write_text(row, encoding="utf-8")
    with pytest.raises(DataError, match="lone UTF-16 surrogate") as caught:
        load_pairs(path)
    assert (caught.value.row, caught.value.column) == (0, column)
