"""The Margins page's warm-up rings and a field selector in a real browser, with a screenshot."""

from __future__ import annotations

from browser_helpers import screenshot, wait_for_app
from playwright.sync_api import expect


def test_warmup_pairs_are_ringed_and_a_field_selector_selects(page):
    page.goto("/margins")  # the app opens on Home
    wait_for_app(page)
    page.locator(".js-plotly-plot").first.wait_for()
    rings = page.evaluate(
        "() => document.querySelector('.js-plotly-plot')._fullData"
        ".filter(t => (t.name || '').startsWith('warm-up pairs')).map(t => t.x.length)"
    )
    assert rings == [120]
    assert page.locator(".js-plotly-plot .legendtext").filter(has_text="warm-up pairs (120)").count() == 1

    page.get_by_test_id("stButtonGroup").first.get_by_text("Hypotheses", exact=True).click()
    wait_for_app(page)
    page.get_by_test_id("stSelectbox").filter(has_text="Hypothesis").wait_for()
    metric = page.get_by_test_id("stMetric").filter(has_text="Selected pairs").get_by_test_id("stMetricValue")
    expect(metric).to_have_text("120")  # smallest implicit gap, 10 % of 1,200; retried: the rerun may not have begun
    screenshot(page, "margins-hypotheses", shows_margins=True)
