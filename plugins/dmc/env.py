"""The Gymnasium environment around one dm_control suite task: state or pixels, source or target.

Target changes are in ``targets.py``, frames in ``rendering.py``, the ids in ``__init__.py``.
"""

from __future__ import annotations

import os

# EGL renders without a display; MuJoCo reads the choice when dm_control is first imported.
os.environ.setdefault("MUJOCO_GL", "egl")

from typing import Any  # noqa: E402

import gymnasium  # noqa: E402
import numpy as np  # noqa: E402
from dm_control import suite  # noqa: E402
from dm_control.mujoco.engine import Physics  # noqa: E402
from dm_control.rl.control import Environment  # noqa: E402
from gymnasium import spaces  # noqa: E402

from latent_residual.errors import ConfigError, did_you_mean  # noqa: E402
from latent_residual_plugins.dmc.rendering import FrameRenderer  # noqa: E402
from latent_residual_plugins.dmc.targets import get_target  # noqa: E402

IMAGE_KEY = "image"
VELOCITY_KEY = "velocity"
# In pixel mode with include_state=True, dm_control's keys get this prefix: its own "velocity"
# key would otherwise collide with the image complement.
STATE_PREFIX = "state_"
LAST_SUBSTEP_REWARD_KEY = "last_substep_reward"


def _load(domain: str, task: str) -> Environment:
    if (domain, task) not in suite.ALL_TASKS:
        suggestion = did_you_mean(f"{domain}/{task}", [f"{d}/{t}" for d, t in suite.ALL_TASKS])
        raise ConfigError(
            f"dm_control suite has no task {domain!r}/{task!r}.{suggestion} "
            "`dm_control.suite.ALL_TASKS` lists the (domain, task) pairs."
        )
    return suite.load(domain, task)


def _positive_int(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}.")


class DMCEnv(gymnasium.Env[dict[str, np.ndarray], np.ndarray]):
    """A dm_control suite task as a Gymnasium environment, optionally changed into a target.

    Each agent step repeats the action for ``action_repeat`` control steps and returns the sum of
    their rewards (the standard 0-1000 DMC episode scale); ``info["last_substep_reward"]`` holds
    the last one alone, the convention of the ReDRAW authors. Episodes never terminate; they are
    truncated at dm_control's time limit (1000 control steps: 500 agent steps at repeat 2, 1000 at
    repeat 1). Actions lie in [-1, 1]; a task whose actuators have other bounds receives them
    rescaled linearly into those bounds (as sheeprl's DMC wrapper does).

    :param domain: The dm_control suite domain, for example ``"ball_in_cup"``.
    :param task: The task in that domain, for example ``"catch"``.
    :param target: None for the unchanged source, or a name from ``targets.TARGETS``.
    :param pixels: Observe ``image`` (uint8, camera ``camera_id``) and ``velocity``
        (``physics.velocity()``) instead of dm_control's state observation.
    :param image_size: Side of the square image in pixels.
    :param include_state: In pixel mode, also return dm_control's state keys, prefixed ``state_``.
        Off by default so that a pixel agent cannot read the state.
    :param action_repeat: Control steps per agent step.
    :param camera_id: The model camera that renders observations and ``render()``.
    :param render_mode: None or ``"rgb_array"``.
    :param render_size: Side of ``render()`` frames; defaults to ``image_size``.
    """

    metadata: dict[str, Any] = {"render_modes": ["rgb_array"], "render_fps": 25}

    def __init__(
        self,
        domain: str,
        task: str,
        target: str | None = None,
        *,
        pixels: bool = False,
        image_size: int = 64,
        include_state: bool = False,
        action_repeat: int = 2,
        camera_id: int = 0,
        render_mode: str | None = None,
        render_size: int | None = None,
    ) -> None:
        _positive_int("image_size", image_size)
        _positive_int("action_repeat", action_repeat)
        if render_size is not None:
            _positive_int("render_size", render_size)
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise ConfigError(f"render_mode {render_mode!r} is not supported; expected None or 'rgb_array'.")
        if include_state and not pixels:
            raise ConfigError("include_state=True only applies with pixels=True.")
        self._target = get_target(target)
        self._env = _load(domain, task)
        physics = self._env.physics
        self._target.check(physics, domain)

        action_spec = self._env.action_spec()
        # Agents act in [-1, 1]; a task with other bounds (quadruped, lqr) gets them rescaled linearly,
        # as sheeprl's DMC wrapper does, so that a policy imported from sheeprl acts the same here.
        unit = np.all(action_spec.minimum == -1.0) and np.all(action_spec.maximum == 1.0)
        self._action_bounds = None if unit else (action_spec.minimum, action_spec.maximum)
        self.action_space = spaces.Box(-1.0, 1.0, action_spec.shape, np.float32)
        state_space = {
            key: spaces.Box(-np.inf, np.inf, spec.shape, np.float32)
            for key, spec in self._env.observation_spec().items()
        }
        if pixels:
            pixel_space = {
                IMAGE_KEY: spaces.Box(0, 255, (image_size, image_size, 3), np.uint8),
                VELOCITY_KEY: spaces.Box(-np.inf, np.inf, (physics.model.nv,), np.float32),
            }
            if include_state:
                pixel_space |= {STATE_PREFIX + key: space for key, space in state_space.items()}
            self.observation_space = spaces.Dict(pixel_space)
        else:
            self.observation_space = spaces.Dict(state_space)

        self.render_mode = render_mode
        self.metadata = {
            **self.metadata,
            "render_fps": round(1.0 / (self._env.control_timestep() * action_repeat)),
        }
        self._pixels = pixels
        self._include_state = include_state
        self._action_repeat = action_repeat
        self._frames = FrameRenderer(physics, image_size, camera_id) if pixels else None
        self._viewer = (
            FrameRenderer(physics, render_size or image_size, camera_id) if render_mode == "rgb_array" else None
        )
        self._episode_over = True

    @property
    def physics(self) -> Physics:
        """The dm_control ``Physics`` of the task (targets' pushes are visible in its data)."""
        return self._env.physics

    @property
    def physics_steps_per_step(self) -> int:
        """Physics steps an agent step takes (control steps times physics steps per control step)."""
        return self._action_repeat * round(self._env.control_timestep() / self._env.physics.timestep())

    def _observation(self, dm_observation: dict[str, Any]) -> dict[str, np.ndarray]:
        observation: dict[str, np.ndarray] = {}
        if self._pixels:
            observation[IMAGE_KEY] = self._frames.render()
            observation[VELOCITY_KEY] = self._env.physics.velocity().astype(np.float32)
        if not self._pixels or self._include_state:
            prefix = STATE_PREFIX if self._pixels else ""
            # np.array copies, so no observation shares memory with dm_control or another one.
            observation |= {prefix + key: np.array(value, dtype=np.float32) for key, value in dm_observation.items()}
        return observation

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        super().reset(seed=seed)
        # dm_control draws the initial state from the task's RandomState. Seeding it from
        # np_random makes reset(seed=s) reproducible, and the unseeded resets after it too.
        self._env.task.random.seed(int(self.np_random.integers(2**32)))
        time_step = self._env.reset()
        self._episode_over = False
        return self._observation(time_step.observation), {}

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        if self._episode_over:
            # dm_control would silently start a new episode here.
            raise gymnasium.error.ResetNeeded("The episode has ended (or never started); call reset() before step().")
        control = self._target.control(np.asarray(action, dtype=np.float64))
        if self._action_bounds is not None:
            low, high = self._action_bounds
            control = low + (control + 1.0) / 2.0 * (high - low)
        total_reward = 0.0
        for _ in range(self._action_repeat):
            # mj_resetData zeroes xfrc_applied at reset; setting it before every control step
            # keeps a target's push on every physics step of the episode.
            self._target.apply(self._env.physics)
            time_step = self._env.step(control)
            last_reward = float(time_step.reward)
            total_reward += last_reward
            if time_step.last():
                break
        # DMC tasks have no terminal states: an episode only ends at the time limit.
        self._episode_over = time_step.last()
        observation = self._observation(time_step.observation)
        info = {LAST_SUBSTEP_REWARD_KEY: last_reward}
        return observation, total_reward, False, self._episode_over, info

    def render(self) -> np.ndarray | None:
        """Return an RGB frame from ``camera_id`` if ``render_mode="rgb_array"``, else None."""
        return self._viewer.render() if self._viewer is not None else None

    def close(self) -> None:
        for renderer in (self._frames, self._viewer):
            if renderer is not None:
                renderer.close()
        self._frames = self._viewer = None
        self._env.physics.free()
