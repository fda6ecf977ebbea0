"""Helpers shared by the typed config dataclasses: dict/JSON round trips that warn on unknown keys, and
``PresetConfig``, the base of a backbone's hyperparameters (checked fields, named presets).

The configs themselves live beside what they configure (``ResidualConfig`` in ``residual.py``, ...).
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

from latent_residual.errors import ConfigError, LatentResidualError, did_you_mean

T = TypeVar("T")
P = TypeVar("P", bound="PresetConfig")

#: The help of a backbone config's ``angles`` field (``ObservationLayout.with_angles`` applies it).
ANGLES_HELP = (
    "Elements of vector observation keys that are angles in radians (flat indices per key): read and "
    "reconstructed as (cos, sin), so a hinge that winds past any angle in the data stays in it (the DMC "
    "reacher's shoulder); decode returns them in (-pi, pi]."
)


def config_to_dict(config: Any) -> dict[str, Any]:
    """Return a JSON-ready dict of a config dataclass (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def config_from_dict(
    cls: type[T], data: dict[str, Any], *, source: str, error: type[LatentResidualError] = ConfigError
) -> T:
    """Build ``cls`` from ``data``; keys this version does not know are dropped with a warning.

    :param source: Where ``data`` came from, named in messages (a file path, "metadata", ...).
    :param error: Raised, naming ``source``, when ``data`` does not build ``cls`` (a file's own
        error class, so that a bad stored config reads as a bad file).
    """
    if not isinstance(data, dict):
        raise error(f"{source}: expected a JSON object for {cls.__name__}, got {type(data).__name__}.")
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
    except (TypeError, ConfigError) as exc:  # a field of the wrong type, or a value __post_init__ refuses
        raise error(f"{source}: cannot build {cls.__name__}: {exc}") from exc


class PresetConfig:
    """The base of a backbone's hyperparameter dataclass: fields checked on construction, named presets.

    A subclass is a ``@dataclass`` naming its presets in its class statement,
    ``class DRAWConfig(PresetConfig, label="DRAW", presets=PRESETS, default="paper")``, and types each
    field ``int``, ``float``, ``bool`` or ``dict[str, float]``. Construction raises ``ConfigError`` quoting a bad
    value: an ``int`` must be an integer >= 1 (>= 2 for the fields in ``at_least_two``), a ``bool`` true or
    false, a dict names to finite numbers >= 0, and any other field a finite number >= 0 (< 1 too for the
    fields in ``fractions``).

    :param label: Names the model in messages (``"Unknown DRAW preset ..."``).
    :param presets: Preset name -> the field values that replace the defaults.
    :param default: The preset :meth:`from_preset` builds when given none.
    :param at_least_two: Integer fields whose minimum is 2 (a categorical's classes, two-hot bins).
    :param fractions: Number fields that must also be below 1 (a uniform mixture's weight).
    """

    label: ClassVar[str]
    presets: ClassVar[Mapping[str, Mapping[str, Any]]]
    default_preset: ClassVar[str]
    at_least_two: ClassVar[tuple[str, ...]]
    fractions: ClassVar[tuple[str, ...]]

    def __init_subclass__(
        cls,
        *,
        label: str,
        presets: Mapping[str, Mapping[str, Any]],
        default: str,
        at_least_two: tuple[str, ...] = ("classes", "reward_bins"),
        fractions: tuple[str, ...] = ("unimix",),
        **kwargs: Any,
    ) -> None:
        super().__init_subclass__(**kwargs)
        cls.label, cls.presets, cls.default_preset = label, presets, default
        cls.at_least_two, cls.fractions = at_least_two, fractions

    def __post_init__(self) -> None:
        name = type(self).__name__
        for item in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, item.name)
            kind = item.type if isinstance(item.type, str) else getattr(item.type, "__name__", "")
            if kind == "bool":
                if not isinstance(value, bool):
                    raise ConfigError(f"{name}.{item.name} must be true or false, got {value!r}.")
            elif kind == "dict[str, list[int]]":
                self._check_indices(name, item.name, value)
            elif kind.startswith("dict"):
                self._check_weights(name, item.name, value)
            elif kind == "int":
                minimum = 2 if item.name in self.at_least_two else 1
                if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                    raise ConfigError(f"{name}.{item.name} must be an integer >= {minimum}, got {value!r}.")
            else:
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                    raise ConfigError(f"{name}.{item.name} must be a finite number, got {value!r}.")
                if value < 0:
                    raise ConfigError(f"{name}.{item.name} must be >= 0, got {value!r}.")
                if item.name in self.fractions and value >= 1:
                    raise ConfigError(f"{name}.{item.name} must be in [0, 1), got {value!r}.")

    @staticmethod
    def _check_weights(name: str, field_name: str, value: Any) -> None:
        """A ``dict[str, float]`` field: names to finite weights >= 0."""
        if not isinstance(value, dict) or not all(
            isinstance(key, str)
            and not isinstance(weight, bool)
            and isinstance(weight, (int, float))
            and math.isfinite(weight)
            and weight >= 0
            for key, weight in value.items()
        ):
            raise ConfigError(f"{name}.{field_name} must map names to finite numbers >= 0, got {value!r}.")

    @staticmethod
    def _check_indices(name: str, field_name: str, value: Any) -> None:
        """A ``dict[str, list[int]]`` field: names to lists of distinct indices >= 0."""
        if not isinstance(value, dict) or not all(
            isinstance(key, str)
            and isinstance(indices, (list, tuple))
            and all(isinstance(index, int) and not isinstance(index, bool) and index >= 0 for index in indices)
            and len(set(indices)) == len(indices)
            for key, indices in value.items()
        ):
            raise ConfigError(f"{name}.{field_name} must map names to lists of distinct indices >= 0, got {value!r}.")

    @classmethod
    def from_preset(cls: type[P], preset: str | None = None, **overrides: Any) -> P:
        """Return preset ``preset`` (one of ``presets``; the class's default when None) with
        ``overrides`` applied to its fields."""
        preset = cls.default_preset if preset is None else preset
        if preset not in cls.presets:
            raise ConfigError(
                f"Unknown {cls.label} preset {preset!r}; choose one of {sorted(cls.presets)}."
                f"{did_you_mean(preset, cls.presets)}"
            )
        names = [item.name for item in dataclasses.fields(cls)]  # type: ignore[arg-type]
        for key in overrides:
            if key not in names:
                raise ConfigError(
                    f"{cls.__name__} has no field {key!r}.{did_you_mean(key, names)} Fields: {', '.join(names)}."
                )
        return cls(**{**cls.presets[preset], **overrides})

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-serialisable dict."""
        return dataclasses.asdict(self)  # type: ignore[call-overload]
