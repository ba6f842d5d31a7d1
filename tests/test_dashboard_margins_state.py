"""The Margins page's selection in the address (a reload or a shared link opens it) and its per-rerun caches
(AppTest, no browser)."""

from __future__ import annotations

import streamlit as st
from streamlit.testing.v1 import AppTest

from dashboard import components, figures
from dashboard import selection_address as address
from test_dashboard_pages import APP, TIMEOUT, metric, scatter_spec, with_margins  # noqa: F401 (a fixture)


def opened(**params: str) -> AppTest:
    """A new session (as after a reload) opened on Margins & Select at an address holding ``params``."""
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    for key, value in params.items():
        at.query_params[key] = value
    at.switch_page("views/margins.py")
    at.run()
    assert not at.exception, [error.message for error in at.exception]
    return at


def address_of(at: AppTest) -> dict[str, str]:
    """The address's selection keys after the last run (AppTest may hold a value as a one-item list)."""
    def last(value):
        return value[-1] if isinstance(value, list) else value

    return {key: last(at.query_params[key]) for key in address.KEYS if key in at.query_params}


def view_of(at: AppTest) -> dict[str, str]:
    """The address's view keys (colour, chart kind) after the last run."""
    return {key: value[-1] if isinstance(value, list) else value
            for key, value in ((key, at.query_params[key]) for key in address.VIEW_KEYS if key in at.query_params)}


def test_a_reload_restores_the_rule_and_its_parameters_from_the_address(with_margins):  # noqa: F811
    first = opened(dataset="ultrafeedback")
    first.button_group[0].set_value("top_k").run()
    first.slider(key=f"pct-top_k-{with_margins}").set_value(20).run()
    first.selectbox(key=f"score-{with_margins}").set_value("dm_add").run()
    first.checkbox(key=f"pos-{with_margins}").check().run()
    saved = address_of(first)
    assert saved == {"rule": "top_k", "pct": "20", "score": "dm_add", "pos": "1"}
    count = metric(first, "Selected pairs")

    reloaded = opened(dataset="ultrafeedback", **saved)
    assert reloaded.button_group[0].value == "top_k"
    assert reloaded.slider(key=f"pct-top_k-{with_margins}").value == 20
    assert reloaded.selectbox(key=f"score-{with_margins}").value == "dm_add"
    assert reloaded.checkbox(key=f"pos-{with_margins}").value
    assert metric(reloaded, "Selected pairs") == count
    assert reloaded.text_input(key="selection_name").value == first.text_input(key="selection_name").value


def test_threshold_random_and_hypothesis_parameters_come_back(with_margins):  # noqa: F811
    at = opened(rule="threshold", ex="0.5,3", im="-1,2")
    assert at.slider(key=f"ex-{with_margins}").value == (0.5, 3.0)
    assert at.slider(key=f"im-{with_margins}").value == (-1.0, 2.0)
    assert address_of(at) == {"rule": "threshold", "ex": "0.5,3", "im": "-1,2"}  # kept as it was given
    assert metric(at, "Selected pairs") != "1,200"

    at = opened(rule="random", pct="30", seed="7")
    assert at.slider(key=f"pct-random-{with_margins}").value == 30
    assert at.number_input(key=f"seed-{with_margins}").value == 7
    assert metric(at, "Selected pairs") == "360"

    at = opened(rule="partition", pct="15", score="dm_mul", part="mid", tau="0.5")
    assert at.radio(key=f"part-{with_margins}").value == "mid"
    assert at.number_input(key=f"tau-{with_margins}").value == 0.5

    at = opened(rule="hypothesis", hyp="alignment_potential", w="0.3", pct="5")
    assert at.selectbox(key=f"hyp-{with_margins}").value == "alignment_potential"
    assert at.number_input(key=f"apw-{with_margins}").value == 0.3
    assert metric(at, "Selected pairs") == "60"


def test_garbage_in_the_address_falls_back_to_the_defaults(with_margins):  # noqa: F811
    at = opened(rule="no_such_rule", pct="50")
    assert at.button_group[0].value == "threshold"
    assert metric(at, "Selected pairs") == "1,200"
    assert address_of(at) == {"rule": "threshold"}  # the address is rewritten from what the page shows

    at = opened(rule="threshold", ex="-1e9,1e9", im="3,-3")  # out of the slider's range; low above high
    assert metric(at, "Selected pairs") == "1,200"
    assert address_of(at) == {"rule": "threshold"}

    at = opened(rule="top_k", pct="1000", score="not_a_column", pos="maybe")
    assert at.slider(key=f"pct-top_k-{with_margins}").value == 10
    assert at.selectbox(key=f"score-{with_margins}").value == "dm_mul"
    assert not at.checkbox(key=f"pos-{with_margins}").value
    assert metric(at, "Selected pairs") == "120"

    at = opened(rule="random", pct="abc", seed="-5")
    assert at.slider(key=f"pct-random-{with_margins}").value == 10
    assert at.number_input(key=f"seed-{with_margins}").value != -5

    at = opened(rule="hypothesis", hyp="../../etc", w="nan", tau="inf", cols="x,y")
    assert not at.exception
    assert at.selectbox(key=f"hyp-{with_margins}").value == "smallest_gap"  # the first one offered


def test_the_parameters_of_the_rule_left_do_not_leak_into_the_next(with_margins):  # noqa: F811
    at = opened(rule="top_k", pct="40")
    at.button_group[0].set_value("random").run()
    assert at.slider(key=f"pct-random-{with_margins}").value == 10
    assert address_of(at) == {"rule": "random", "pct": "10", "seed": str(at.number_input(key=f"seed-{with_margins}").value)}


def test_an_unchanged_table_is_ranked_once_and_its_figure_built_once_across_reruns(with_margins, monkeypatch):  # noqa: F811
    st.cache_data.clear()
    st.cache_resource.clear()
    calls = {"ranks": 0, "base": 0, "selection": 0}
    originals = {"ranks": components.pair_ranks, "base": figures.margin_scatter_base,
                 "selection": figures.with_selection}

    def counted(name):
        def call(*args, **kwargs):
            calls[name] += 1
            return originals[name](*args, **kwargs)
        return call

    monkeypatch.setattr(components, "pair_ranks", counted("ranks"))
    monkeypatch.setattr("dashboard.margins_cache.margin_scatter_base", counted("base"))
    monkeypatch.setattr("dashboard.margins_cache.with_selection", counted("selection"))
    at = opened(rule="top_k", pct="10")
    spec = scatter_spec(at)
    assert calls == {"ranks": 1, "base": 1, "selection": 1}
    at.run()  # a rerun that changes nothing
    at.text_input(key="selection_name").set_value("my-name").run()  # a rerun that changes no selection
    assert not at.exception
    assert calls == {"ranks": 1, "base": 1, "selection": 1}
    assert scatter_spec(at) == spec

    at.slider(key=f"pct-top_k-{with_margins}").set_value(20).run()  # a new selection: assembled on the same points
    assert calls == {"ranks": 1, "base": 1, "selection": 2}  # its first row is the same top pair, ranked before
    assert scatter_spec(at) != spec


def test_the_colour_and_the_chart_kind_are_kept_in_the_address(with_margins):  # noqa: F811
    first = opened(rule="top_k", pct="10")
    assert view_of(first) == {"color": "dm_mul", "chart": "points"}  # the defaults are written too
    first.selectbox(key="color_by").set_value("DM-ADD").run()
    first.button_group(key=f"draw-{with_margins}").set_value("binned").run()
    view = view_of(first)
    assert view == {"color": "dm_add", "chart": "binned"}

    reloaded = opened(rule="top_k", pct="10", **view)  # a shared link draws what its sender saw
    assert reloaded.selectbox(key="color_by").value == "DM-ADD"
    assert reloaded.button_group(key=f"draw-{with_margins}").value == "binned"
    assert scatter_spec(reloaded)["data"][0]["type"] == "heatmap"

    garbage = opened(rule="top_k", color="no_such_column", chart="3d")  # unknown values: the defaults
    assert garbage.selectbox(key="color_by").value == "DM-MUL"
    assert garbage.button_group(key=f"draw-{with_margins}").value == "points"
