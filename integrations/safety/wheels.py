"""Wheel kinematics: a policy action to wheel duty cycles, encoder ticks or a body velocity to the velocity observation,
the robot's calibration file. Pure functions; where the readings come from and when they fall silent is velocity.py."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: DB21 wheel encoders: ticks per wheel revolution.
ENCODER_RESOLUTION = 135


def kinematics() -> Any:
    """The twin's kinematics module (constants and ``Calibration``); NumPy only, no MuJoCo."""
    try:
        # latent_residual first: importing a plugin submodule before it leaves the plugin unregistered.
        import latent_residual  # noqa: F401
        from latent_residual_plugins.duckiebot import robot
    except ImportError as exc:  # pragma: no cover - depends on the robot's image
        raise ImportError(
            "The Duckiebot nodes reuse latent_residual_plugins.duckiebot.robot for the wheel kinematics; "
            "install latent-residual on the robot (pip install --no-deps latent-residual, plus numpy, "
            "pillow, onnxruntime, pluggy and gymnasium)."
        ) from exc
    return robot


def action_to_wheels(action: Sequence[float] | np.ndarray, calibration: Any = None) -> tuple[float, float]:
    """Map a policy action ``[forward, turn]`` in [-1, 1] to wheel commands (vel_left, vel_right).

    As in the simulated twin: ``forward`` commands ``MAX_SPEED`` m/s and ``turn`` ``MAX_YAW_RATE``
    rad/s (counter-clockwise); Duckietown's inverse kinematics (gain, trim, k, limit, radius
    0.0318 m, baseline 0.1 m) turn them into duty cycles in [-limit, limit].

    :param calibration: A ``Calibration`` (the robot's kinematics calibration); defaults to gain 1, trim 0.
    """
    robot = kinematics()
    calibration = calibration or robot.Calibration()
    forward, turn = np.clip(np.asarray(action, dtype=np.float64).reshape(2), -1.0, 1.0)
    return calibration.duty_cycles(forward * robot.MAX_SPEED, turn * robot.MAX_YAW_RATE)


def load_calibration(path: str | Path) -> Any:
    """A Duckietown kinematics calibration YAML (``gain``, ``trim``, ``k``, ``limit``, ``radius``, ``baseline``)."""
    import yaml  # on the robot: part of every ROS install

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such kinematics calibration file.")
    values = yaml.safe_load(path.read_text()) or {}
    robot = kinematics()
    fields = ("gain", "trim", "k", "limit", "radius", "baseline")
    return robot.Calibration(**{name: float(values[name]) for name in fields if name in values})


def wheel_velocity(
    left_ticks: float,
    right_ticks: float,
    dt: float,
    *,
    resolution: int = ENCODER_RESOLUTION,
    radius: float = 0.0318,
    baseline: float = 0.1,
) -> np.ndarray:
    """The ``velocity`` observation from encoder tick increments over ``dt`` seconds.

    :returns: float32 ``[yaw rate / MAX_YAW_RATE, forward speed / MAX_SPEED]`` clipped to [-1, 1],
        the layout the twin's ``velocity`` observation has.
    """
    if dt <= 0:
        raise ValueError(f"dt must be positive, got {dt}.")
    left = 2 * math.pi * radius * left_ticks / resolution / dt  # m/s at the rim
    right = 2 * math.pi * radius * right_ticks / resolution / dt
    return body_velocity((left + right) / 2, (right - left) / baseline)


def body_velocity(speed: float, yaw_rate: float) -> np.ndarray:
    """The ``velocity`` observation ``[yaw rate / MAX_YAW_RATE, speed / MAX_SPEED]`` (float32, clipped to [-1, 1])."""
    robot = kinematics()
    velocity = np.array([yaw_rate / robot.MAX_YAW_RATE, speed / robot.MAX_SPEED])
    return np.clip(velocity, -1.0, 1.0).astype(np.float32)
