"""Conversations: turn a cell (plain text, a list of ``{role, content}`` messages, an HH-RLHF transcript) into
messages, and split a response cell into the conversation before the final reply and the reply itself.

The canonical prompt is the conversation before the final assistant turn, in order; a system prompt given in its
own column comes first. A reply cell may repeat the prompt (TRL conversational), hold the whole conversation
with the prompt column being only its last user turn (Tülu 3 preference mixtures), or continue the prompt.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from dpo_engine.data.report import located_error

_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}
SURROGATE = re.compile("[\ud800-\udfff]")


def type_name(value: Any) -> str:
    """How a wrong value is described to the user."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "an empty value (null)"
    if isinstance(value, dict):
        return "an object/dict"
    if isinstance(value, (int, float)):
        return f"a number ({value!r})"
    return f"a {type(value).__name__}"


def checked_text(text: str, *, file: str, row: int, column: str) -> str:
    """``text`` itself; a lone surrogate (``"\\ud800"`` in JSON) cannot be encoded as UTF-8, so it is an error."""
    found = SURROGATE.search(text)
    if found:
        message = (
            f"holds a lone UTF-16 surrogate (U+{ord(found.group()):04X}) at character {found.start()}, "
            "which is not valid Unicode text; fix the escape in the source"
        )
        raise located_error("bad_unicode", message, file=file, row=row, column=column)
    return text


def as_conversation(value: Any, *, file: str, row: int, column: str) -> list[dict] | str:
    """Messages for a TRL conversation or an HH transcript; plain text is returned as the string itself."""
    if isinstance(value, str):
        checked_text(value, file=file, row=row, column=column)
        return parse_hh_transcript(value) if is_hh_transcript(value) else value
    if isinstance(value, list):
        return [message(item, index, file=file, row=row, column=column) for index, item in enumerate(value)]
    text = f"expected text or a list of {{role, content}} messages, got {type_name(value)}"
    raise located_error("wrong_type", text, file=file, row=row, column=column)


def message(item: Any, index: int, *, file: str, row: int, column: str) -> dict:
    """One ``{"role", "content"}`` message, checked; other keys are dropped."""
    if not isinstance(item, dict) or not isinstance(item.get("role"), str) or not isinstance(item.get("content"), str):
        shown = json.dumps(item, default=str)[:120]
        text = f"message {index} must be an object with text 'role' and 'content', got {shown}"
        raise located_error("wrong_type", text, file=file, row=row, column=column)
    checked_text(item["content"], file=file, row=row, column=column)
    return {"role": item["role"], "content": item["content"]}


def is_hh_transcript(text: str) -> bool:
    """True for Anthropic HH-RLHF text: starts with a Human turn and has an Assistant turn."""
    return text.lstrip().startswith("Human:") and "\n\nAssistant:" in text


def parse_hh_transcript(text: str) -> list[dict]:
    """``"\\n\\nHuman: a\\n\\nAssistant: b"`` -> user/assistant messages with stripped text."""
    parts = _HH_TURN.split("\n\n" + text.lstrip())  # ["", role, text, role, text, ...]
    return [
        {"role": _HH_ROLES[role], "content": content.strip()}
        for role, content in zip(parts[1::2], parts[2::2])
    ]


def as_prompt(value: Any, *, file: str, row: int, column: str) -> tuple[list[dict], bool]:
    """(the prompt as messages, whether the cell was a conversation). Plain text is one user message; a trailing
    empty assistant cue is dropped."""
    conversation = as_conversation(value, file=file, row=row, column=column)
    if isinstance(conversation, str):
        return [{"role": "user", "content": conversation}], False
    if conversation and conversation[-1]["role"] == "assistant" and not conversation[-1]["content"].strip():
        conversation = conversation[:-1]  # the HH split form ends with "\n\nAssistant:" awaiting the reply
    return conversation, True


def split_reply(value: Any, *, file: str, row: int, column: str) -> tuple[list[dict], str, bool]:
    """(messages before the final reply, final reply text stripped, whether the cell was a conversation)."""
    conversation = as_conversation(value, file=file, row=row, column=column)
    if isinstance(conversation, str):
        return [], conversation.strip(), False
    if not conversation or conversation[-1]["role"] != "assistant":
        last = conversation[-1]["role"] if conversation else "none, the list is empty"
        text = f"a conversation must end with the assistant's reply (last role: {last})"
        raise located_error("wrong_type", text, file=file, row=row, column=column)
    return conversation[:-1], conversation[-1]["content"].strip(), True


def _same_turns(first: list[dict], second: list[dict]) -> bool:
    return all(a["role"] == b["role"] and a["content"].strip() == b["content"].strip() for a, b in zip(first, second))


def context(prompt: list[dict], before_reply: list[dict]) -> list[dict]:
    """The conversation a reply answers.

    When the reply's own preceding messages contain the prompt as a run of turns (the prompt repeated at the
    start, or the prompt column holding only the last user turn), they are the whole conversation; otherwise the
    reply continues the prompt: prompt + them.
    """
    if not prompt:
        return before_reply
    width = len(prompt)
    for start in range(len(before_reply) - width, -1, -1):  # the last occurrence: the turn the reply answers
        if _same_turns(before_reply[start:start + width], prompt):
            return before_reply
    return prompt + before_reply


def with_system(messages: list[dict], system: str | None) -> list[dict]:
    """``messages`` with a system prompt first, unless it is empty or the conversation starts with its own."""
    if not system or not system.strip() or (messages and messages[0]["role"] == "system"):
        return messages
    return [{"role": "system", "content": system}] + messages


def display_prompt(messages: list[dict]) -> str:
    """Readable prompt: the user text for a single-turn prompt, else a ``Role: text`` transcript."""
    if len(messages) == 1 and messages[0]["role"] == "user":
        return messages[0]["content"]
    return "\n".join(f"{turn['role'].capitalize()}: {turn['content']}" for turn in messages)
