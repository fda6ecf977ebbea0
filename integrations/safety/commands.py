"""What the controller puts out each period: a Command (the action and the wheels' duty cycles) and, for a zero one,
its StopReason. Which check stops for which reason is checks.py; how the wheels follow from an action is wheels.py."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from latent_residual_integrations.safety.wheels import kinematics


class StopReason(str, enum.Enum):
    """Why the controller commands zero wheels (``Command.reason``; ``None`` while driving)."""

    NO_FRAME = "no_frame"  # no valid frame received yet
    STALE_FRAME = "stale_frame"  # the newest frame is older than max_frame_age
    FUTURE_STAMP = "future_stamp"  # an input stamped more than max_future ahead of the clock
    BAD_STAMP = "bad_stamp"  # an input stamp that is not a finite number
    BAD_FRAME = "bad_frame"  # a frame that does not decode to an image, or not of the camera's size
    NON_FINITE_OBSERVATION = "non_finite_observation"  # NaN/inf in an input or in the observation
    NON_FINITE_ACTION = "non_finite_action"  # the policy returned NaN/inf (or the wrong shape)
    INFERENCE_ERROR = "inference_error"  # the policy raised
    INFERENCE_DEADLINE = "inference_deadline"  # no action within the deadline, or the late call still runs
    VELOCITY_SILENT = "velocity_silent"  # encoders/odometry silent and velocity_fallback is "stop"
    OUT_OF_COVERAGE = "out_of_coverage"  # surprise above the threshold for surprise_steps steps (response "stop")
    CONTROLLER_ERROR = "controller_error"  # an unexpected error in the controller itself
    SHUTDOWN = "shutdown"  # the node is exiting

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Command:
    """One control period's output: the action, the wheels' duty cycles, and why it is zero (if it is).

    ``reason`` is a ``StopReason``, or the plain string a check kept outside this package stops with.
    """

    forward: float
    turn: float
    left: float
    right: float
    reason: StopReason | str | None = None
    detail: str = ""
    stamp: float = 0.0

    @property
    def stopped(self) -> bool:
        return self.reason is not None

    @property
    def wheels(self) -> tuple[float, float]:
        return self.left, self.right

    def twist(self, max_speed: float | None = None, max_yaw_rate: float | None = None) -> tuple[float, float]:
        """(linear x in m/s, angular z in rad/s): 1 is the twin's 0.5 m/s and 5 rad/s unless given."""
        if max_speed is None or max_yaw_rate is None:
            robot = kinematics()
            max_speed = robot.MAX_SPEED if max_speed is None else max_speed
            max_yaw_rate = robot.MAX_YAW_RATE if max_yaw_rate is None else max_yaw_rate
        return self.forward * max_speed, self.turn * max_yaw_rate
