"""What each target environment changes relative to its dm_control source task.

The changes are described and written into the physics here; ``env.py`` decides when to apply them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from latent_residual.errors import ConfigError, did_you_mean

if TYPE_CHECKING:
    from dm_control.mujoco import Physics


@dataclass(frozen=True)
class Target:
    """One target's change: a sign on the actions and/or a constant wrench on a named body."""

    description: str
    action_sign: float = 1.0
    body: str | None = None
    # World-frame force and torque at the body's centre of mass, as in MuJoCo's xfrc_applied.
    force: tuple[float, float, float] = (0.0, 0.0, 0.0)
    torque: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def control(self, action: np.ndarray) -> np.ndarray:
        """Return the control the physics receives for an agent's action."""
        return self.action_sign * action

    def apply(self, physics: Physics) -> None:
        """Write the constant wrench, if any, into ``physics.data.xfrc_applied``."""
        if self.body is not None:
            physics.named.data.xfrc_applied[self.body] = (*self.force, *self.torque)

    def check(self, physics: Physics, domain: str) -> None:
        """Raise ConfigError if this target cannot apply to ``physics`` (its body is missing)."""
        if self.body is None:
            return
        bodies = [physics.model.id2name(index, "body") for index in range(physics.model.nbody)]
        if self.body not in bodies:
            raise ConfigError(
                f"The target ({self.description}) pushes body {self.body!r}, which domain "
                f"{domain!r} lacks (its bodies: {', '.join(b for b in bodies if b)})."
            )


SOURCE = Target("unchanged dm_control task")

TARGETS: dict[str, Target] = {
    "reversed": Target("control = -action on every actuator", action_sign=-1.0),
    "windy": Target("constant force (-2, 0, 0) on the ball body", body="ball", force=(-2.0, 0.0, 0.0)),
    "torque": Target("constant torque (0, 4, 0) on the spinner body", body="spinner", torque=(0.0, 4.0, 0.0)),
}


def get_target(name: str | None) -> Target:
    """Return the target called ``name``, or the unchanged source for None."""
    if name is None:
        return SOURCE
    if name not in TARGETS:
        raise ConfigError(
            f"Unknown DMC target {name!r}; expected None or one of {sorted(TARGETS)}.{did_you_mean(name, TARGETS)}"
        )
    return TARGETS[name]
