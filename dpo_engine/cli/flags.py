"""Command-line flags generated from a job's config dataclass, and the argv that rebuilds a config.

One declaration per setting: a field's type, default and ``metadata["help"]`` become ``--field-name`` (TRL's
habit, without HfArgumentParser's lack of positionals). ``config_to_argv`` is the inverse the job launcher uses,
so no caller writes argv strings by hand.

Supported field types: ``str``, ``int``, ``float``, ``bool`` (``--flag`` / ``--no-flag``), ``X | None`` of
those, ``Literal[...]`` (choices) and ``list[str]`` / ``tuple[str, ...]`` (repeatable values).
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, Literal, get_args, get_origin, get_type_hints


def flag(name: str) -> str:
    """``max_length`` -> ``--max-length``."""
    return "--" + name.replace("_", "-")


def _unwrap_optional(annotation) -> tuple[Any, bool]:
    if get_origin(annotation) in (typing.Union, types.UnionType):
        members = [a for a in get_args(annotation) if a is not type(None)]
        if len(members) == 1 and len(get_args(annotation)) == 2:
            return members[0], True
    return annotation, False


def _argument_options(annotation) -> dict:
    annotation, _ = _unwrap_optional(annotation)
    origin = get_origin(annotation)
    if annotation is bool:
        return {"action": argparse.BooleanOptionalAction}
    if origin is Literal:
        choices = get_args(annotation)
        return {"choices": choices, "type": type(choices[0])}
    if origin in (list, tuple):
        return {"nargs": "*", "type": get_args(annotation)[0]}
    if annotation in (str, int, float):
        return {"type": annotation}
    raise TypeError(f"no command-line form for a field of type {annotation!r}")


def _default(field: dataclasses.Field):
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None


def add_config_arguments(parser: argparse.ArgumentParser, config_cls, *, positional: tuple[str, ...] = (),
                         exclude: tuple[str, ...] = ()) -> None:
    """Add one argument per field of ``config_cls``; ``positional`` fields become positionals, in that order.

    Fields without a default are required. Defaults come from the dataclass alone.
    """
    hints = get_type_hints(config_cls)
    by_name = {field.name: field for field in dataclasses.fields(config_cls)}
    for name in positional:
        field = by_name[name]
        parser.add_argument(name, help=field.metadata.get("help"), **_argument_options(hints[name]))
    for field in dataclasses.fields(config_cls):
        if field.name in positional or field.name in exclude or not field.init:
            continue
        options = _argument_options(hints[field.name])
        required = field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
        parser.add_argument(
            flag(field.name), dest=field.name, default=None if required else _default(field), required=required,
            help=field.metadata.get("help"), **options,
        )


def config_from_args(config_cls, args: argparse.Namespace, **overrides):
    """The config the parsed ``args`` describe (fields missing from ``args`` keep their defaults)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(config_cls) if f.init and hasattr(args, f.name)}
    values.update(overrides)
    hints = get_type_hints(config_cls)
    for name, value in values.items():
        base, _ = _unwrap_optional(hints[name])
        if get_origin(base) is tuple and isinstance(value, list):
            values[name] = tuple(value)
    return config_cls(**values)


def config_to_argv(config, *, positional: tuple[str, ...] = ()) -> list[str]:
    """The argv that `config_from_args` turns back into ``config``: positionals, then every non-default field."""
    argv = []
    for name in positional:
        value = getattr(config, name)
        argv += list(map(str, value)) if isinstance(value, (list, tuple)) else [str(value)]
    for field in dataclasses.fields(config):
        if field.name in positional or not field.init:
            continue
        value = getattr(config, field.name)
        required = field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
        if not required and value == _default(field):
            continue
        if isinstance(value, bool):
            argv.append(flag(field.name) if value else "--no-" + field.name.replace("_", "-"))
        elif isinstance(value, (list, tuple)):
            argv += [flag(field.name), *map(str, value)]
        elif value is not None:
            argv += [flag(field.name), str(value)]
    return argv
