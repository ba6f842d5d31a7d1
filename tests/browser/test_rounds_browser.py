"""The Rounds page in a real browser on the shipped demo's two loops (docs/rounds.md, CPU run 3), with a screenshot."""

from __future__ import annotations

from browser_helpers import screenshot, wait_for_app


def test_the_demo_loops_side_by_side(page, server_env, monkeypatch):
    from dpo_engine.demo import install_demo
    from dpo_engine.rounds import list_loops, round_summary

    monkeypatch.setenv("MARGIN_LAB_HOME", server_env["MARGIN_LAB_HOME"])  # the served app's workspace
    install_demo()  # as `make demo` does; a no-op when another test of this session installed it
    assert {"demo-dm25", "demo-all"} <= set(list_loops())
    expected = {name: round_summary(name).win_rate.round(1).tolist() for name in ("demo-dm25", "demo-all")}

    page.goto("/rounds")
    wait_for_app(page)
    chart = page.locator(".st-key-win_rates .js-plotly-plot")
    chart.wait_for()
    drawn = chart.evaluate("node => node._fullData.map(t => [t.name, Array.from(t.y, v => Math.round(v * 10) / 10)])")
    assert {name: values for name, values in drawn} == expected  # two loops, a win rate per round
    page.get_by_text("Selection: top 25% by dm_add").wait_for()
    page.get_by_text("Selection: every online pair").wait_for()
    assert page.get_by_test_id("stException").count() == 0
    screenshot(page, "rounds-demo")
