"""What differs between 'sim' (randomised every episode) and the one fixed 'real' robot and room.

Only the numbers live here; ``env.py`` applies them to the model, the motors and the frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from latent_residual_plugins.duckiebot.robot import CAMERA_FOVY_DEG
from latent_residual_plugins.duckiebot.textures import RGB, Palette

VARIANTS = ("sim", "real")


@dataclass(frozen=True)
class Look:
    """Everything the camera sees: floor colours, walls, lights, camera pose and image noise."""

    palette: Palette
    wall_colours: tuple[RGB, RGB, RGB, RGB]
    # Ceiling lamp: position as fractions of the room's width and depth, height in metres.
    lamp_position: tuple[float, float, float]
    lamp_colour: RGB
    sun_direction: tuple[float, float, float]
    sun_colour: RGB
    ambient: float
    # Offsets from the nominal camera mount (degrees, metres) and the vertical field of view.
    camera_pitch_deg: float
    camera_roll_deg: float
    camera_yaw_deg: float
    camera_height: float
    camera_fovy_deg: float
    # Standard deviation of Gaussian pixel noise (0-255 scale) and the darkening of the corners.
    image_noise: float
    vignette: float


@dataclass(frozen=True)
class Dynamics:
    """How duty cycles become wheel motion, and how noisy the velocity reading is."""

    # True motor constants relative to the nominal k that the robot's calibration assumes.
    motor_gains: tuple[float, float]
    # Duty cycles below this (in magnitude) do not turn the wheel.
    deadzone: float
    # Control steps between a command and the motors acting on it.
    latency_steps: int
    # Standard deviation of noise on the normalised [yaw rate, forward speed] reading.
    velocity_noise: float


REAL_LOOK = Look(
    palette=Palette(
        mat=(0.09, 0.09, 0.1),
        white=(0.84, 0.85, 0.87),
        yellow=(0.97, 0.68, 0.09),
        room_floor=(0.6, 0.48, 0.34),
        grain=0.06,
        wear=0.05,
    ),
    wall_colours=((0.86, 0.84, 0.79), (0.7, 0.74, 0.8), (0.86, 0.84, 0.79), (0.55, 0.6, 0.58)),
    lamp_position=(0.75, 0.3, 2.4),
    lamp_colour=(0.6, 0.52, 0.4),
    sun_direction=(-0.5, 0.3, -1.0),
    sun_colour=(0.16, 0.16, 0.18),
    ambient=0.22,
    camera_pitch_deg=4.0,
    camera_roll_deg=2.5,
    camera_yaw_deg=-1.0,
    camera_height=0.005,
    camera_fovy_deg=CAMERA_FOVY_DEG,
    image_noise=4.0,
    vignette=0.3,
)

REAL_DYNAMICS = Dynamics(motor_gains=(1.0, 0.85), deadzone=0.12, latency_steps=1, velocity_noise=0.02)


def _tinted(rng: np.random.Generator, low: float, high: float, tint: float) -> RGB:
    level = rng.uniform(low, high)
    red, green, blue = np.clip(level + rng.uniform(-tint, tint, size=3), 0.0, 1.0)
    return float(red), float(green), float(blue)


def _colour(rng: np.random.Generator, low: float, high: float) -> RGB:
    red, green, blue = rng.uniform(low, high, size=3)
    return float(red), float(green), float(blue)


def _scaled(rng: np.random.Generator, level: float, low: float) -> RGB:
    red, green, blue = level * rng.uniform(low, 1.0, size=3)
    return float(red), float(green), float(blue)


def sample_sim_look(rng: np.random.Generator) -> Look:
    """Draw one episode's look; the ranges contain REAL_LOOK so that the encoder sees its like."""
    palette = Palette(
        mat=_tinted(rng, 0.03, 0.18, 0.02),
        white=_tinted(rng, 0.72, 1.0, 0.05),
        yellow=(float(rng.uniform(0.85, 1.0)), float(rng.uniform(0.6, 0.85)), float(rng.uniform(0.0, 0.2))),
        room_floor=_colour(rng, 0.2, 0.8),
        grain=float(rng.uniform(0.0, 0.1)),
        wear=float(rng.uniform(0.0, 0.1)),
    )
    lamp_level = float(rng.uniform(0.25, 0.8))
    sun_level = float(rng.uniform(0.05, 0.45))
    return Look(
        palette=palette,
        wall_colours=(
            _colour(rng, 0.3, 0.95),
            _colour(rng, 0.3, 0.95),
            _colour(rng, 0.3, 0.95),
            _colour(rng, 0.3, 0.95),
        ),
        lamp_position=(float(rng.uniform(0.1, 0.9)), float(rng.uniform(0.1, 0.9)), float(rng.uniform(2.0, 2.8))),
        lamp_colour=_scaled(rng, lamp_level, 0.65),
        sun_direction=(float(rng.uniform(-1, 1)), float(rng.uniform(-1, 1)), -1.0),
        sun_colour=_scaled(rng, sun_level, 0.8),
        ambient=float(rng.uniform(0.12, 0.45)),
        camera_pitch_deg=float(rng.uniform(-5.0, 5.0)),
        camera_roll_deg=float(rng.uniform(-3.0, 3.0)),
        camera_yaw_deg=float(rng.uniform(-2.0, 2.0)),
        camera_height=float(rng.uniform(-0.01, 0.01)),
        camera_fovy_deg=float(rng.uniform(CAMERA_FOVY_DEG - 5.0, CAMERA_FOVY_DEG + 5.0)),
        image_noise=float(rng.uniform(0.0, 6.0)),
        vignette=float(rng.uniform(0.0, 0.4)),
    )


def sample_sim_dynamics(rng: np.random.Generator) -> Dynamics:
    """Draw one episode's motor gains: a common gain and a small left/right spread, nothing else."""
    common = rng.uniform(0.9, 1.1)
    left, right = common * rng.uniform(0.96, 1.04, size=2)
    return Dynamics(
        motor_gains=(float(left), float(right)),
        deadzone=0.0,
        latency_steps=0,
        velocity_noise=float(rng.uniform(0.0, 0.02)),
    )
