"""Helpers the browser tests share (a module of its own: two files named conftest.py cannot both be imported)."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO_ROOT / "docs" / "screenshots"
SHIPPED_MARGINS = REPO_ROOT / "assets" / "margins" / "ultrafeedback.parquet"


def wait_for_app(page, timeout: float = 60_000) -> None:
    """Streamlit's own readiness rule: connected, and the script has finished running."""
    page.wait_for_selector("[data-testid='stApp'][data-test-connection-state='CONNECTED']", timeout=timeout)
    page.wait_for_selector("[data-testid='stApp'][data-test-script-state='notRunning']", timeout=timeout)


def screenshot(page, name: str, *, shows_margins: bool = False, max_height: int = 3200) -> None:
    """The whole page as docs/screenshots/<name>.png: Streamlit scrolls inside stMain, so the viewport grows first.

    A page that shows margins is only saved when they are the shipped ones, never the tests' stand-in table.
    """
    if shows_margins and not SHIPPED_MARGINS.exists():
        return
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    viewport = page.viewport_size
    height = page.evaluate("() => document.querySelector('[data-testid=stMain]').scrollHeight")
    page.set_viewport_size({"width": viewport["width"], "height": min(max(height, viewport["height"]), max_height)})
    page.wait_for_timeout(500)  # let plotly relayout to the new size
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))
    page.set_viewport_size(viewport)
