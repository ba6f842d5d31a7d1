"""A stand-in trainer that ignores stop requests and SIGTERM: only SIGKILL ends it (for the escalation test)."""

from __future__ import annotations

import signal
import time


def train(config: dict, run_dir, *, resume=False, should_stop=None, on_progress=None) -> dict:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("stubborn training: ignoring SIGTERM", flush=True)
    for step in range(1, 10_000):
        time.sleep(0.05)
        on_progress(step, 10_000)
    return {"stopped": False, "steps": 10_000, "total_steps": 10_000}
