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


# Both links of the reacher's arm (reacher.xml: the hand sits 0.12 along the arm, the finger 0.12 along the hand).
_REACHER_LINKS = (0.12, 0.12)
_REACH_KP, _REACH_KD = 5.0, 0.5


def _wrapped(angle: np.ndarray) -> np.ndarray:
    return (angle + np.pi) % (2 * np.pi) - np.pi


class ReacherReach:
    """Inverse kinematics to the target, then a joint-space PD: reaches the easy task's targets in about
    a second of simulated time (Jacobian-transpose reaching stalls with the arm stretched straight).

    :param target: The environment's target variant; ``"reversed"`` negates the commands, as for the pendulum.
    """

    def __init__(self, target: str | None = None, **_: Any) -> None:
        self.sign = -1.0 if target == "reversed" else 1.0
        self.description = f"scripted reacher expert{' (reversed actions)' if target == 'reversed' else ''}"

    def __call__(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        joints = np.asarray(obs["position"], np.float64)  # (shoulder, wrist) angles
        upper, lower = _REACHER_LINKS
        shoulder, wrist = joints
        finger = np.array(
            [
                upper * np.cos(shoulder) + lower * np.cos(shoulder + wrist),
                upper * np.sin(shoulder) + lower * np.sin(shoulder + wrist),
            ]
        )
        x, y = finger + np.asarray(obs["to_target"], np.float64)
        cosine = np.clip((x * x + y * y - upper**2 - lower**2) / (2 * upper * lower), -1.0, 1.0)
        # Of the two elbow solutions, the one nearer the wrist's angle now.
        wrist_goal = np.arccos(cosine) * (1.0 if _wrapped(wrist) >= 0 else -1.0)
        shoulder_goal = np.arctan2(y, x) - np.arctan2(lower * np.sin(wrist_goal), upper + lower * np.cos(wrist_goal))
        error = _wrapped(np.array([shoulder_goal, wrist_goal]) - joints)
        command = _REACH_KP * error - _REACH_KD * np.asarray(obs["velocity"], np.float64)
        return (self.sign * np.clip(command, -1.0, 1.0)).astype(np.float32)
