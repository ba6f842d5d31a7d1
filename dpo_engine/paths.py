"""Where Margin Lab keeps things.

- model and score cache: ``$DPO_ENGINE_CACHE`` (default ``~/.cache/dpo_engine``);
- workspace (runs, selections, evaluations, registry): ``$MARGIN_LAB_HOME`` (default ``~/.margin_lab``);
- bundled assets shipped in the repository: ``assets/``.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
ASSETS_DIR = REPO_ROOT / "assets"


def cache_dir() -> Path:
    """Model conversions and cached scores. Created on first use."""
    path = Path(os.environ.get("DPO_ENGINE_CACHE", Path.home() / ".cache" / "dpo_engine")).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def home_dir() -> Path:
    """The workspace: runs/, selections/, evals/ and registry.sqlite. Created on first use."""
    path = Path(os.environ.get("MARGIN_LAB_HOME", Path.home() / ".margin_lab")).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def workspace_subdir(name: str) -> Path:
    """``home_dir()/name``, created on first use."""
    path = home_dir() / name
    path.mkdir(parents=True, exist_ok=True)
    return path
