"""Default selection names that say what the rule took: ``top-k-dm_mul-10pct``, ``random-10pct-s7``, ``box-34``."""

from __future__ import annotations


def _share(params: dict, n_selected: int) -> str:
    """``10pct`` for ``frac=0.1``, ``k500`` for ``k=500``, else the selected count."""
    if params.get("frac") is not None:
        return f"{params['frac'] * 100:g}pct"
    if params.get("k") is not None:
        return f"k{params['k']}"
    return str(n_selected)


def default_selection_name(rule: str, params: dict, n_selected: int) -> str:
    """A name built from ``rule`` and its ``params`` (as given to ``select_pairs``) and the selected count.

    Rules: ``top_k``/``bottom_k`` -> ``top-k-<score>-<share>`` (``-pos`` with the both-margins-≥-0 filter);
    ``random`` -> ``random-<share>-s<seed>``; ``partition`` -> ``<part>-<score>-<share>``; ``threshold`` ->
    ``threshold-<ruled columns>-<count>``; ``manual`` -> ``box-<count>``; a field selector -> ``<rule>-<share>``.
    """
    share = _share(params, n_selected)
    if rule in ("top_k", "bottom_k"):
        name = f"{rule.replace('_', '-')}-{params['score']}-{share}"
        return name + ("-pos" if params.get("where") else "")
    if rule == "random":
        return f"random-{share}-s{params.get('seed', 42)}"
    if rule == "partition":
        return f"{params['part']}-{params['score']}-{share}"
    if rule == "threshold":
        ruled = [column for column, bounds in (params.get("where") or {}).items() if list(bounds) != [None, None]]
        return "-".join(["threshold", *ruled, str(n_selected)]) if ruled else f"all-{n_selected}"
    if rule == "manual":
        return f"box-{n_selected}"
    return f"{rule.replace('_', '-')}-{share}"
