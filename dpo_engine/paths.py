"""Where Margin Lab keeps things.

- model and score cache: ``$DPO_ENGINE_CACHE`` (default ``~/.cache/dpo_engine``);
- workspace (runs, selections, evaluations, registry): ``$MARGIN_LAB_HOME`` (default ``~/.margin_lab``);
- bundled assets shipped in the repository: ``assets/``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from dpo_engine.errors import UserError

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


# One rule for every name a user gives a saved thing (selection, run, evaluation): it becomes part of a file or
# directory name inside the workspace, so it must not be able to name a path elsewhere.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.-]{0,79}$")
NAME_RULE = "1 to 80 letters, digits, spaces, '_', '.' or '-', starting with a letter or digit"


def check_name(name: str, what: str = "name") -> str:
    """``name`` unchanged when it follows ``NAME_RULE``; else ``UserError`` naming ``what`` and the rule."""
    if not isinstance(name, str) or not NAME_PATTERN.match(name) or name != name.strip() or ".." in name:
        raise UserError(f"{what} {name!r} is not allowed: use {NAME_RULE} (no '..', no leading or trailing space)")
    return name


def workspace_file(subdir: str, name: str, suffix: str, what: str = "name") -> Path:
    """``$MARGIN_LAB_HOME/<subdir>/<name><suffix>`` for a checked ``name``: always inside the workspace."""
    path = workspace_subdir(subdir) / f"{check_name(name, what)}{suffix}"
    if path.resolve().parent != workspace_subdir(subdir).resolve():
        raise UserError(f"{what} {name!r} would be saved outside {workspace_subdir(subdir)}")
    return path


def slug(text: str | None, separator: str = "-", max_length: int = 60) -> str:
    """``text`` as a file-name fragment: runs of anything but letters, digits, '.', '_' and '-' become
    ``separator``, leading and trailing '.', '_', '-' are dropped; ``""`` when nothing usable is left."""
    return re.sub(r"[^A-Za-z0-9._-]+", separator, text or "").strip("._-")[:max_length]
