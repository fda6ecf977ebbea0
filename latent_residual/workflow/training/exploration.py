"""Plan2Explore: an ensemble predicting the next observation embedding; its disagreement is the reward.

The loop that trains it beside the world model is in ``pretraining.py``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from latent_residual.nets import MLP


class Disagreement(nn.Module):
    """``members`` MLPs mapping [features_t, a_t] to embed_{t+1}; intrinsic reward = their std."""

    def __init__(
        self,
        feature_size: int,
        action_size: int,
        embed_size: int,
        *,
        members: int = 8,
        hidden: int = 512,
        layers: int = 2,
    ) -> None:
        super().__init__()
        self.members = nn.ModuleList(
            MLP(feature_size + action_size, embed_size, hidden, layers) for _ in range(members)
        )

    def _predict(self, features: Tensor, actions: Tensor) -> Tensor:
        x = torch.cat([features, actions], -1)
        return torch.stack([member(x) for member in self.members])  # (members, ..., E)

    def loss(self, features: Tensor, actions: Tensor, next_embed: Tensor) -> Tensor:
        """Mean squared error of every member on observed transitions."""
        return ((self._predict(features, actions) - next_embed.unsqueeze(0)) ** 2).mean()

    def reward(self, features: Tensor, actions: Tensor) -> Tensor:
        """Intrinsic reward for imagined steps: (B, H + 1, F) features, (B, H, A) actions -> (B, H)."""
        return self._predict(features[:, :-1], actions).std(0).mean(-1)
