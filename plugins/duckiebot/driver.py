"""A scripted driver: pure pursuit on the true pose, with a person's wobble, for reward-free data.

It commands through the environment's own action interface; the environment itself is in ``env.py``.
"""

from __future__ import annotations

import math
from typing import Any

import gymnasium
import numpy as np

from latent_residual.errors import ConfigError
from latent_residual_plugins.duckiebot.robot import MAX_SPEED, MAX_YAW_RATE
from latent_residual_plugins.duckiebot.track import Track


class PurePursuitDriver:
    """Steers towards the point ``lookahead`` metres ahead on the lane's centre path.

    It reads the true pose (``env.unwrapped.pose()``), the way a person watching the robot knows
    where it is, and returns an action in the env's [-1, 1] interface. ``action_noise`` adds
    Ornstein-Uhlenbeck noise (standard deviation in action units, step correlation
    ``noise_correlation``) standing in for an imperfect person at the controls.

    The driver is *told* the action sign rather than finding it out: with
    ``reverse_actions=True`` it negates its commands, as a person told that the controls are
    reversed would. ``for_env`` reads the sign from the environment.
    """

    def __init__(
        self,
        track: Track,
        *,
        speed: float = 0.3,
        lookahead: float = 0.15,
        action_noise: float = 0.0,
        noise_correlation: float = 0.8,
        reverse_actions: bool = False,
        seed: int | None = None,
    ) -> None:
        self.track = track
        self.speed = speed
        self.lookahead = lookahead
        self.action_noise = action_noise
        self.noise_correlation = noise_correlation
        self.reverse_actions = reverse_actions
        self._rng = np.random.default_rng(seed)
        self._noise = np.zeros(2)

    @classmethod
    def for_env(cls, env: gymnasium.Env, **kwargs: Any) -> PurePursuitDriver:
        """A driver for ``env``'s track that knows whether its actions are reversed."""
        unwrapped = env.unwrapped
        return cls(unwrapped.track, reverse_actions=unwrapped.actions_reversed, **kwargs)

    def reset(self, seed: int | None = None) -> None:
        """Forget the noise state; a seed makes the noise reproducible."""
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        self._noise = np.zeros(2)

    def act(self, pose: np.ndarray) -> np.ndarray:
        """The float32 action ``[speed, turn]`` for a pose ``[x, y, yaw]``."""
        x, y, yaw = pose
        lane = self.track.locate(np.array([x, y]))
        target_x, target_y, _ = self.track.pose_at(lane.arc_length + self.lookahead)
        # The target in the robot's frame; pure pursuit's arc through it has curvature 2 y / d^2.
        dx, dy = target_x - x, target_y - y
        ahead = math.cos(yaw) * dx + math.sin(yaw) * dy
        left = -math.sin(yaw) * dx + math.cos(yaw) * dy
        curvature = 2.0 * left / max(ahead * ahead + left * left, 1e-6)
        action = np.array([self.speed / MAX_SPEED, self.speed * curvature / MAX_YAW_RATE])
        if self.action_noise > 0:
            # Scaled so that the noise's stationary standard deviation is ``action_noise``.
            innovation = math.sqrt(1 - self.noise_correlation**2) * self._rng.normal(0.0, self.action_noise, 2)
            self._noise = self.noise_correlation * self._noise + innovation
            action = action + self._noise
        action = np.clip(action, -1.0, 1.0)
        if self.reverse_actions:
            action = -action
        return action.astype(np.float32)


# Sharper turns held for a second leave the 20 cm lane before the driver can take over.
_MANOEUVRE_TURN = 0.3


class LaneExpert:
    """The envs' registered expert: the pure-pursuit driver, bound to the environment it drives,
    with the manoeuvres a person adds when recording calibration data.

    It needs the true pose, which the observation does not carry, so ``collect`` hands it the
    environment first (``bind``), as a person at the controls watches the robot. It knows
    whether the actions are reversed from its registration, as a person would be told.

    With probability ``manoeuvres`` per step it starts holding a random command for
    ``manoeuvre_steps`` steps (a speed uniform in [-1, 1], a turn in [-0.3, 0.3]: backing up,
    speeding, slowing), then drives on. Measured: data of the pure driver, even with per-step noise
    0.5, taught the residual that the robot moves forward whatever the command, because one noisy
    step barely moves it.
    """

    def __init__(
        self,
        variant: str = "sim",
        reverse_actions: bool = False,
        *,
        manoeuvres: float = 0.05,
        manoeuvre_steps: tuple[int, int] = (3, 10),
        **_: Any,
    ) -> None:
        if not 0.0 <= manoeuvres <= 1.0:
            raise ConfigError(f"manoeuvres is a probability per step, in [0, 1]; got {manoeuvres!r}.")
        low, high = manoeuvre_steps
        if not 1 <= low <= high:
            raise ConfigError(f"manoeuvre_steps must be (low, high) with 1 <= low <= high, got {manoeuvre_steps!r}.")
        self.reverse_actions = reverse_actions
        self.manoeuvres = manoeuvres
        self.manoeuvre_steps = (low, high)
        self.description = (
            f"pure-pursuit driver ({variant}{', reversed actions' if reverse_actions else ''}"
            f"{f', manoeuvres {manoeuvres:g} per step' if manoeuvres else ''})"
        )
        self._env: Any = None
        self._driver: PurePursuitDriver | None = None
        self._rng = np.random.default_rng(0)
        self._held = np.zeros(2, np.float32)
        self._hold = 0

    def bind(self, env: gymnasium.Env) -> None:
        """Drive ``env`` from now on (its track, its pose)."""
        self._env = env.unwrapped
        self._driver = PurePursuitDriver(self._env.track, reverse_actions=self.reverse_actions)

    def reset(self, seed: int | None = None) -> None:
        """Start an episode: no manoeuvre under way; a seed makes the manoeuvres reproducible."""
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        self._hold = 0

    def __call__(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        if self._driver is None:
            raise ConfigError(
                "LaneExpert needs the environment's true pose: call expert.bind(env) before acting "
                "(latent_residual.collect does this)."
            )
        if self._hold == 0 and self._rng.random() < self.manoeuvres:
            self._held = self._rng.uniform((-1.0, -_MANOEUVRE_TURN), (1.0, _MANOEUVRE_TURN)).astype(np.float32)
            self._hold = int(self._rng.integers(self.manoeuvre_steps[0], self.manoeuvre_steps[1] + 1))
        if self._hold > 0:
            self._hold -= 1
            return self._held.copy()
        return self._driver.act(self._env.pose())


def drive_episode(
    env: gymnasium.Env,
    driver: PurePursuitDriver,
    *,
    seed: int | None = None,
    options: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Run one episode with ``driver`` and return the info of every step (for ``metrics.evaluate``)."""
    env.reset(seed=seed, options=options)
    driver.reset(seed)
    infos = []
    while True:
        _, _, terminated, truncated, info = env.step(driver.act(env.unwrapped.pose()))
        infos.append(info)
        if terminated or truncated:
            return infos
