"""Sweeps: a grid over TrainConfig fields and saved selections, expanded into one run config per point.

The grid is the Cartesian product of the listed values (``{"learning_rate": [1e-5, 5e-6], "beta": [0.1]}``)
and the selections; loss parameters are addressed as ``loss_params.<name>``. Each point's runs are tagged
``sweep:<id>`` so the runs table shows them as one group.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from dpo_engine.errors import UserError

MAX_SWEEP_RUNS = 64


class SweepError(UserError):
    """A sweep value that does not parse as its field's type, or a grid too large to launch."""


@dataclass(frozen=True)
class SweepPoint:
    """One run of a sweep: the overridden values, the selection, and the full config to launch."""

    overrides: dict
    selection: str
    config: dict

    @property
    def label(self) -> str:
        """``lr=1e-05 beta=0.1 on top-k-dm_mul-10pct``: what distinguishes this run inside its sweep."""
        values = " ".join(f"{name.removeprefix('loss_params.')}={value:g}" if isinstance(value, float)
                          else f"{name.removeprefix('loss_params.')}={value}" for name, value in self.overrides.items())
        return f"{values} on {self.selection}".strip()


def parse_values(field: str, text: str, default) -> list:
    """``"1e-5, 5e-6"`` -> ``[1e-05, 5e-06]``, each value cast to the type of the field's ``default``.

    An empty text means the field is not swept: ``[default]``. ``SweepError`` names the field and the value.
    """
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        return [default]
    cast = type(default)
    values = []
    for item in items:
        try:
            if cast is bool:
                values.append({"true": True, "false": False}[item.lower()])
            else:
                values.append(cast(float(item)) if cast is int else cast(item))
        except (KeyError, ValueError):
            raise SweepError(f"sweep field {field}: {item!r} is not a {cast.__name__}") from None
    return values


def expand_sweep(base: dict, grid: dict[str, list], selections: list[str]) -> list[SweepPoint]:
    """Every combination of ``grid`` values x ``selections``, as configs derived from ``base``.

    ``base`` is a run config (TrainConfig fields, ``loss_params`` a dict); a grid key ``loss_params.x`` sets
    ``base["loss_params"]["x"]``. Only fields with more than one value appear in a point's ``overrides``.
    """
    if not selections:
        raise SweepError("sweep selections: pick at least one selection")
    names = list(grid)
    size = len(selections) * _product(len(values) for values in grid.values())
    if size > MAX_SWEEP_RUNS:
        raise SweepError(f"sweep: {size} runs is more than {MAX_SWEEP_RUNS}; list fewer values")
    points = []
    for selection, combination in itertools.product(selections, itertools.product(*grid.values())):
        config = {**base, "loss_params": dict(base.get("loss_params", {}))}
        for name, value in zip(names, combination):
            if name.startswith("loss_params."):
                config["loss_params"][name.removeprefix("loss_params.")] = value
            else:
                config[name] = value
        overrides = {name: value for name, value in zip(names, combination) if len(grid[name]) > 1}
        points.append(SweepPoint(overrides=overrides, selection=selection, config=config))
    return points


def _product(numbers) -> int:
    result = 1
    for number in numbers:
        result *= number
    return result
