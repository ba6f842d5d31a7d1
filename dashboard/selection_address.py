"""The Margins page's selection rule and its parameters in the page address, so a reload or a shared link opens
the same selection.

Short keys: ``rule`` (threshold, top_k, manual, random, partition, hypothesis), ``ex`` / ``im`` (a threshold
range, ``low,high``), ``pct`` (share of all pairs, 1-100), ``score``, ``pos=1`` (top-k's BeeS filter), ``seed``,
``part`` and ``tau`` (partition; ``tau`` is Selective DPO's dropped share too), ``hyp`` (the field selector),
``w`` (alignment potential's weight), ``cols`` (BeeS-K's margin columns, comma-separated). Example:
``?dataset=ultrafeedback&rule=top_k&pct=20&score=dm_add``.

The address is read only as widget defaults, and only while it names the rule on screen: a widget that already
has a value keeps it, and the parameters of a rule the user just left do not leak into the next one. A value that
does not parse, is out of its widget's range or names an unknown option is ignored (the widget's own default).
Box / lasso keeps only its rule: the picked ids would not fit in an address.

Two view keys hold how the chart is drawn, whatever the rule: ``color`` (the Colour-by column, or ``selection``)
and ``chart`` (``points`` or ``binned``). They are read and written the same way.
"""

from __future__ import annotations

import math

import streamlit as st

RULE = "rule"
KEYS = (RULE, "ex", "im", "pct", "score", "pos", "seed", "part", "tau", "hyp", "w", "cols")
VIEW_KEYS = ("color", "chart")
SEED_MAX = 2**32 - 1  # numpy's seeds are 0 .. 2**32 - 1


def address_rule(rules) -> str | None:
    """The rule the address names, when it is one of ``rules``."""
    rule = st.query_params.get(RULE)
    return rule if rule in rules else None


def address_values(rule: str) -> dict[str, str]:
    """The raw parameter values in the address, ``{}`` unless it names ``rule``."""
    if st.query_params.get(RULE) != rule:
        return {}
    return {key: st.query_params.get(key) for key in KEYS if key != RULE and key in st.query_params}


def address_view(key: str, options) -> str | None:
    """The address's value of the view key ``key`` (one of `VIEW_KEYS`), when it is one of ``options``."""
    return as_choice(st.query_params.get(key), options)


def write_key(key: str, value: str) -> None:
    """Put ``key`` (a selection key or one of `VIEW_KEYS`) in the address, written only when it changes."""
    if st.query_params.get(key) != value:
        st.query_params[key] = value


def write_address(values: dict[str, str]) -> None:
    """Make the address's selection keys hold exactly ``values`` (other keys, such as the dataset, are kept); only
    the keys that change are written."""
    for key in KEYS:
        if key not in values and key in st.query_params:
            del st.query_params[key]
    for key, value in values.items():
        write_key(key, value)


# ---- reading values: None when a value cannot be used ---------------------------------------------------------------


def as_number(text: str | None, low: float, high: float) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) and low <= value <= high else None


def as_int(text: str | None, low: int, high: int) -> int | None:
    try:
        value = int(text)
    except (TypeError, ValueError):
        return None
    return value if low <= value <= high else None


def as_choice(text: str | None, options) -> str | None:
    return text if text in list(options) else None


def as_range(text: str | None, low: float, high: float) -> tuple[float, float] | None:
    """``"a,b"`` with ``low <= a <= b <= high``."""
    parts = str(text).split(",") if text else []
    if len(parts) != 2:
        return None
    bounds = [as_number(part, low, high) for part in parts]
    if None in bounds or bounds[0] > bounds[1]:
        return None
    return bounds[0], bounds[1]


def as_choices(text: str | None, options) -> list[str] | None:
    """The comma-separated names that are ``options``, in the address's order; None when none is."""
    names = [name for name in dict.fromkeys(str(text).split(",")) if name in list(options)] if text else []
    return names or None


# ---- writing values --------------------------------------------------------------------------------------------------


def number_text(value: float) -> str:
    return f"{float(value):.10g}"


# select_pairs parameter -> address key, for the rules other than threshold and box/lasso.
PARAM_KEYS = {"rule": "hyp", "score": "score", "seed": "seed", "part": "part", "tau": "tau", "weight": "w"}


def encode(rule: str, params: dict) -> dict[str, str]:
    """The address values of ``rule`` with the page's ``params`` (as `rule_controls` builds them)."""
    values = {RULE: rule}
    if rule == "threshold":
        for key, column in (("ex", "external_margin"), ("im", "implicit_margin")):
            low, high = params["where"][column]
            if low is not None and high is not None:
                values[key] = f"{number_text(low)},{number_text(high)}"
        return values
    if rule == "manual":
        return values
    if "frac" in params:
        values["pct"] = str(round(params["frac"] * 100))
    for name, key in PARAM_KEYS.items():
        if name in params:
            value = params[name]
            values[key] = number_text(value) if isinstance(value, float) else str(value)
    if rule == "top_k" and "where" in params:
        values["pos"] = "1"
    if params.get("scores"):
        values["cols"] = ",".join(params["scores"])
    return values
