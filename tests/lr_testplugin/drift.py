"""A point that drifts under its action: the smallest environment a plugin can register.

Pure NumPy, so plugin tests need no physics engine.
"""

from __future__ import annotations

import gymnasium
import numpy as np


class DriftEnv(gymnasium.Env):
    def __init__(self, gain: float = 0.1):
        self.gain = gain
        self.observation_space = gymnasium.spaces.Dict(
            {"position": gymnasium.spaces.Box(-np.inf, np.inf, (2,), np.float32)}
        )
        self.action_space = gymnasium.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self._position = np.zeros(2, np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._position = self.np_random.uniform(-1, 1, 2).astype(np.float32)
        return {"position": self._position.copy()}, {}

    def step(self, action):
        self._position = (self._position + self.gain * np.asarray(action, np.float32)).astype(np.float32)
        reward = -float(np.linalg.norm(self._position))
        return {"position": self._position.copy()}, reward, False, False, {}
