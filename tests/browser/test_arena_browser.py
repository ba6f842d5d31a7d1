"""The Arena page in a real browser: it renders its launch form on an empty workspace, with a screenshot."""

from __future__ import annotations

from browser_helpers import screenshot, wait_for_app


def test_the_arena_page_renders_its_form(page):
    page.goto("/arena")
    wait_for_app(page)
    page.get_by_text("Start an arena").wait_for()
    page.get_by_text("No arena yet").wait_for()
    assert page.get_by_test_id("stException").count() == 0
    screenshot(page, "arena")
