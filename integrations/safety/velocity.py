"""The velocity observation from its source (wheel encoders, odometry, the last command, zeros), what is done while the
encoders or odometry are silent, and when they count as silent. No stops here: VelocityFault and VelocitySilent are."""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from latent_residual_integrations.safety.settings import ControllerSettings
from latent_residual_integrations.safety.wheels import ENCODER_RESOLUTION, body_velocity, wheel_velocity

logger = logging.getLogger(__name__)

#: The policy input the wheel speeds fill.
VELOCITY_KEY = "velocity"
_FALLBACK_WORDS = {
    "stop": "stopping until it reports",
    "command": "using the last command's velocity until it reports",
    "zero": "using a zero velocity until it reports",
}


def command_velocity(action: np.ndarray) -> np.ndarray:
    """The velocity a command ``[forward, turn]`` asks for, in the observation's layout ``[turn, forward]``."""
    forward, turn = action
    return np.clip(np.array([turn, forward]), -1.0, 1.0).astype(np.float32)


class WheelSpeeds:
    """The newest wheel-speed readings and the ``velocity`` observation made from them.

    Not thread-safe: the controller calls it with its lock held.

    :param settings: ``velocity_source``, ``velocity_fallback`` and ``velocity_timeout`` are read.
    :param used: Whether the policy reads a velocity at all; if not, the source is zeros.
    """

    def __init__(self, settings: ControllerSettings, calibration: Any, used: bool) -> None:
        self.source = settings.velocity_source if used else "zero"
        self.fallback = settings.velocity_fallback
        self.timeout = settings.velocity_timeout
        self.calibration = calibration
        self.ticks: dict[str, tuple[float, float, int]] = {}  # side -> (ticks, stamp, resolution), newest
        self.ticks_at_step: dict[str, tuple[float, float, int]] = {}
        self.measured: tuple[np.ndarray, float] | None = None  # odometry: (velocity, stamp)
        #: Why the last reading was refused; cleared by the next valid one.
        self.fault: str | None = None
        self.estimate = np.zeros(2, dtype=np.float32)  # the encoders' estimate
        self.falling_back = False
        #: How often the encoders or odometry went silent and the fallback took over.
        self.fallback_count = 0

    @property
    def measured_source(self) -> bool:
        """Whether the velocity comes from readings (encoders or odometry), which can be refused or fall silent."""
        return self.source in ("encoders", "odometry")

    @property
    def stops_on_silence(self) -> bool:
        return self.measured_source and self.fallback == "stop"

    # -- readings -----------------------------------------------------------------------------------

    def on_encoder(self, side: str, ticks: float, stamp: float, resolution: int) -> None:
        self.ticks[side] = (float(ticks), float(stamp), int(resolution) or ENCODER_RESOLUTION)
        if self.source == "encoders":
            self.fault = None

    def on_odometry(self, speed: float, yaw_rate: float, stamp: float) -> None:
        self.measured = (body_velocity(speed, yaw_rate), float(stamp))
        self.fault = None

    def refuse(self, side: str | None, detail: str) -> None:
        """Drop a side's encoder reading (``side`` ``None``: the odometry) refused for ``detail``."""
        self.fault = detail
        if side is None:
            self.measured = None
        else:
            self.ticks.pop(side, None)

    # -- the observation ----------------------------------------------------------------------------

    def observe(self, now: float, last_action: np.ndarray) -> np.ndarray:
        """The ``velocity`` observation now (encoder speeds are measured between two calls). A silence that
        starts or ends is logged once; while refused, or silent with the fallback ``stop``, it is zeros."""
        zero = np.zeros(2, dtype=np.float32)
        if self.source == "zero" or (self.measured_source and self.fault is not None):
            return zero
        if self.source == "command":
            return command_velocity(last_action)
        silent = self.silence(now)
        if silent is None:
            if self.source == "encoders":
                self._update_estimate()
            if self.falling_back:
                source = "the wheel encoders report" if self.source == "encoders" else "odometry reports"
                logger.info("wheel speeds: %s again", source)
                self.falling_back = False
            return self.estimate if self.source == "encoders" else self.measured[0]
        if not self.falling_back:
            self.falling_back = True
            self.fallback_count += 1
            consequence = _FALLBACK_WORDS[self.fallback]
            logger.warning("wheel speeds: %s (bound %.2f s); %s", silent, self.timeout, consequence)
        self.ticks_at_step = {}
        return command_velocity(last_action) if self.fallback == "command" else zero

    def _update_estimate(self) -> None:
        if set(self.ticks_at_step) == {"left", "right"}:
            rates = []  # ticks per second, in units of the DB21's resolution
            for side in ("left", "right"):
                (ticks, stamp, resolution), (old_ticks, old_stamp, _) = self.ticks[side], self.ticks_at_step[side]
                if stamp <= old_stamp:  # no new reading since the last step: keep the estimate
                    break
                rates.append((ticks - old_ticks) / (stamp - old_stamp) * ENCODER_RESOLUTION / resolution)
            else:
                radius, baseline = self.calibration.radius, self.calibration.baseline
                self.estimate = wheel_velocity(rates[0], rates[1], 1.0, radius=radius, baseline=baseline)
        self.ticks_at_step = dict(self.ticks)

    # -- silence ------------------------------------------------------------------------------------

    def silence(self, now: float) -> str | None:
        """Why the encoders (or odometry) count as silent now, or ``None`` (other sources never fall silent)."""
        if self.source == "encoders":
            missing = [side for side in ("left", "right") if side not in self.ticks]
            if missing:
                return f"no {' or '.join(missing)} wheel encoder reading yet"
            age = now - min(stamp for _, stamp, _ in self.ticks.values())
            return f"wheel encoders silent for {age:.2f} s" if age > self.timeout else None
        if self.source != "odometry":
            return None
        age = math.inf if self.measured is None else now - self.measured[1]
        if age <= self.timeout:
            return None
        return "no odometry yet" if self.measured is None else f"odometry silent for {age:.2f} s"

    def silence_deadline(self) -> float | None:
        """When (on the controller's clock) the newest reading passes ``velocity_timeout``; ``None`` before the
        first reading (no step drives then)."""
        if self.source == "encoders":
            if set(self.ticks) != {"left", "right"}:
                return None
            return min(stamp for _, stamp, _ in self.ticks.values()) + self.timeout
        if self.source != "odometry" or self.measured is None:
            return None
        return self.measured[1] + self.timeout
