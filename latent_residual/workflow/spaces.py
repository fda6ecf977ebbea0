"""Gymnasium spaces from their stored JSON, and the checks that a space can be stored and recorded.

Writing a space as JSON is the kernel's (``serialization.space_to_json``, duck-typed); reading one back
needs Gymnasium, so it lives here.
"""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np

from latent_residual.errors import ConfigError


def space_from_json(data: dict[str, Any]) -> gymnasium.spaces.Space:
    """The inverse of :func:`latent_residual.serialization.space_to_json` (a bound may be one number or nested lists)."""
    if data.get("type") == "Dict":
        return gymnasium.spaces.Dict({key: space_from_json(sub) for key, sub in data["spaces"].items()})
    if data.get("type") == "Box":
        dtype, shape = np.dtype(data["dtype"]), tuple(data["shape"])
        low, high = (np.broadcast_to(np.asarray(data[key], dtype=dtype), shape) for key in ("low", "high"))
        return gymnasium.spaces.Box(low, high, shape, dtype)
    raise ConfigError(f"Unknown space description {data.get('type')!r}; expected 'Dict' or 'Box'.")
