"""Helpers shared by the typed config dataclasses: dict/JSON round trips that warn on unknown keys.

The configs themselves live beside what they configure (``ResidualConfig`` in ``residual.py``, ...).
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from typing import Any, TypeVar

from latent_residual.errors import ConfigError

T = TypeVar("T")


def config_to_dict(config: Any) -> dict[str, Any]:
    """Return a JSON-ready dict of a config dataclass (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def config_from_dict(cls: type[T], data: dict[str, Any], *, source: str) -> T:
    """Build ``cls`` from ``data``; keys this version does not know are dropped with a warning.

    :param source: Where ``data`` came from, named in messages (a file path, "metadata", ...).
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a JSON object for {cls.__name__}, got {type(data).__name__}.")
    known = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(known))
    if unknown:
        warnings.warn(
            f"{source}: ignoring keys unknown to {cls.__name__}: {', '.join(unknown)}. "
            "It may come from a newer latent-residual; upgrade to use them.",
            stacklevel=2,
        )
    values = {}
    for key, value in data.items():
        if key in known:
            values[key] = tuple(value) if isinstance(value, list) else value
    try:
        return cls(**values)
    except TypeError as exc:
        raise ConfigError(f"{source}: cannot build {cls.__name__}: {exc}") from exc

