"""Turn a preference pair into token ids, and a list of pairs into one left-padded batch.

Tokenization follows TRL's rule for conversational data (so log-probs match ``DPOTrainer``): the prompt is the chat
template of the prompt messages with the generation prompt; a response is what the template renders for
``prompt + [assistant response]`` after the longest prefix shared with the prompt. Tokenizers without a chat template
get plain text, with EOS appended to each response.

Truncation is explicit: the prompt keeps its last ``max_prompt_length`` tokens (the end of a conversation is what
the response answers), then each response keeps its first ``max_length - len(prompt)`` tokens. ``MAX_LENGTH`` and
``MAX_PROMPT_LENGTH`` are the one declaration of those defaults (scoring's config and the Python API read them).

A job encodes its pairs once (``encode_pairs``: the fast tokenizer on many texts per call) and hands the same
encodings to every pass that needs them. This module imports torch only in ``collate``, so configs can read its
defaults without loading torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from dpo_engine.errors import ConfigError

if TYPE_CHECKING:
    import torch

MAX_LENGTH = 512
MAX_PROMPT_LENGTH = 256
# Pairs whose texts go to the tokenizer in one call: large enough to amortise the per-call cost, small enough
# that the rendered texts of one call stay a few MB.
_ENCODE_CHUNK = 1024


@dataclass(frozen=True)
class EncodedPair:
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]


def template_ids(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> list[int]:
    """Token ids of the chat template applied to ``messages``."""
    encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=True)
    return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)


def prompt_ids(tokenizer, prompt_messages: list[dict]) -> list[int]:
    """The ids a model is conditioned on before it answers (generation uses this too)."""
    if tokenizer.chat_template:
        return template_ids(tokenizer, prompt_messages, add_generation_prompt=True)
    return tokenizer(_plain_prompt(prompt_messages), add_special_tokens=False)["input_ids"]


def encode_pair(
    tokenizer,
    prompt_messages: list[dict],
    chosen: str,
    rejected: str,
    max_length: int = MAX_LENGTH,
    max_prompt_length: int = MAX_PROMPT_LENGTH,
) -> EncodedPair:
    """Token ids of one pair: prompt, chosen response and rejected response (prompt excluded from both)."""
    return encode_pairs(tokenizer, [prompt_messages], [chosen], [rejected], max_length, max_prompt_length)[0]


def encode_pairs(
    tokenizer,
    prompt_messages: Sequence[list[dict]],
    chosen: Sequence[str],
    rejected: Sequence[str],
    max_length: int = MAX_LENGTH,
    max_prompt_length: int = MAX_PROMPT_LENGTH,
) -> list[EncodedPair]:
    """:func:`encode_pair` of many pairs, the ``i``-th from ``prompt_messages[i]``, ``chosen[i]``, ``rejected[i]``.

    The same ids as ``encode_pair`` one by one; the tokenizer gets ``_ENCODE_CHUNK`` pairs' texts per call.
    """
    if max_prompt_length >= max_length:
        raise ConfigError("max_prompt_length", f"must be below max_length ({max_prompt_length} >= {max_length})")
    encoded = []
    for start in range(0, len(prompt_messages), _ENCODE_CHUNK):
        stop = start + _ENCODE_CHUNK
        prompts, with_chosen, with_rejected = _token_ids(
            tokenizer, list(prompt_messages[start:stop]), list(chosen[start:stop]), list(rejected[start:stop])
        )
        encoded += [
            _split(prompt, c, r, max_length, max_prompt_length)
            for prompt, c, r in zip(prompts, with_chosen, with_rejected)
        ]
    return encoded


def _token_ids(tokenizer, messages: list[list[dict]], chosen: list[str], rejected: list[str]):
    """Ids of the prompts and of prompt + chosen, prompt + rejected, as three lists of ``len(messages)`` lists."""
    n = len(messages)
    if tokenizer.chat_template:
        prompts = _ids(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True))
        conversations = [m + [{"role": "assistant", "content": c}] for m, c in zip(messages, chosen)]
        conversations += [m + [{"role": "assistant", "content": r}] for m, r in zip(messages, rejected)]
        answered = _ids(tokenizer.apply_chat_template(conversations, tokenize=True))
    else:
        texts = [_plain_prompt(m) for m in messages]
        prompts = tokenizer(texts, add_special_tokens=False)["input_ids"]
        eos = tokenizer.eos_token
        answered = tokenizer([t + c + eos for t, c in zip(texts, chosen)] + [t + r + eos for t, r in zip(texts, rejected)],
                             add_special_tokens=False)["input_ids"]
    return prompts, answered[:n], answered[n:]


def _ids(encoded) -> list[list[int]]:
    return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)


def _split(prompt: list[int], with_chosen: list[int], with_rejected: list[int], max_length: int,
           max_prompt_length: int) -> EncodedPair:
    """One pair's prompt and responses from the tokenized prompt and conversations, truncated (module docstring)."""
    # Tokens can merge across the prompt/response boundary: the response starts where the sequences diverge.
    prompt_length = min(_common_prefix_length(prompt, with_chosen), _common_prefix_length(prompt, with_rejected))
    kept = prompt[:prompt_length][-max_prompt_length:]
    response_budget = max_length - len(kept)
    return EncodedPair(
        prompt_ids=kept,
        chosen_ids=with_chosen[prompt_length:][:response_budget],
        rejected_ids=with_rejected[prompt_length:][:response_budget],
    )


def collate(pairs: list[EncodedPair], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Left-padded batch of ``2B`` sequences: the ``B`` prompt+chosen rows, then the ``B`` prompt+rejected rows.

    Left padding makes every response end in the last column, so a model needs logits only for the last
    ``max response length + 1`` positions. Returns ``input_ids``, ``attention_mask``, ``position_ids`` (positions
    count real tokens only, as with right padding) and ``response_mask`` (1 on response tokens), all ``(2B, L)``.
    """
    import torch

    sequences = [p.prompt_ids + p.chosen_ids for p in pairs] + [p.prompt_ids + p.rejected_ids for p in pairs]
    response_lengths = [len(p.chosen_ids) for p in pairs] + [len(p.rejected_ids) for p in pairs]
    width = max(len(sequence) for sequence in sequences)
    input_ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    response_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, (sequence, response_length) in enumerate(zip(sequences, response_lengths)):
        input_ids[row, width - len(sequence) :] = torch.tensor(sequence, dtype=torch.long)
        attention_mask[row, width - len(sequence) :] = 1
        response_mask[row, width - response_length :] = 1
    position_ids = (attention_mask.cumsum(dim=-1) - 1).clamp(min=0)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "position_ids": position_ids,
        "response_mask": response_mask,
    }


def _plain_prompt(prompt_messages: list[dict]) -> str:
    """A prompt for tokenizers without a chat template: the messages' text, one per paragraph."""
    return "\n\n".join(message["content"] for message in prompt_messages) + "\n\n"


def _common_prefix_length(a: list[int], b: list[int]) -> int:
    if b[: len(a)] == a:  # the usual case, compared in C
        return len(a)
    length = 0
    for x, y in zip(a, b):
        if x != y:
            break
        length += 1
    return length
