"""Small building blocks shared by backbones, residuals and the actor-critic: MLPs, image CNNs, reward-style heads.

How a backbone combines observation keys into one embedding (and back) lives with its plugin.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from latent_residual import encodings
from latent_residual.observations import image_to_float


def dense_blocks(in_size: int, units: int, layers: int, *, bias: bool = True, eps: float = 1e-5) -> nn.Sequential:
    """Linear -> LayerNorm -> SiLU, ``layers`` times (an MLP whose output is its last activation).

    :param bias: Whether the Linears have a bias (DreamerV3's have none: the norm follows).
    :param eps: The LayerNorms' epsilon (torch's 1e-5; DreamerV3 uses 1e-3).
    """
    blocks: list[nn.Module] = []
    for index in range(layers):
        blocks += [
            nn.Linear(in_size if index == 0 else units, units, bias=bias),
            nn.LayerNorm(units, eps=eps),
            nn.SiLU(),
        ]
    return nn.Sequential(*blocks)


class MLP(nn.Module):
    """Linear -> LayerNorm -> SiLU blocks, then a plain linear output layer.

    :param zero_init_output: Start the output layer at zero, so the head first predicts the
        neutral value (DreamerV3 does this for reward and critic heads).
    :param bias: Whether the hidden Linears have a bias (``dense_blocks``'); the output layer always has one.
    :param eps: The LayerNorms' epsilon.
    """

    def __init__(
        self,
        in_size: int,
        out_size: int,
        hidden: int,
        layers: int,
        *,
        zero_init_output: bool = False,
        bias: bool = True,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.body = dense_blocks(in_size, hidden, layers, bias=bias, eps=eps)
        self.out = nn.Linear(hidden if layers else in_size, out_size)
        if zero_init_output:
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.body(x))


class ChannelNorm(nn.LayerNorm):
    """LayerNorm over the channels of a (N, C, H, W) feature map (sheeprl's ``LayerNormChannelLast``)."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def _conv_stage(conv: type[nn.Conv2d | nn.ConvTranspose2d], channels: int, out: int, eps: float) -> list[nn.Module]:
    """A bias-free stride-2 (transposed) conv, kernel 4, padding 1, then a LayerNorm over channels and SiLU."""
    return [conv(channels, out, 4, stride=2, padding=1, bias=False), ChannelNorm(out, eps=eps), nn.SiLU()]


class ImageEncoder(nn.Module):
    """Stride-2 convs (kernel 4, padding 1, bias-free, ``depth * 2**i`` channels, LayerNorm over channels,
    SiLU), ``layers`` of them, flattened channel-major.

    :param shape: The (H, W, C) of the uint8 images; H and W must be divisible by ``2**layers``.
    :param eps: The channel LayerNorms' epsilon.
    """

    def __init__(self, shape: tuple[int, int, int], depth: int, layers: int, *, eps: float = 1e-5) -> None:
        super().__init__()
        height, width, channels = shape
        blocks: list[nn.Module] = []
        for index in range(layers):
            blocks += _conv_stage(nn.Conv2d, channels, depth * 2**index, eps)
            channels = depth * 2**index
        self.convs = nn.Sequential(*blocks)
        self.out_size = channels * (height >> layers) * (width >> layers)

    def forward(self, image: Tensor, dtype: torch.dtype) -> Tensor:
        """Encode (N, H, W, C) uint8 pixels to (N, out_size)."""
        # A channels-last permute, not a copy: CPU and cuDNN convs take that layout directly.
        x = image_to_float(image, dtype).permute(0, 3, 1, 2)
        return self.convs(x).flatten(1)


class ImageDecoder(nn.Module):
    """The encoder's mirror: a Linear to its smallest map, bias-free stride-2 transposed convs (LayerNorm
    over channels, SiLU), then a biased transposed conv to the image's channels, (N, H, W, C).

    :param channels_first: Lay the Linear's output out as (C, h, w) (sheeprl's order) rather than
        (h, w, C); the two orders number the Linear's output units differently.
    """

    def __init__(
        self,
        in_size: int,
        shape: tuple[int, int, int],
        depth: int,
        layers: int,
        *,
        eps: float = 1e-5,
        channels_first: bool = False,
    ) -> None:
        super().__init__()
        height, width, channels = shape
        size = depth * 2 ** (layers - 1)
        smallest = (height >> layers, width >> layers)
        self.channels_first = channels_first
        self.start = (size, *smallest) if channels_first else (*smallest, size)
        self.linear = nn.Linear(in_size, math.prod(self.start))
        blocks: list[nn.Module] = []
        for index in reversed(range(layers - 1)):
            blocks += _conv_stage(nn.ConvTranspose2d, size, depth * 2**index, eps)
            size = depth * 2**index
        blocks.append(nn.ConvTranspose2d(size, channels, 4, stride=2, padding=1))
        self.convs = nn.Sequential(*blocks)

    def forward(self, features: Tensor) -> Tensor:
        """Decode (N, in_size) features to (N, H, W, C) pixels on the [-0.5, 0.5] scale."""
        x = self.linear(features).reshape(-1, *self.start)
        if not self.channels_first:
            # Channels-last like the encoder, so the channel LayerNorms need no copies.
            x = x.permute(0, 3, 1, 2)
        return self.convs(x).permute(0, 2, 3, 1)


class TwoHotHead(nn.Module):
    """A scalar head trained with symlog two-hot cross-entropy (rewards, values).

    ``forward`` returns bin logits (..., bins); ``mean`` the predicted scalar; ``loss`` the
    per-element cross-entropy against raw targets.
    """

    def __init__(
        self, in_size: int, hidden: int, layers: int, bins: int = 255, *, bias: bool = True, eps: float = 1e-5
    ) -> None:
        super().__init__()
        self.net = MLP(in_size, bins, hidden, layers, zero_init_output=True, bias=bias, eps=eps)
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
