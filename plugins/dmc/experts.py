"""Scripted experts for DMC tasks: behaviour policies for collecting data, not learned policies.

Only pendulum swing-up has one; the environments themselves are in ``env.py``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# The pendulum's m*g*l/I, measured as omega_bottom**2 / 4 after a fall from upright.
_GRAVITY_TERM = 16.3
# Aim slightly above the upright energy: damping drains some on the way up.
_TARGET_ENERGY = 3.0
_CAPTURE_COSINE = 0.9  # within about 25 degrees of upright, balance instead of pumping
_KP, _KD = 8.0, 1.5


class PendulumSwingUp:
    """Energy-shaping swing-up with a PD capture near upright; about 700-930 return in the source.

    :param target: The environment's target variant; ``"reversed"`` negates the commands so the
        expert stays an expert there (the target data of the paper were expert rollouts).
    """

    def __init__(self, target: str | None = None, **_: Any) -> None:
        self.sign = -1.0 if target == "reversed" else 1.0
        self.description = f"scripted pendulum swing-up expert{' (reversed actions)' if target == 'reversed' else ''}"

    def __call__(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        cosine, sine = (float(v) for v in obs["orientation"])
        velocity = float(obs["velocity"][0])
        if cosine > _CAPTURE_COSINE:
            command = -(_KP * np.arctan2(sine, cosine) + _KD * velocity)
        else:
            energy = 0.5 * velocity**2 + _GRAVITY_TERM * (cosine - 1.0)
            # Push along the motion while short of the target energy, brake when above it.
            command = -(energy - _TARGET_ENERGY) * velocity if abs(velocity) > 1e-3 else 1.0
        return np.array([self.sign * np.clip(command, -1.0, 1.0)], dtype=np.float32)
