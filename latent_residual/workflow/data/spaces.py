"""Gymnasium spaces from their stored JSON, and the checks that a space can be stored and recorded.

Writing a space as JSON is the kernel's (``serialization.space_to_json``, duck-typed); reading one back
needs Gymnasium, so it lives here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium
import numpy as np

from latent_residual.errors import ConfigError, FileFormatError

_BOX_KEYS = ("shape", "dtype", "low", "high")


def space_from_json(data: Any, where: str = "the space") -> gymnasium.spaces.Space:
    """The inverse of :func:`latent_residual.serialization.space_to_json` (a bound may be one number or nested lists).

    :param where: Names the part being read in messages (``"the space['image']"`` for a Dict's entry).
    :raises ConfigError: Naming the part and what is wrong with it, for any description that is not a
        Dict of Boxes or a Box that Gymnasium accepts.
    """
    kind = data.get("type") if isinstance(data, dict) else None
    if kind == "Dict":
        spaces = data.get("spaces")
        if not isinstance(spaces, dict):
            raise ConfigError(f"{where} is a Dict whose 'spaces' is {spaces!r}, expected an object of named spaces.")
        return gymnasium.spaces.Dict({key: space_from_json(sub, f"{where}[{key!r}]") for key, sub in spaces.items()})
    if kind != "Box":
        found = f"type {kind!r}" if isinstance(data, dict) else repr(data)
        raise ConfigError(f"{where} is {found}; expected an object with type 'Dict' or 'Box'.")
    missing = [key for key in _BOX_KEYS if key not in data]
    if missing:
        raise ConfigError(f"{where} is a Box without {missing[0]!r}; a Box holds {', '.join(_BOX_KEYS)}.")
    shape = data["shape"]
    if not isinstance(shape, list) or any(isinstance(n, bool) or not isinstance(n, int) or n < 0 for n in shape):
        raise ConfigError(f"{where} has shape {shape!r}, expected a list of integers >= 0.")
    try:
        dtype = np.dtype(data["dtype"])
        low, high = (np.broadcast_to(np.asarray(data[key], dtype=dtype), shape) for key in ("low", "high"))
        # Gymnasium refuses what no Box can be (low above high, NaN bounds, a non-numeric dtype).
        return gymnasium.spaces.Box(low, high, tuple(shape), dtype)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where} is not a valid Box: {exc}") from exc


def stored_space(path: Path, key: str, data: Any, error: type[FileFormatError]) -> gymnasium.spaces.Space:
    """The space stored under ``key`` of file ``path``; ``error`` names both when the description is malformed."""
    try:
        return space_from_json(data, f"key {key!r}")
    except ConfigError as exc:
        raise error(f"{path}: {exc}") from exc
