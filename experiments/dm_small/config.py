"""The study's settings (profiles.yaml) and its variants, in the order they run.

A *variant* is one training run plus its evaluation: a subset (a saved selection) and a loss. Keys such as
``dm-mul`` or ``random-s1`` name variants everywhere: run names, evaluation rows, summary rows, ``--only``.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from dpo_engine.errors import UserError
from dpo_engine.paths import REPO_ROOT

STUDY = "dm-small"
PROFILES_FILE = Path(__file__).resolve().with_name("profiles.yaml")
DEFAULT_OUT_ROOT = Path(__file__).resolve().parent / "out"

# Single-margin baselines (methods §1.7): TOP / BOT partitions of one margin.
SINGLE_MARGINS = {"ex": ("external_margin", "Ex"), "im": ("implicit_margin", "Im")}
LOSS_LABELS = {"dpo": "DPO", "simpo": "SimPO", "alpha_dpo": "α-DPO", "dpop": "DPOP", "ipo": "IPO", "cdpo": "cDPO",
               "robust": "robust DPO", "hinge": "hinge"}


@dataclass(frozen=True)
class SubsetSpec:
    """A selection the study saves: ``dpo_engine.selection.select_pairs(table, rule, params)``."""

    key: str          # dm-mul, random-s0, ex-top, full, ...
    rule: str
    params: dict = field(hash=False)
    label: str = ""

    @property
    def selection_name(self) -> str:
        return f"{STUDY}-{self.key}"


@dataclass(frozen=True)
class Variant:
    """One training run of the study: a subset and a loss (the run is named by ``key``)."""

    key: str
    subset: SubsetSpec
    loss: str
    group: str        # fused | random | top | bot | loss | full
    label: str
    optional: bool = False


@dataclass
class Profile:
    """A resolved profile: profiles.yaml ``defaults`` merged with one profile's overrides."""

    name: str
    values: dict

    def __getitem__(self, key):
        return self.values[key]

    def get(self, key, default=None):
        return self.values.get(key, default)

    @property
    def data_path(self) -> Path:
        return resolve_path(self.values["data"])

    @property
    def margins_path(self) -> Path | None:
        return resolve_path(self.values["margins"]) if self.values.get("margins") else None

    def stamp(self, *keys: str) -> str:
        """A short hash of the given top-level settings (what decides whether a stage's output is current)."""
        return stamp({key: self.values.get(key) for key in keys})


def stamp(value) -> str:
    return hashlib.sha1(json.dumps(value, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:12]


def resolve_path(path: str | Path) -> Path:
    """A path from the config or the command line; relative ones are relative to the repository root."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else REPO_ROOT / path


def _merge(base: dict, override: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in (override or {}).items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def profile_names(path: Path = PROFILES_FILE) -> list[str]:
    return list((yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("profiles", {}))


def load_profile(name: str, overrides: dict | None = None, path: Path = PROFILES_FILE) -> Profile:
    """``defaults`` + ``profiles[name]`` + ``overrides`` (command-line options), merged key by key."""
    document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    profiles = document.get("profiles") or {}
    if name not in profiles:
        raise UserError(f"unknown profile '{name}' (profiles in {path.name}: {', '.join(profiles)})")
    values = _merge(document.get("defaults") or {}, profiles[name] or {})
    values = _merge(values, overrides or {})
    if not 0 < float(values["frac"]) <= 1:
        raise UserError(f"frac must be in (0, 1], got {values['frac']!r}")
    return Profile(name=name, values=values)


def percent(frac: float) -> str:
    value = 100 * frac
    return f"{value:g} %"


def subset_specs(profile: Profile) -> dict[str, SubsetSpec]:
    """Every selection a variant may use, by key."""
    frac = float(profile["frac"])
    share = percent(frac)
    specs = [
        SubsetSpec("dm-mul", "top_k", {"score": "dm_mul", "frac": frac}, f"DM-MUL {share}"),
        SubsetSpec("dm-add", "top_k", {"score": "dm_add", "frac": frac}, f"DM-ADD {share}"),
    ]
    for seed in profile["random_seeds"]:
        specs.append(SubsetSpec(f"random-s{seed}", "random", {"frac": frac, "seed": int(seed)}, f"Random {share} (seed {seed})"))
    for short, (column, label) in SINGLE_MARGINS.items():
        for part, word in (("top", "TOP"), ("bot", "BOT")):
            specs.append(SubsetSpec(f"{short}-{part}", "partition", {"score": column, "part": part, "frac": frac},
                                    f"{label}-{word} {share}"))
    specs.append(SubsetSpec("full", "manual", {}, "Full data"))  # pair_ids filled in when the data is known
    return {spec.key: spec for spec in specs}


def all_variants(profile: Profile) -> list[Variant]:
    """Every variant of the profile, most informative first (so a partial run already answers the main question).

    Order: DM-MUL, random seed 0, Ex-BOT / Im-BOT, Ex-TOP / Im-TOP, DM-ADD, the other random seeds, the loss
    variants on the DM-MUL subset, full data.
    """
    specs = subset_specs(profile)
    seeds = [int(seed) for seed in profile["random_seeds"]]
    optional = set(profile.get("optional") or [])

    def variant(key: str, subset_key: str, group: str, loss: str = "dpo", label: str | None = None) -> Variant:
        spec = specs[subset_key]
        return Variant(key, spec, loss, group, label or spec.label, optional=key in optional)

    ordered = [variant("dm-mul", "dm-mul", "fused")]
    if seeds:
        ordered.append(variant(f"random-s{seeds[0]}", f"random-s{seeds[0]}", "random"))
    ordered += [variant("ex-bot", "ex-bot", "bot"), variant("im-bot", "im-bot", "bot"),
                variant("ex-top", "ex-top", "top"), variant("im-top", "im-top", "top"),
                variant("dm-add", "dm-add", "fused")]
    ordered += [variant(f"random-s{seed}", f"random-s{seed}", "random") for seed in seeds[1:]]
    for loss in profile.get("loss_variants") or []:
        if loss == "dpo":
            continue  # the dm-mul variant is DM-MUL with DPO
        ordered.append(variant(f"dm-mul-{loss}", "dm-mul", "loss", loss,
                               f"{specs['dm-mul'].label} · {LOSS_LABELS.get(loss, loss)}"))
    ordered.append(variant("full", "full", "full"))
    return ordered


def selected_variants(profile: Profile, *, only: list[str] | None = None, with_optional: bool = False) -> list[Variant]:
    """The variants this invocation runs, in study order: ``only`` when given; else the profile's ``variants`` list
    (or all of them) without the optional ones unless ``with_optional``. Unknown keys are errors."""
    every = all_variants(profile)
    known = {variant.key: variant for variant in every}
    wanted = profile.get("variants", "all")
    keys = list(known) if wanted in (None, "all") else list(wanted)
    for key in [*keys, *(only or [])]:
        if key not in known:
            raise UserError(f"unknown variant '{key}' (known: {', '.join(known)})")
    if only:  # named explicitly: run them, whether or not the profile lists them or calls them optional
        return [variant for variant in every if variant.key in only]
    return [variant for variant in every if variant.key in keys and (with_optional or not variant.optional)]
