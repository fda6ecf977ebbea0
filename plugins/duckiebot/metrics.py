"""Evaluation metrics of the paper's Duckiebot table, computed from the envs' per-step infos.

The infos themselves (reward, offsets, laps) are produced by ``env.py``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from latent_residual.errors import ConfigError


@dataclass(frozen=True)
class LaneMetrics:
    """Means (and standard deviations across episodes or laps) for one method on one robot.

    ``lap_time`` is NaN when no lap was valid, as the paper's table shows a dash.
    """

    dense_reward: float
    dense_reward_std: float
    lap_time: float
    lap_time_std: float
    center_offset_cm: float
    center_offset_cm_std: float
    laps_completed: int
    valid_laps: int
    episodes: int


def evaluate(episodes: Iterable[Sequence[Mapping[str, Any]]]) -> LaneMetrics:
    """Summarise episodes, each the list of ``info`` dicts its steps returned (not reset's).

    Dense reward and centre offset are averaged over each episode's steps, then over episodes;
    lap time is averaged over valid laps (none more than 50 cm off the centre).
    """
    rewards, offsets, lap_times = [], [], []
    laps_completed = 0
    for steps in episodes:
        if not steps:
            continue
        rewards.append(float(np.mean([step["dense_reward"] for step in steps])))
        offsets.append(float(np.mean([step["center_offset_cm"] for step in steps])))
        lap_times += [step["lap_time"] for step in steps if step["lap_completed"] and step["lap_valid"]]
        laps_completed += sum(1 for step in steps if step["lap_completed"])
    if not rewards:
        raise ConfigError("evaluate() got no steps: pass a list of episodes, each a list of step infos.")
    return LaneMetrics(
        dense_reward=float(np.mean(rewards)),
        dense_reward_std=float(np.std(rewards)),
        lap_time=float(np.mean(lap_times)) if lap_times else math.nan,
        lap_time_std=float(np.std(lap_times)) if lap_times else math.nan,
        center_offset_cm=float(np.mean(offsets)),
        center_offset_cm_std=float(np.std(offsets)),
        laps_completed=laps_completed,
        valid_laps=len(lap_times),
        episodes=len(rewards),
    )
