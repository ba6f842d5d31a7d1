"""One data row -> one canonical pair (the pairs DataFrame's row), its soft issues and its content hash.

`normalise_row` reads the row's cells through the column mapping (`dpo_engine.data.schema`), builds the prompt
conversation and the two final replies (`dpo_engine.data.conversations`), parses scores, and runs the per-row
soft checks (`dpo_engine.data.report`). Plain-text rows, the common case, take a fast path with the same result.
"""

from __future__ import annotations

import hashlib
import json
import math
import re

from dpo_engine.data.conversations import (
    SURROGATE,
    as_prompt,
    checked_text,
    context,
    display_prompt,
    split_reply,
    type_name,
    with_system,
)
from dpo_engine.data.report import Issue, located_error, row_issues
from dpo_engine.data.schema import ColumnMapping, label_text

_DECIMAL_COMMA = re.compile(r"^[-+]?\d+,\d+$")
_json_string = json.encoder.encode_basestring  # a str as a JSON string literal, non-ASCII kept (C speed-up)




def normalise_row(
    record: dict, row: int, mapping: ColumnMapping, label: str, max_chars: int
) -> tuple[dict, list[Issue], str]:
    """The canonical pair for one data row (without ``warnings`` and ``extra``), its issues and its content hash."""
    fields, where = mapping.fields, {"file": label, "row": row}
    if mapping.pairwise is None and fields["prompt"] is not None:
        prompt, chosen, rejected = record.get(fields["prompt"]), record.get(fields["chosen"]), record.get(fields["rejected"])
        if _plain_strings(prompt, chosen, rejected) and not (fields["system"] and record.get(fields["system"])):
            return _plain_pair(record, row, mapping, label, max_chars, (prompt, chosen, rejected))
    strength = None
    if mapping.pairwise is not None:
        chosen_column, rejected_column, strength = mapping.pairwise.orient(record, **where)
    else:
        chosen_column, rejected_column = fields["chosen"], fields["rejected"]
    chosen_before, chosen, chosen_conversation = split_reply(record.get(chosen_column), **where, column=chosen_column)
    rejected_before, rejected, rejected_conversation = split_reply(
        record.get(rejected_column), **where, column=rejected_column
    )
    prompt_messages, conversational = _context_of(
        record, where, mapping, (chosen_column, chosen_before), (rejected_column, rejected_before)
    )
    conversational = conversational or chosen_conversation or rejected_conversation
    conversational = conversational or len(prompt_messages) > 1 or prompt_messages[0]["role"] != "user"

    issues, scores = [], {}
    for name in ("score_chosen", "score_rejected"):
        scores[name], issue = _parse_score(record, fields[name], row, label)
        issues += [issue] if issue else []
    if strength is not None:
        scores = {"score_chosen": strength, "score_rejected": 0.0}
        if strength == 0:
            message = f"the label '{mapping.pairwise.label}' is a tie (0); '{chosen_column}' is kept as chosen"
            issues.append(Issue(label, row, mapping.pairwise.label, "tie", message))
    display = display_prompt(prompt_messages)
    texts = {
        "prompt": (fields["prompt"] or chosen_column, display),
        "chosen": (chosen_column, chosen),
        "rejected": (rejected_column, rejected),
    }
    issues += row_issues(row, texts, label, max_chars)
    content_hash = _content_hash(prompt_messages, chosen, rejected)
    data_id = _data_id(record, fields["id"], row, label)
    pair = {
        "pair_id": data_id or content_hash,
        "row": row,
        "prompt": display,
        "prompt_messages": prompt_messages,
        "chosen": chosen,
        "rejected": rejected,
        **scores,
        "conversational": bool(conversational),
    }
    return pair, issues, content_hash


def _plain_strings(prompt, chosen, rejected) -> bool:
    """True for three plain-text cells that are not HH transcripts and hold no lone surrogate: the common case,
    which `_plain_pair` normalises without the conversation machinery (the same pair, several times faster)."""
    if type(prompt) is not str or type(chosen) is not str or type(rejected) is not str:
        return False
    if "\n\nAssistant:" in prompt or "\n\nAssistant:" in chosen or "\n\nAssistant:" in rejected:
        return False
    return SURROGATE.search(prompt) is None and SURROGATE.search(chosen) is None and SURROGATE.search(rejected) is None


def _plain_pair(
    record: dict, row: int, mapping: ColumnMapping, label: str, max_chars: int, texts: tuple[str, str, str]
) -> tuple[dict, list[Issue], str]:
    """`_normalise_row` for a prompt, chosen and rejected that are all plain text (see `_plain_strings`)."""
    fields = mapping.fields
    prompt, chosen, rejected = texts[0], texts[1].strip(), texts[2].strip()
    issues, scores = [], {"score_chosen": math.nan, "score_rejected": math.nan}
    for name in ("score_chosen", "score_rejected"):
        if fields[name] is not None:
            scores[name], issue = _parse_score(record, fields[name], row, label)
            if issue:
                issues.append(issue)
    longest = max(len(prompt), len(chosen), len(rejected))
    if not chosen or not rejected or chosen == rejected or longest > max_chars or not prompt.strip():  # clean rows skip the checks
        columns = {"prompt": (fields["prompt"], prompt), "chosen": (fields["chosen"], chosen),
                   "rejected": (fields["rejected"], rejected)}
        issues += row_issues(row, columns, label, max_chars)
    canonical = (  # _content_hash's text for one user message, assembled directly
        '{"chosen":' + _json_string(chosen) + ',"prompt_messages":[{"content":' + _json_string(prompt)
        + ',"role":"user"}],"rejected":' + _json_string(rejected) + "}"
    )
    content_hash = hashlib.sha1(canonical.encode("utf-8")).hexdigest()[:16]
    data_id = _data_id(record, fields["id"], row, label)
    pair = {"pair_id": data_id or content_hash, "row": row, "prompt": prompt,
            "prompt_messages": [{"role": "user", "content": prompt}], "chosen": chosen, "rejected": rejected,
            **scores, "conversational": False}
    return pair, issues, content_hash


def _context_of(
    record: dict, where: dict, mapping: ColumnMapping, chosen: tuple[str, list], rejected: tuple[str, list]
) -> tuple[list[dict], bool]:
    """(the conversation both replies answer, system prompt first; whether the prompt cell was a conversation).

    ``chosen`` / ``rejected``: (source column, messages before the final reply) of each response.
    """
    fields = mapping.fields
    (chosen_column, chosen_before), (rejected_column, rejected_before) = chosen, rejected
    prompt, conversational = [], False
    if fields["prompt"] is not None:
        prompt, conversational = as_prompt(record.get(fields["prompt"]), **where, column=fields["prompt"])
    chosen_context = context(prompt, chosen_before)
    if context(prompt, rejected_before) != chosen_context:
        message = (
            "chosen and rejected continue different conversations; "
            f"everything before the final reply must match '{chosen_column}'"
        )
        raise located_error("mismatched_prompt", message, **where, column=rejected_column)
    if not chosen_context:
        if fields["prompt"] is None:
            found = ", ".join(record)
            message = (
                f"missing required column (columns found: {found}); without it, chosen and rejected must be "
                "conversations or HH transcripts that include the prompt"
            )
            raise located_error("missing_column", message, **where, column="prompt")
        raise located_error("wrong_type", "the prompt is an empty conversation", **where, column=fields["prompt"])
    system = _system_text(record, fields["system"], where["row"], where["file"])
    return with_system(chosen_context, system), conversational or bool(system and system.strip())


def _data_id(record: dict, column: str | None, row: int, label: str) -> str | None:
    """The row's id as text, or None (no id column, or an empty cell: the content hash is used instead)."""
    if column is None:
        return None
    data_id = label_text(record.get(column))
    return None if data_id is None else checked_text(data_id, file=label, row=row, column=column)


def _system_text(record: dict, column: str | None, row: int, label: str) -> str | None:
    """The system prompt cell as text; None when there is no system column or the cell is empty."""
    if column is None:
        return None
    value = record.get(column)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if not isinstance(value, str):
        message = f"expected the system prompt as text, got {type_name(value)}"
        raise located_error("wrong_type", message, file=label, row=row, column=column)
    return checked_text(value, file=label, row=row, column=column)


def _parse_score(record: dict, column: str | None, row: int, label: str) -> tuple[float, Issue | None]:
    """A score as float; NaN when the column is absent, NaN plus a ``bad_score`` issue when unusable.

    A decimal comma (``"4,5"``, as European spreadsheets write numbers) is read as a decimal point.
    """
    if column is None:
        return math.nan, None
    value = record.get(column)
    text = value.strip() if isinstance(value, str) else None
    if text and _DECIMAL_COMMA.match(text):
        value = text.replace(",", ".")
    try:
        score = math.nan if isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        score = math.nan
    if math.isfinite(score):
        return score, None
    return math.nan, Issue(label, row, column, "bad_score", f"score {value!r} is not a finite number; stored as NaN")


def _content_hash(prompt_messages: list[dict], chosen: str, rejected: str) -> str:
    """First 16 hex digits of the SHA-1 of the pair's canonical JSON (sorted keys, compact, UTF-8).

    The JSON is ``{"chosen":..,"prompt_messages":[{"content":..,"role":..},..],"rejected":..}``, assembled from
    the standard library's string encoder: the same text as ``json.dumps(sort_keys=True, ensure_ascii=False,
    separators=(",", ":"))`` at a fraction of the cost (messages hold only role and content).
    """
    messages = ",".join([
        '{"content":' + _json_string(message["content"]) + ',"role":' + _json_string(message["role"]) + "}"
        for message in prompt_messages
    ])
    canonical = (
        '{"chosen":' + _json_string(chosen) + ',"prompt_messages":[' + messages + '],"rejected":'
        + _json_string(rejected) + "}"
    )
    return hashlib.sha1(canonical.encode("utf-8")).hexdigest()[:16]
