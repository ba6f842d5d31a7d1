"""Time as every engine file records it: ISO-8601 UTC to the second, and ids that sort by creation time."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone


def utc_now_iso() -> str:
    """Now, e.g. ``2026-12-02T01:30:00+00:00``: the one timestamp format of run, job, selection and margins files."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def stamped_id(prefix: str, random_hex: int = 4) -> str:
    """``<prefix>-YYYYMMDD-HHMMSS-<hex>`` in local time: ids that sort by creation and do not collide."""
    return f"{prefix}-{datetime.now().strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:random_hex]}"
