"""Small building blocks shared by backbones, residuals and the actor-critic: MLPs and reward-style heads.

Backbone-specific encoders and decoders live with their backbone plugin.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from latent_residual import encodings


class MLP(nn.Module):
    """Linear -> LayerNorm -> SiLU blocks, then a plain linear output layer.

    :param zero_init_output: Start the output layer at zero, so the head first predicts the
        neutral value (DreamerV3 does this for reward and critic heads).
    """

    def __init__(
        self,
        in_size: int,
        out_size: int,
        hidden: int,
        layers: int,
        *,
        zero_init_output: bool = False,
    ) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        size = in_size
        for _ in range(layers):
            blocks += [nn.Linear(size, hidden), nn.LayerNorm(hidden), nn.SiLU()]
            size = hidden
        self.body = nn.Sequential(*blocks)
        self.out = nn.Linear(size, out_size)
        if zero_init_output:
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.body(x))


class TwoHotHead(nn.Module):
    """A scalar head trained with symlog two-hot cross-entropy (rewards, values).

    ``forward`` returns bin logits (..., bins); ``mean`` the predicted scalar; ``loss`` the
    per-element cross-entropy against raw targets.
    """

    def __init__(self, in_size: int, hidden: int, layers: int, bins: int = 255) -> None:
        super().__init__()
        self.net = MLP(in_size, bins, hidden, layers, zero_init_output=True)
        self.register_buffer("bins", encodings.twohot_bins(bins), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def mean(self, x: Tensor) -> Tensor:
        return encodings.twohot_mean(self.net(x), self.bins)

    def loss(self, x: Tensor, target: Tensor) -> Tensor:
        return encodings.twohot_loss(self.net(x), target, self.bins)


class BernoulliHead(nn.Module):
    """A probability head trained with binary cross-entropy (episode continuation)."""

    def __init__(self, in_size: int, hidden: int, layers: int) -> None:
        super().__init__()
        self.net = MLP(in_size, 1, hidden, layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).squeeze(-1)

    def prob(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self(x))

    def loss(self, x: Tensor, target: Tensor) -> Tensor:
        return nn.functional.binary_cross_entropy_with_logits(self(x), target.to(x.dtype), reduction="none")
