"""The in-memory replay of pretraining: finished episodes, sampled as uniform (B, T) windows.

Episodes on disk are ``datasets.py``; the loop that fills the replay is ``pretraining.py``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

from latent_residual.errors import DatasetError


class ReplayBuffer:
    """Finished episodes in memory; samples (B, T) windows uniformly over all windows."""

    def __init__(self, seq_len: int) -> None:
        self.seq_len = seq_len
        self.episodes: list[dict[str, np.ndarray]] = []
        self._windows: list[int] = []

    def add(self, episode: Mapping[str, np.ndarray]) -> None:
        """Keep ``episode`` if it holds at least one window; shorter ones cannot be sampled."""
        length = len(episode["is_first"])
        if length >= self.seq_len:
            self.episodes.append(dict(episode))
            self._windows.append(length - self.seq_len + 1)

    def sample(self, batch_size: int, rng: np.random.Generator, device: str | torch.device) -> dict[str, Tensor]:
        """``batch_size`` windows as (B, T, ...) tensors; each window's first step is an episode start."""
        if not self.episodes:
            raise DatasetError(f"The replay buffer holds no episode of at least {self.seq_len} steps yet.")
        weights = np.asarray(self._windows, dtype=np.float64)
        picks = rng.choice(len(self.episodes), size=batch_size, p=weights / weights.sum())
        rows = []
        for index in picks:
            start = int(rng.integers(self._windows[index]))
            rows.append({key: value[start : start + self.seq_len] for key, value in self.episodes[index].items()})
        batch = {key: torch.as_tensor(np.stack([row[key] for row in rows]), device=device) for key in rows[0]}
        # A window cut from mid-episode has no context: treat its first step as a start.
        batch["is_first"][:, 0] = True
        return batch
