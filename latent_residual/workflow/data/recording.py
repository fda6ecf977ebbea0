"""Recording a Gymnasium interaction loop as episode dicts of NumPy arrays (DreamerV3's layout).

It knows nothing of files or behaviours: ``datasets.py`` stores episodes, ``collection.py`` drives the loop.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from latent_residual.errors import DatasetError

Episode = dict[str, np.ndarray]


class EpisodeRecorder:
    """Turn a Gymnasium interaction loop into episode dicts of NumPy arrays (DreamerV3's layout).

    Step ``t`` holds ``obs_t``; ``action[t]`` is the action taken at ``obs_t`` (zeros at the final
    step); ``reward[t]`` is the reward received on arriving at ``obs_t`` (0 at the first step).
    ``is_first[0]`` and ``is_last[-1]`` are true; ``is_terminal[-1]`` only if the env terminated.

    It knows nothing of files, so replay buffers can use it as well as :class:`DatasetWriter`.

    :param action_shape: The shape of one action (``action_space.shape``); needed only to
        :meth:`finish` an episode before any action was taken, otherwise read from the actions.
    """

    def __init__(self, action_shape: tuple[int, ...] | None = None) -> None:
        self._action_shape = action_shape
        self._obs: list[dict[str, np.ndarray]] | None = None
        self._actions: list[np.ndarray] = []
        self._rewards: list[float] = []

    @property
    def length(self) -> int:
        """Steps recorded so far in the current episode (0 before :meth:`start`)."""
        return 0 if self._obs is None else len(self._obs)

    def start(self, obs: Mapping[str, np.ndarray]) -> None:
        """Begin an episode at the observation returned by ``env.reset()``."""
        # Copies: some envs reuse their observation buffers from step to step.
        self._obs = [{key: np.array(value) for key, value in obs.items()}]
        self._actions = []
        self._rewards = [0.0]

    def step(
        self,
        action: np.ndarray,
        next_obs: Mapping[str, np.ndarray],
        reward: float,
        terminated: bool,
        truncated: bool,
    ) -> Episode | None:
        """Record ``action`` taken at the last observation and what ``env.step(action)`` returned.

        :returns: The finished episode when ``terminated`` or ``truncated``, else None.
        """
        if self._obs is None:
            raise DatasetError("EpisodeRecorder.step() was called before start(); call start(obs) after env.reset().")
        if set(next_obs) != set(self._obs[0]):
            raise DatasetError(
                f"EpisodeRecorder: observation keys changed mid-episode: {sorted(next_obs)}, "
                f"expected {sorted(self._obs[0])}."
            )
        self._actions.append(np.array(action, dtype=np.float32))
        self._obs.append({key: np.array(value) for key, value in next_obs.items()})
        self._rewards.append(float(reward))
        if terminated or truncated:
            return self.finish(terminated=bool(terminated))
        return None

    def finish(self, *, terminated: bool = False) -> Episode:
        """End the current episode at its last recorded step (a truncation unless ``terminated``).

        Used by :meth:`step` when the env ends the episode, and by callers that stop early.
        """
        if self._obs is None:
            raise DatasetError("EpisodeRecorder.finish() was called before start(); there is no episode to finish.")
        if self._actions:
            final_action = np.zeros_like(self._actions[0])
        elif self._action_shape is not None:
            final_action = np.zeros(self._action_shape, np.float32)
        else:
            raise DatasetError(
                "EpisodeRecorder.finish(): no action was taken, so the action shape is unknown; "
                "pass action_shape=env.action_space.shape to EpisodeRecorder()."
            )
        T = len(self._obs)
        episode = {key: np.stack([obs[key] for obs in self._obs]) for key in self._obs[0]}
        episode["action"] = np.stack([*self._actions, final_action]).astype(np.float32)
        episode["reward"] = np.asarray(self._rewards, np.float32)
        episode["is_first"] = np.arange(T) == 0
        episode["is_last"] = np.arange(T) == T - 1
        episode["is_terminal"] = episode["is_last"] & terminated
        self._obs = None
        return episode
