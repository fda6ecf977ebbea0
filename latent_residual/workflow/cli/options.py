"""Flags from config dataclasses: one click option per field, and the config built back from parsed options.

The commands that use them are in ``commands.py`` and ``experiments.py``.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Callable
from typing import Any

import click


def _option_name(prefix: str, name: str) -> tuple[str, str]:
    return f"{prefix}{name}".replace("_", "-"), option_dest(prefix, name)


def option_dest(prefix: str, name: str) -> str:
    """The parameter name of field ``name``'s option under ``prefix`` (``"fit-"``, ``"lr"`` -> ``"fit_lr"``)."""
    return f"{prefix}{name}".replace("-", "_").replace(".", "_")


def json_object(value: str, option: str) -> dict[str, Any]:
    """A JSON object given on the command line (a dict option, ``--env-kwargs``), or a usage error naming ``option``."""
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"expected a JSON object, got {value!r} ({exc}).", param_hint=option) from exc
    if not isinstance(parsed, dict):
        raise click.BadParameter(f"expected a JSON object, got {value!r}.", param_hint=option)
    return parsed


def config_options(
    config_cls: type, *, prefix: str = "", exclude: tuple[str, ...] = (), defaults: Any = None
) -> Callable:
    """Decorate a click command with one option per field of ``config_cls``.

    ``--hidden`` maps to field ``hidden`` (with ``prefix="fit-"``, ``--fit-lr`` to ``lr``); the
    field's ``help`` metadata and default show in ``--help``. Dict fields take JSON, tuple
    fields repeat (``--transitions 10000 --transitions 40000``), and an empty value empties one
    (``--residual-extra-inputs ''``). Build the config back with :func:`config_from_options`.

    :param defaults: An instance whose values are the defaults, instead of the fields' own.
    """
    hints = typing.get_type_hints(config_cls)

    def decorate(command: Callable) -> Callable:
        for field in reversed(dataclasses.fields(config_cls)):
            if not field.init or field.name in exclude or field.name in ("adapter_type", "format_version"):
                continue
            flag, dest = _option_name(prefix, field.name)
            kind = hints[field.name]
            if defaults is not None:
                default = getattr(defaults, field.name)
            elif field.default is not dataclasses.MISSING:
                default = field.default
            else:
                default = field.default_factory()
            common = {"show_default": True, "help": field.metadata.get("help", "")}
            if kind is bool:
                option = click.option(f"--{flag}/--no-{flag}", dest, default=default, **common)
            elif typing.get_origin(kind) is tuple:
                item = typing.get_args(kind)[0]
                option = click.option(f"--{flag}", dest, multiple=True, type=item, default=default, **common)
            elif typing.get_origin(kind) is dict:
                option = click.option(f"--{flag}", dest, type=str, default=json.dumps(default), **common)
            else:
                option = click.option(f"--{flag}", dest, type=kind, default=default, **common)
            command = option(command)
        return command

    return decorate


def config_from_options(config_cls: type, options: dict[str, Any], *, prefix: str = "", defaults: Any = None) -> Any:
    """Build ``config_cls`` from the parsed options that :func:`config_options` added; a field without an option
    keeps ``defaults``' value (the class's default without ``defaults``)."""
    hints = typing.get_type_hints(config_cls)
    values = {}
    for field in dataclasses.fields(config_cls):
        flag, dest = _option_name(prefix, field.name)
        if dest not in options:
            continue
        value = options[dest]
        if typing.get_origin(hints[field.name]) is dict:
            value = json_object(value, f"--{flag}")
        elif isinstance(value, (list, tuple)):
            value = tuple(item for item in value if item != "")
        values[field.name] = value
    return config_cls(**values) if defaults is None else dataclasses.replace(defaults, **values)
