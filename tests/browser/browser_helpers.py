"""Helpers the browser tests share (a module of its own: two files named conftest.py cannot both be imported)."""

from __future__ import annotations

import re
from pathlib import Path

from playwright.sync_api import TimeoutError as PlaywrightTimeoutError
from playwright.sync_api import expect

REPO_ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO_ROOT / "docs" / "screenshots"
SHIPPED_MARGINS = REPO_ROOT / "assets" / "margins" / "ultrafeedback.parquet"


def wait_for_app(page, timeout: float = 60_000) -> None:
    """Streamlit's own readiness rule: connected, and the script has finished running."""
    page.wait_for_selector("[data-testid='stApp'][data-test-connection-state='CONNECTED']", timeout=timeout)
    page.wait_for_selector("[data-testid='stApp'][data-test-script-state='notRunning']", timeout=timeout)


def choose(page, label: str, option: str | re.Pattern, tries: int = 3) -> None:
    """Pick `option` in the selectbox `label` as a user does: open its list, click the entry, see it chosen.

    The script must have finished first: a rerun can redraw the widget under the click and shut its list (in CI
    an option once never showed in 45 s). A list that still shuts is opened again.
    """
    wait_for_app(page)
    box = page.get_by_role("combobox", name=label, exact=True)
    entry = page.get_by_role("option", name=option, exact=isinstance(option, str))
    for attempt in range(tries):
        box.click()
        try:
            entry.click(timeout=10_000)
            break
        except PlaywrightTimeoutError:
            if attempt == tries - 1:
                raise
            page.keyboard.press("Escape")
    expect(box).to_have_value(option)


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
