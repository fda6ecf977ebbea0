"""Training a world model on its own loss: one gradient step, and offline training from recorded episodes.

Online pretraining with exploration, which calls the same step, is ``pretraining.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from latent_residual.contract import WorldModel
from latent_residual.progress import RunLogger
from latent_residual.workflow.replay import ReplayBuffer


def world_model_step(
    model: WorldModel, optimiser: torch.optim.Optimizer, batch: Mapping[str, Tensor], grad_clip: float
) -> dict[str, float]:
    """One gradient step on the backbone's own loss; returns its metrics (``loss`` included)."""
    model.train()
    loss, metrics = model.loss(batch)
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimiser.step()
    model.eval()
    return {"loss": loss.item(), **metrics}


def train_world_model(
    model: WorldModel,
    episodes: list[Mapping[str, np.ndarray]],
    *,
    updates: int,
    batch_size: int = 16,
    seq_len: int = 64,
    lr: float = 1e-4,
    grad_clip: float = 1000.0,
    seed: int = 0,
    log_dir: str | Path | None = None,
    quiet: bool = False,
) -> WorldModel:
    """Train ``model`` offline on recorded episodes (for example a dataset's), in place.

    Offline pretraining from a fixed, diverse simulation dataset is far cheaper on a CPU than
    interaction: every second goes into updates. Defaults are the paper's (batch 16 x 64,
    Adam 1e-4, clip 1000).
    """
    replay = ReplayBuffer(seq_len)
    for episode in episodes:
        replay.add(episode)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr, eps=1e-8)
    with RunLogger(log_dir, updates, "train world model", quiet=quiet) as run:
        for update in range(1, updates + 1):
            metrics = world_model_step(model, optimiser, replay.sample(batch_size, rng, model.device()), grad_clip)
            run.advance()
            if update % 100 == 1 or update == updates:
                run.log(update, **metrics)
    return model
