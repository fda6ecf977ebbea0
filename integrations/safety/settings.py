"""The controller's settings as one table: a row per setting (name, default, unit, help, how a value is checked), from
which both ROS nodes build their flags and parameters and ControllerSettings one controller's values. No checks here."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from latent_residual_integrations.safety.frames import CAMERA_SIZE, parse_camera_size

#: A row's check: (the row, the value given, the rows above it already checked) -> the value to use; raises ValueError.
Validate = Callable[["Setting", Any, Mapping[str, Any]], Any]


def finite(value: Any) -> bool:
    """Whether ``value`` is a finite number (False for NaN, infinities and what is no number at all)."""
    try:
        return math.isfinite(value)
    except TypeError:
        return False


@dataclass(frozen=True)
class Setting:
    """One controller setting. ``name`` is the ROS 2 parameter and, dashed, the ROS 1 flag; ``keyword`` the
    ``LaneFollowingController`` keyword (``name`` unless given); ``unit`` ends the nodes' description (``description``);
    a value outside ``choices`` (when there are some) is refused, then ``validate`` checks and converts it."""

    name: str
    default: Any
    unit: str
    help: str
    choices: tuple[str, ...] = ()
    keyword: str = ""
    validate: Validate | None = None

    def __post_init__(self) -> None:
        if not self.keyword:
            object.__setattr__(self, "keyword", self.name)

    @property
    def description(self) -> str:
        """The help line the nodes show: ``help``, then the unit in brackets."""
        return f"{self.help} ({self.unit})" if self.unit else self.help

    def value(self, value: Any, earlier: Mapping[str, Any]) -> Any:
        """``value`` checked and converted; ``earlier``: the values of the rows above, by keyword, already checked."""
        if self.choices and value not in self.choices:
            raise ValueError(f"{self.keyword} must be one of {self.choices}, got {value!r}.")
        return value if self.validate is None else self.validate(self, value, earlier)


# -- how a row checks its value (a row's ``validate``) ---------------------------------------------

_UNIT_NAMES = {"s": "seconds", "Hz": "hertz"}


def positive(setting: Setting, value: Any, _earlier: Mapping[str, Any]) -> float:
    """A finite number above 0."""
    if not finite(value) or value <= 0:
        unit = _UNIT_NAMES.get(setting.unit, setting.unit)
        raise ValueError(f"{setting.keyword} must be a positive number of {unit}, got {value!r}.")
    return float(value)


def non_negative(setting: Setting, value: Any, _earlier: Mapping[str, Any]) -> float:
    """A finite number of at least 0."""
    if not finite(value) or value < 0:
        unit = _UNIT_NAMES.get(setting.unit, setting.unit)
        of_unit = f" of {unit}" if unit else ""
        raise ValueError(f"{setting.keyword} must be a non-negative number{of_unit}, got {value!r}.")
    return float(value)


def count(setting: Setting, value: Any, _earlier: Mapping[str, Any]) -> int:
    """A whole number of at least 0 (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{setting.keyword} must be an integer >= 0 (0: off), got {value!r}.")
    return value


def fraction(setting: Setting, value: Any, _earlier: Mapping[str, Any]) -> float:
    """A scale strictly between 0 and 1."""
    if not finite(value) or not 0 < value < 1:
        raise ValueError(f"{setting.keyword} must be a scale in (0, 1), got {value!r}.")
    return float(value)


def inference_deadline(setting: Setting, value: Any, earlier: Mapping[str, Any]) -> float:
    """Seconds within the control period (from the ``rate_hz`` row above); 0 (or None) means half a period."""
    rate = earlier["rate_hz"]
    period = 1.0 / rate
    deadline = value or period / 2
    if not finite(deadline) or not 0 < deadline < period:
        raise ValueError(
            f"{setting.keyword} must lie between 0 and the control period ({period:.3f} s at {rate:g} Hz), "
            f"got {value!r}."
        )
    return float(deadline)


def camera_size(_setting: Setting, value: Any, _earlier: Mapping[str, Any]) -> tuple[int, int]:
    """(width, height) from ``"WIDTHxHEIGHT"``, a pair, or a camera calibration .yaml (``parse_camera_size``)."""
    return parse_camera_size(value)


#: The controller's settings, declared once for both nodes (ROS 1 ``--max-frame-age``, ROS 2 ``max_frame_age``) and
#: the controller. A check's setting is a row here; ``checks.register`` appends the rows of a check kept elsewhere.
CONTROLLER_SETTINGS: list[Setting] = [
    Setting("rate", 10.0, "Hz", "commands per second; the twin's step is 0.1 s", keyword="rate_hz", validate=positive),
    Setting("max_frame_age", 0.5, "s", "stop when the newest frame is older than this", validate=positive),
    Setting("max_future", 0.05, "s", "refuse inputs stamped further ahead of the node's clock", validate=non_negative),
    Setting(
        "inference_deadline", 0.0, "s", "how long the policy may take; 0: half a period", validate=inference_deadline
    ),
    Setting(
        "velocity_source",
        "encoders",
        "",
        "the velocity observation: encoders, odometry, command or zero",
        ("encoders", "odometry", "command", "zero"),
    ),
    Setting(
        "velocity_fallback",
        "stop",
        "",
        "encoders/odometry silent: stop, or the last command's velocity, or zeros",
        ("stop", "command", "zero"),
    ),
    Setting("velocity_timeout", 0.5, "s", "encoders/odometry silent after this long", validate=positive),
    Setting("crop_square", False, "", "crop the frame's centre square before resizing"),
    Setting(
        "camera_size",
        CAMERA_SIZE,
        "",
        "the camera's WIDTHxHEIGHT before the resize, or its calibration .yaml (image_width, image_height): a "
        "frame of another size stops the wheels (bad_frame); the ROS 1 node's default is the robot's own "
        "calibration when it has one",
        validate=camera_size,
    ),
    Setting(
        "surprise_steps",
        0,
        "",
        "coverage alarm: respond after this many steps in a row above the policy's surprise threshold (0: off)",
        validate=count,
    ),
    Setting("surprise_response", "stop", "", "coverage alarm: stop, or slow down", ("stop", "slow")),
    Setting("surprise_slow", 0.3, "", "coverage alarm: action scale while slowed down", validate=fraction),
]


def controller_keywords(values: Mapping[str, Any]) -> dict[str, Any]:
    """``LaneFollowingController`` keywords from a node's setting values, keyed by ``Setting.name``."""
    return {setting.keyword: values[setting.name] for setting in CONTROLLER_SETTINGS}


class ControllerSettings:
    """One controller's settings, checked: an attribute per row of ``CONTROLLER_SETTINGS`` (named by its keyword).

    A keyword left out takes the row's default; a keyword no row has is a ``TypeError``, as for a function.
    """

    def __init__(self, **values: Any) -> None:
        rows = {setting.keyword: setting for setting in CONTROLLER_SETTINGS}
        unknown = sorted(set(values) - set(rows))
        if unknown:
            raise TypeError(f"no controller setting {', '.join(unknown)}; the settings are {', '.join(rows)}.")
        checked: dict[str, Any] = {}
        for keyword, setting in rows.items():
            checked[keyword] = setting.value(values.get(keyword, setting.default), checked)
        self.__dict__.update(checked)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("a controller's settings are fixed once checked")

    def __repr__(self) -> str:
        return f"ControllerSettings({', '.join(f'{key}={value!r}' for key, value in vars(self).items())})"
