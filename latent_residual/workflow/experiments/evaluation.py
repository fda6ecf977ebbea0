"""Evaluating a policy in an environment: returns over seeded episodes plus the environment's task metrics.

Any object with ``act(obs)`` (and optionally ``reset()``) is a policy: the torch ``Policy``, an ``OnnxPolicy``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from latent_residual.progress import RunLogger
from latent_residual.registry.lookup import env_metrics, make_env


class Acting(Protocol):
    """What ``evaluate`` runs: anything with ``act(obs) -> action`` (and optionally ``reset()``)."""

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray: ...


@dataclass
class EvalResult:
    """Returns of each episode and their summary; ``metrics`` are the environment's task metrics."""

    env_id: str
    returns: list[float]
    lengths: list[int]
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def mean(self) -> float:
        return float(np.mean(self.returns))

    @property
    def std(self) -> float:
        return float(np.std(self.returns))

    def to_dict(self) -> dict[str, Any]:
        return {
            "env_id": self.env_id,
            "episodes": len(self.returns),
            "return_mean": self.mean,
            "return_std": self.std,
            "returns": self.returns,
            "lengths": self.lengths,
            "metrics": {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in self.metrics.items()},
        }


def evaluate(
    policy: Acting,
    env_id: str,
    *,
    episodes: int = 10,
    seed: int = 0,
    env_kwargs: dict[str, Any] | None = None,
    quiet: bool = True,
) -> EvalResult:
    """Run ``policy`` for ``episodes`` episodes seeded ``seed``, ``seed + 1``, ...

    Returns are undiscounted sums of the environment's rewards. When the environment's plugin
    registered a metrics function, it is applied to the episodes' step infos.
    """
    env = make_env(env_id, **(env_kwargs or {}))
    summarise = env_metrics(env_id)
    returns, lengths, infos = [], [], []
    with RunLogger(None, episodes, f"evaluate {env_id}", quiet=quiet, unit="episodes") as run:
        for episode in range(episodes):
            obs, _ = env.reset(seed=seed + episode)
            if hasattr(policy, "reset"):
                policy.reset()
            total, steps, episode_infos = 0.0, 0, []
            done = False
            while not done:
                obs, reward, terminated, truncated, info = env.step(np.asarray(policy.act(obs), np.float32))
                total += float(reward)
                steps += 1
                episode_infos.append(info)
                done = terminated or truncated
            returns.append(total)
            lengths.append(steps)
            infos.append(episode_infos)
            run.advance()
    env.close()
    metrics: dict[str, float] = {}
    if summarise is not None:
        summary = summarise(infos)
        metrics = dataclasses.asdict(summary) if dataclasses.is_dataclass(summary) else dict(summary)
    return EvalResult(env_id, returns, lengths, metrics)
