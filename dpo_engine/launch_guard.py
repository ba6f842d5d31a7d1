"""De-duplicating launches: the same config started twice within a few seconds (a double click, a form sent
by Enter and then by the button) starts once.

A launch claims ``$MARGIN_LAB_HOME/launch-claims/<kind>-<config hash>``; a second claim of the same hash
inside the window is refused. The claim is an exclusive file creation, so two processes cannot both win.
"""

from __future__ import annotations

import hashlib
import json
import os
import time

from dpo_engine.paths import workspace_subdir

DUPLICATE_WINDOW_S = 10.0


def config_hash(config: dict) -> str:
    """A stable hex digest of a JSON-able config: key order does not matter, values do."""
    text = json.dumps(config, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def claim_launch(kind: str, config: dict, *, window_s: float = DUPLICATE_WINDOW_S, now: float | None = None) -> bool:
    """True when this launch may go ahead; False when the same ``kind`` + ``config`` was claimed less than
    ``window_s`` seconds ago (``now`` in epoch seconds, for tests)."""
    now = time.time() if now is None else now
    path = workspace_subdir("launch-claims") / f"{kind}-{config_hash(config)}"
    try:
        if now - path.stat().st_mtime < window_s:
            return False
        path.unlink()  # an old claim: this is a deliberate relaunch
    except FileNotFoundError:
        pass
    try:
        descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False  # another process claimed it between our check and our creation
    os.close(descriptor)
    os.utime(path, (now, now))
    return True
