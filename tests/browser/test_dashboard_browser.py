"""The dashboard in a real browser: rendering, plotly box selection, sliders, page screenshots."""

from __future__ import annotations

from browser_helpers import screenshot, wait_for_app

N_DEMO_PAIRS = 1200


def selected_count(page) -> int:
    metric = page.get_by_test_id("stMetric").filter(has_text="Selected pairs").get_by_test_id("stMetricValue")
    return int(metric.inner_text().replace(",", ""))


def open_margins(page) -> None:
    page.goto("/margins")  # the app opens on Home
    wait_for_app(page)
    page.locator(".js-plotly-plot").first.wait_for()


def scatter_points(page) -> int:
    # Plotly 6+ ships arrays base64-encoded in `data`; `_fullData` holds the decoded typed arrays.
    return page.evaluate("() => document.querySelector('.js-plotly-plot')._fullData[0].x.length")


def test_a_deep_link_to_the_data_page_works_on_a_fresh_server(page):
    """The first request of the session: a pages/ folder would make Streamlit run data.py without app.py here."""
    page.goto("/data")
    wait_for_app(page)
    page.get_by_text("1,200 pairs loaded").wait_for()
    page.get_by_text("Browse pairs").wait_for()
    page.locator(".js-plotly-plot").first.wait_for()  # the reply-length chart: chosen and rejected, all 1,200 each
    drawn = page.evaluate("""() => document.querySelector('.js-plotly-plot')._fullData
                                 .map(t => [t.name, Array.from(t.y).slice(0, -1).reduce((a, b) => a + b, 0)])""")
    assert drawn == [["chosen", N_DEMO_PAIRS], ["rejected", N_DEMO_PAIRS]]
    assert page.get_by_test_id("stException").count() == 0
    screenshot(page, "data")


def test_demo_scatter_shows_every_pair_and_a_threshold_slider_selects(page):
    open_margins(page)
    assert page.evaluate("() => document.querySelector('.js-plotly-plot').data[0].type") == "scatter"  # SVG below figures.SVG_POINTS_UP_TO
    assert scatter_points(page) == N_DEMO_PAIRS
    assert selected_count(page) == N_DEMO_PAIRS  # thresholds start wide open
    screenshot(page, "margins", shows_margins=True)

    thumb = page.get_by_test_id("stSlider").filter(has_text="External margin").get_by_role("slider").first
    thumb.focus()
    for _ in range(3):  # 0.04 per step: enough to drop the 136 pairs with a zero external margin
        thumb.press("ArrowRight")
    page.wait_for_function(
        f"() => [...document.querySelectorAll('[data-testid=stMetric]')].some(m => m.innerText.includes('Selected pairs') && !m.innerText.includes('{N_DEMO_PAIRS:,}'))"
    )
    wait_for_app(page)
    assert 0 < selected_count(page) < N_DEMO_PAIRS
    assert scatter_points(page) == N_DEMO_PAIRS  # the chart still shows every pair, the rest dimmed


def test_box_select_changes_selection_and_table(page):
    open_margins(page)
    page.get_by_role("radio", name="Box / lasso").click()
    # wait_for_app alone can return before the switch's rerun starts, while the threshold rule's count still shows.
    page.get_by_text("Nothing selected yet.").wait_for()
    wait_for_app(page)
    assert selected_count(page) == 0
    # Mark the chart's element: a figure that changed would make Streamlit mount a new one (a full plotly.js draw).
    page.evaluate("() => { document.querySelector('.js-plotly-plot').marginLabProbe = true }")
    drag = page.locator(".js-plotly-plot .draglayer .x2y2 .nsewdrag").first
    box = drag.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.55, box["y"] + box["height"] * 0.1)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.75, box["y"] + box["height"] * 0.5, steps=8)
    page.mouse.move(box["x"] + box["width"] * 0.95, box["y"] + box["height"] * 0.9, steps=8)
    page.mouse.up()
    page.get_by_text("Selected pairs").first.wait_for()
    page.wait_for_function(
        "() => [...document.querySelectorAll('[data-testid=stMetric]')].some(m => m.innerText.includes('Selected pairs') && !/\\n0$/.test(m.innerText.trim()))"
    )
    wait_for_app(page)
    count = selected_count(page)
    assert 0 < count < N_DEMO_PAIRS
    # The figure did not change, so the chart was not mounted anew: plotly still shows the box it drew, and the
    # page counts the same pairs.
    page.wait_for_timeout(2000)
    assert selected_count(page) == count
    assert page.evaluate("() => document.querySelector('.js-plotly-plot').marginLabProbe") is True
    assert page.evaluate("() => document.querySelector('.js-plotly-plot')._fullData[0].selectedpoints.length") == count
    # The selected pairs now have a table (it was "Nothing selected yet") and a full-text viewer.
    page.get_by_test_id("stHeading").filter(has_text="Selected pairs").wait_for()
    assert page.get_by_text("Nothing selected yet").count() == 0
    assert page.get_by_test_id("stDataFrame").count() >= 2  # margin stats and the selected pairs
    screenshot(page, "select-box", shows_margins=True)


CELL_TOTALS = """() => { const cells = document.querySelector('.js-plotly-plot').data[0].customdata.flat();
                        return [cells.reduce((sum, c) => sum + c[0], 0), cells.reduce((sum, c) => sum + c[1], 0)]; }"""


def test_binned_chart_draws_cells_that_follow_a_threshold(page):
    open_margins(page)
    page.get_by_role("radio", name="Binned").click()
    page.wait_for_function("() => document.querySelector('.js-plotly-plot')?.data?.[0]?.type === 'heatmap'")
    wait_for_app(page)
    assert page.evaluate(CELL_TOTALS) == [N_DEMO_PAIRS, N_DEMO_PAIRS]  # [pairs, selected]: thresholds wide open
    assert page.locator(".js-plotly-plot .heatmaplayer image").count() == 2  # both layers drawn as images

    thumb = page.get_by_test_id("stSlider").filter(has_text="External margin").get_by_role("slider").first
    thumb.focus()
    for _ in range(3):
        thumb.press("ArrowRight")
    page.wait_for_function(
        f"() => [...document.querySelectorAll('[data-testid=stMetric]')].some(m => m.innerText.includes('Selected pairs') && !m.innerText.includes('{N_DEMO_PAIRS:,}'))"
    )
    wait_for_app(page)
    selected = selected_count(page)
    assert 0 < selected < N_DEMO_PAIRS
    page.wait_for_function(f"() => ({CELL_TOTALS})()[1] === {selected}")  # the new chart's cells hold the new selection
    assert page.evaluate(CELL_TOTALS)[0] == N_DEMO_PAIRS
    screenshot(page, "select-binned", shows_margins=True)
