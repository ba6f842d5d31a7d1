"""Write pairs in the formats TRL trains on, and fingerprint them.

A pairs DataFrame (`dpo_engine.data.pairs`) is written in TRL's *conversational* preference format when its
source was a conversation (``prompt``, ``chosen`` and ``rejected`` all message lists: the prompt's messages, then
one assistant message each), and in TRL's *standard* format otherwise (all three plain strings). TRL 1.16's
``DPOTrainer`` reads either as it is, and ``load_pairs`` reads both back to the same pairs. The source's other
columns (``extra``) are written beside them, as are the scores when there are any.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pandas as pd

from dpo_engine.data.report import located_error
from dpo_engine.files import atomic_write_text

# One encoder for every row: json.dumps with options builds a new encoder per call, a third of the time at 60,000 pairs.
_CANONICAL_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def is_conversational(pairs: pd.DataFrame) -> bool:
    """True when any pair came from a conversation (frames without the column: any prompt beyond one user turn)."""
    if "conversational" in pairs:
        return bool(pairs["conversational"].any())
    return any(len(messages) != 1 or messages[0]["role"] != "user" for messages in pairs["prompt_messages"])


def pairs_to_records(pairs: pd.DataFrame) -> list[dict]:
    """Pairs as TRL-format dicts that ``load_pairs`` reads back to the same ids, prompts, responses and scores.

    Score columns are left out when they are all NaN (the source had none); a NaN among real scores is written as
    null and reloads as NaN with ``bad_score``. Extra source columns never replace the pair's own fields.
    """
    conversational = is_conversational(pairs)
    score_columns = [name for name in ("score_chosen", "score_rejected") if pairs[name].notna().any()]
    extras = pairs["extra"].tolist() if "extra" in pairs else [""] * len(pairs)
    records = []
    for pair, extra in zip(pairs.itertuples(index=False), extras):
        messages = [{"role": message["role"], "content": message["content"]} for message in pair.prompt_messages]
        if conversational:
            record = {
                "pair_id": str(pair.pair_id),
                "prompt": messages,
                "chosen": [{"role": "assistant", "content": pair.chosen}],
                "rejected": [{"role": "assistant", "content": pair.rejected}],
            }
        else:
            record = {"pair_id": str(pair.pair_id), "prompt": messages[0]["content"], "chosen": pair.chosen,
                      "rejected": pair.rejected}
        for name in score_columns:
            score = getattr(pair, name)
            record[name] = None if pd.isna(score) else float(score)
        for key, value in (json.loads(extra) if extra else {}).items():
            record.setdefault(key, value)
        records.append(record)
    return records


def save_pairs(pairs: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write pairs to ``.jsonl`` or ``.parquet`` (by suffix) in TRL's format; ``load_pairs(path)`` reads them back."""
    path = Path(path).expanduser()
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".parquet"):
        raise located_error("unknown_format", "cannot write this format; use a .jsonl or .parquet path", file=str(path))
    records = pairs_to_records(pairs)
    if suffix == ".jsonl":
        atomic_write_text(path, "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records))
    else:
        import pyarrow
        import pyarrow.parquet

        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.tmp")
        pyarrow.parquet.write_table(pyarrow.Table.from_pylist(records), temporary)
        os.replace(temporary, path)  # readers see the old file or the new one, never half of it
    return path


def fingerprint(pairs: pd.DataFrame) -> str:
    """A stable hash of the pairs' ids and texts, independent of row order (cache keys, selections).

    Each pair, in ``pair_id`` order, is the compact JSON ``[pair_id, prompt_messages, chosen, rejected]`` plus a
    newline; the hash is the first 16 hex digits of the SHA-1 of those lines.
    """
    digest = hashlib.sha1()
    ordered = pairs.sort_values("pair_id", kind="stable")
    columns = (ordered[name].tolist() for name in ("pair_id", "prompt_messages", "chosen", "rejected"))
    for pair_id, messages, chosen, rejected in zip(*columns):  # lists: iterating pandas' Arrow strings is slower
        digest.update(_CANONICAL_JSON.encode([str(pair_id), list(messages), chosen, rejected]).encode("utf-8") + b"\n")
    return digest.hexdigest()[:16]
