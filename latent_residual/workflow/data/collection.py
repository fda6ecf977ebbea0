"""Running a behaviour in an environment and recording what happens: the one episode loop that
``collect`` (datasets) and pretraining both drive, and the behaviours it accepts.

Storing episodes is ``datasets.py``; recording one is ``recording.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np

from latent_residual.errors import ConfigError
from latent_residual.progress import RunLogger
from latent_residual.registry.lookup import env_expert, make_env
from latent_residual.workflow.data.datasets import Dataset, DatasetWriter, load_dataset
from latent_residual.workflow.data.recording import Episode, EpisodeRecorder

Behaviour = Callable[[dict[str, np.ndarray]], np.ndarray]
"""Anything that maps an observation dict to an action; an object with ``act(obs)`` works too."""


def begin_episode(behaviour: Any, env: Any, seed: int) -> None:
    """Prepare a behaviour for an episode of ``env`` reset with ``seed``, through its optional
    hooks: ``bind(env)`` (a scripted driver that reads the true pose, as a person at the
    controls watches the robot) and ``reset(seed=...)`` (its own randomness, reproducibly)."""
    if hasattr(behaviour, "bind"):
        behaviour.bind(env)
    if hasattr(behaviour, "reset"):
        behaviour.reset(seed=seed)


def describe(behaviour: Any) -> str:
    """How a behaviour is recorded in a dataset's provenance."""
    return behaviour if isinstance(behaviour, str) else getattr(behaviour, "description", type(behaviour).__name__)


class EpisodeCollector:
    """Steps ``env`` with a behaviour, one recorded episode at a time, reproducibly.

    Episode ``i`` resets with ``seed + i`` and draws its random actions and noise from a
    generator seeded with ``(seed, i)``, so the same ``i`` gives the same episode however the
    run was split into sessions.

    :param behaviour: ``"random"`` (uniform in the action space), a callable from the
        observation dict to an action, or an object with ``act(obs)``; its optional hooks are
        called at each episode's start (see :func:`begin_episode`).
    :param noise: Standard deviation of Gaussian noise added to each action (action units),
        then clipped to the action space.
    """

    def __init__(self, env: gymnasium.Env, behaviour: str | Behaviour | Any, *, seed: int, noise: float = 0.0) -> None:
        space = env.action_space
        if behaviour == "random" and not (np.isfinite(space.low).all() and np.isfinite(space.high).all()):
            raise ConfigError(f"behaviour 'random' needs a bounded action space; the environment has {space}.")
        self.env, self.behaviour, self.seed, self.noise = env, behaviour, seed, noise
        self._policy = getattr(behaviour, "act", behaviour)
        self.recorder = EpisodeRecorder(space.shape)

    def action(self, obs: dict[str, np.ndarray], rng: np.random.Generator) -> np.ndarray:
        """The behaviour's action at ``obs`` plus noise, clipped to the action space."""
        space = self.env.action_space
        if isinstance(self.behaviour, str):
            action = rng.uniform(space.low, space.high)
        else:
            action = np.asarray(self._policy(obs), dtype=np.float64)
            if action.shape != space.shape:
                raise ConfigError(
                    f"behaviour returned an action of shape {action.shape}; the environment expects {space.shape}."
                )
        if self.noise:
            action = action + rng.normal(0.0, self.noise, space.shape)
        return np.clip(action, space.low, space.high).astype(space.dtype)

    def episode(
        self, index: int, *, max_steps: int | None = None, after_step: Callable[[int], bool | None] | None = None
    ) -> Episode | None:
        """Run and return episode ``index``, cut (truncated) at ``max_steps`` recorded steps if it lasts longer.

        :param after_step: Called after every recorded step with the environment steps taken so
            far in the episode: 0 after the reset, then 1, 2, ... (progress, or training updates
            that interleave with acting). Returning True abandons the episode: None is returned.
        """
        rng = np.random.default_rng([self.seed, index])
        obs, _ = self.env.reset(seed=self.seed + index)
        begin_episode(self.behaviour, self.env, self.seed + index)
        self.recorder.start(obs)
        taken = 0
        if after_step is not None and after_step(taken):
            return None
        episode = self.recorder.finish() if max_steps == 1 else None
        while episode is None:
            action = self.action(obs, rng)
            obs, reward, terminated, truncated, _ = self.env.step(action)
            taken += 1
            episode = self.recorder.step(action, obs, reward, terminated, truncated or taken + 1 == max_steps)
            if after_step is not None and after_step(taken):
                return None
        return episode


def _check_collect_arguments(behaviour: Any, transitions: Any, seed: Any, noise: float) -> None:
    if not isinstance(transitions, int) or isinstance(transitions, bool) or transitions < 1:
        raise ConfigError(f"transitions must be an integer >= 1, got {transitions!r}.")
    if not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be an integer >= 0 (episode i resets with seed + i), got {seed!r}.")
    if noise < 0:
        raise ConfigError(f"noise is a standard deviation and must be >= 0, got {noise!r}.")
    if not (behaviour in ("random", "expert") or callable(behaviour) or callable(getattr(behaviour, "act", None))):
        raise ConfigError(
            f"behaviour must be 'random', 'expert', a callable from observations to actions or an object with "
            f"act(obs), got {behaviour!r}."
        )


def collect(
    env_id: str,
    behaviour: str | Behaviour | Any,
    directory: str | Path,
    *,
    transitions: int,
    seed: int = 0,
    env_kwargs: dict[str, Any] | None = None,
    noise: float = 0.0,
    provenance: dict[str, Any] | None = None,
    quiet: bool = False,
) -> Dataset:
    """Run ``behaviour`` in ``make_env(env_id, **env_kwargs)`` until ``directory`` holds ``transitions`` steps.

    Episodes are numbered over the whole dataset and collected as :class:`EpisodeCollector`
    does, so a collection killed and resumed with the same arguments stores the same data as an
    uninterrupted one. The last episode is cut (truncated) to hit ``transitions`` exactly. A
    directory already holding steps is continued; one already holding ``transitions`` or more
    is returned as it is.

    :param behaviour: ``"random"``, ``"expert"`` (the scripted expert the environment's plugin
        registered), a callable from the observation dict to an action, or an object with
        ``act(obs)``; its ``description`` attribute, if any, is recorded.
    :param noise: Standard deviation of Gaussian noise added to each action, then clipped.
    :param provenance: Extra JSON-ready facts to record; the recorded behaviour, noise, seed and
        transitions take precedence over keys of the same name.
    """
    _check_collect_arguments(behaviour, transitions, seed, noise)
    if behaviour == "expert":
        behaviour = env_expert(env_id)
    env_kwargs = dict(env_kwargs or {})
    env = make_env(env_id, **env_kwargs)
    try:
        collector = EpisodeCollector(env, behaviour, seed=seed, noise=noise)
        writer = DatasetWriter(
            directory,
            env_id=env_id,
            env_kwargs=env_kwargs,
            observation_space=env.observation_space,
            action_space=env.action_space,
            provenance={
                **(provenance or {}),
                "behaviour": describe(behaviour),
                "noise": noise,
                "seed": seed,
                "transitions": transitions,
            },
        )
        start = min(writer.transitions, transitions)
        with RunLogger(None, transitions, f"collect {env_id}", quiet=quiet, initial=start) as run:
            while writer.transitions < transitions:
                episode = collector.episode(
                    writer.episodes, max_steps=transitions - writer.transitions, after_step=lambda _: run.advance()
                )
                writer.add_episode(episode)
                run.log(writer.transitions, episode_return=float(episode["reward"].sum()))
    finally:
        env.close()
    return load_dataset(directory)
