"""DRAW's observation networks: image CNN and symlog-vector MLP encoders/decoders over a Dict space.

The latent dynamics, posterior and heads are assembled in ``model.py``; shared MLPs are in the core.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import gymnasium
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latent_residual import encodings
from latent_residual.errors import ConfigError, DatasetError
from latent_residual.nets import MLP


@dataclass(frozen=True)
class ObservationLayout:
    """Which keys of a Dict observation space are images (uint8 H x W x C) and which are vectors."""

    images: dict[str, tuple[int, int, int]]
    vectors: dict[str, tuple[int, ...]]

    @classmethod
    def from_space(cls, space: gymnasium.spaces.Space, cnn_layers: int) -> ObservationLayout:
        if not isinstance(space, gymnasium.spaces.Dict):
            raise ConfigError(
                f"DRAW needs a gymnasium.spaces.Dict observation space, got {space!r}; wrap a single "
                "Box as Dict({'state': box})."
            )
        images, vectors = {}, {}
        for key in sorted(space.spaces):
            sub = space.spaces[key]
            if not isinstance(sub, gymnasium.spaces.Box):
                raise ConfigError(f"DRAW observation {key!r} must be a Box space, got {sub!r}.")
            if sub.dtype == np.uint8 and len(sub.shape) == 3:
                height, width, _ = sub.shape
                stride = 2**cnn_layers
                if height % stride or width % stride:
                    raise ConfigError(
                        f"DRAW image {key!r} has shape {sub.shape}; with cnn_layers={cnn_layers} its "
                        f"height and width must be divisible by {stride} (64x64 works)."
                    )
                images[key] = tuple(sub.shape)
            else:
                vectors[key] = tuple(sub.shape)
        if not images and not vectors:
            raise ConfigError("DRAW needs at least one observation key, got an empty Dict space.")
        return cls(images, vectors)

    @property
    def keys(self) -> list[str]:
        return [*self.images, *self.vectors]

    def shape(self, key: str) -> tuple[int, ...]:
        return self.images[key] if key in self.images else self.vectors[key]


def image_to_float(image: Tensor, dtype: torch.dtype) -> Tensor:
    """Map uint8 pixels in [0, 255] to [-0.5, 0.5], the scale of the image decoder's output."""
    return image.to(dtype) / 255.0 - 0.5


class ChannelNorm(nn.LayerNorm):
    """LayerNorm over the channels of a (N, C, H, W) feature map."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def _blocks(in_size: int, units: int, layers: int) -> nn.Sequential:
    """Linear -> LayerNorm -> SiLU, ``layers`` times (an MLP whose output is its last activation)."""
    blocks: list[nn.Module] = []
    for index in range(layers):
        blocks += [nn.Linear(in_size if index == 0 else units, units), nn.LayerNorm(units), nn.SiLU()]
    return nn.Sequential(*blocks)


class ImageEncoder(nn.Module):
    """Stride-2 convs (kernel 4; depth, 2 depth, 4 depth, ...; LayerNorm over channels, SiLU), flattened."""

    def __init__(self, shape: tuple[int, int, int], depth: int, layers: int) -> None:
        super().__init__()
        height, width, channels = shape
        blocks: list[nn.Module] = []
        for index in range(layers):
            out = depth * 2**index
            blocks += [
                nn.Conv2d(channels, out, 4, stride=2, padding=1, bias=False),
                ChannelNorm(out),
                nn.SiLU(),
            ]
            channels = out
        self.convs = nn.Sequential(*blocks)
        self.out_size = channels * (height >> layers) * (width >> layers)

    def forward(self, image: Tensor, dtype: torch.dtype) -> Tensor:
        """Encode (N, H, W, C) uint8 pixels to (N, out_size)."""
        # A channels-last permute, not a copy: CPU and cuDNN convs take that layout directly.
        x = image_to_float(image, dtype).permute(0, 3, 1, 2)
        return self.convs(x).flatten(1)


class ImageDecoder(nn.Module):
    """Linear to the encoder's smallest map, then stride-2 transposed convs back to (N, H, W, C)."""

    def __init__(self, in_size: int, shape: tuple[int, int, int], depth: int, layers: int) -> None:
        super().__init__()
        height, width, channels = shape
        self.start = (height >> layers, width >> layers, depth * 2 ** (layers - 1))  # (h, w, C)
        self.linear = nn.Linear(in_size, math.prod(self.start))
        blocks: list[nn.Module] = []
        size = self.start[2]
        for index in reversed(range(layers - 1)):
            out = depth * 2**index
            blocks += [
                nn.ConvTranspose2d(size, out, 4, stride=2, padding=1, bias=False),
                ChannelNorm(out),
                nn.SiLU(),
            ]
            size = out
        blocks.append(nn.ConvTranspose2d(size, channels, 4, stride=2, padding=1))
        self.convs = nn.Sequential(*blocks)

    def forward(self, features: Tensor) -> Tensor:
        """Decode (N, in_size) features to (N, H, W, C) pixels on the [-0.5, 0.5] scale."""
        # Channels-last like the encoder, so the channel LayerNorms need no copies.
        x = self.linear(features).reshape(-1, *self.start).permute(0, 3, 1, 2)
        return self.convs(x).permute(0, 2, 3, 1)


class MultiEncoder(nn.Module):
    """Embeds a dict of raw observations: one CNN per image key, one symlog MLP over all vectors."""

    def __init__(
        self, layout: ObservationLayout, cnn_depth: int, cnn_layers: int, mlp_units: int, mlp_layers: int
    ) -> None:
        super().__init__()
        self.layout = layout
        self.images = nn.ModuleDict(
            {key: ImageEncoder(shape, cnn_depth, cnn_layers) for key, shape in layout.images.items()}
        )
        self.vector_size = sum(math.prod(shape) for shape in layout.vectors.values())
        self.vectors = _blocks(self.vector_size, mlp_units, mlp_layers) if layout.vectors else None
        self.out_size = sum(encoder.out_size for encoder in self.images.values()) + (
            mlp_units if layout.vectors else 0
        )

    def forward(self, obs: Mapping[str, Tensor], dtype: torch.dtype) -> Tensor:
        """Embed observations with any leading axes, (*lead, *shape) per key, to (*lead, out_size)."""
        missing = [key for key in self.layout.keys if key not in obs]
        if missing:
            raise DatasetError(f"DRAW observations lack keys {missing}; got keys {sorted(obs)}.")
        first = self.layout.keys[0]
        lead = obs[first].shape[: obs[first].dim() - len(self.layout.shape(first))]
        parts = [
            encoder(obs[key].reshape(-1, *self.layout.images[key]), dtype)
            for key, encoder in self.images.items()
        ]
        if self.vectors is not None:
            flat = torch.cat(
                [obs[key].reshape(-1, math.prod(shape)) for key, shape in self.layout.vectors.items()], -1
            )
            parts.append(self.vectors(encodings.symlog(flat.to(dtype))))
        return torch.cat(parts, -1).reshape(*lead, self.out_size)


class MultiDecoder(nn.Module):
    """Reconstructs every observation key from features: images by transposed convs, vectors in symlog."""

    def __init__(
        self,
        layout: ObservationLayout,
        in_size: int,
        cnn_depth: int,
        cnn_layers: int,
        mlp_units: int,
        mlp_layers: int,
    ) -> None:
        super().__init__()
        self.layout = layout
        self.images = nn.ModuleDict(
            {key: ImageDecoder(in_size, shape, cnn_depth, cnn_layers) for key, shape in layout.images.items()}
        )
        self.vector_sizes = [math.prod(shape) for shape in layout.vectors.values()]
        self.vectors = MLP(in_size, sum(self.vector_sizes), mlp_units, mlp_layers) if layout.vectors else None

    def forward(self, features: Tensor) -> dict[str, Tensor]:
        """Predict from (N, in_size) features: images (N, H, W, C) on the [-0.5, 0.5] scale, vectors
        (N, *shape) in symlog space."""
        out = {key: decoder(features) for key, decoder in self.images.items()}
        if self.vectors is not None:
            chunks = self.vectors(features).split(self.vector_sizes, -1)
            for (key, shape), chunk in zip(self.layout.vectors.items(), chunks, strict=True):
                out[key] = chunk.reshape(-1, *shape)
        return out

    def loss(self, features: Tensor, obs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Squared error summed over each observation's elements: (N,) per key, for targets (N, *shape)."""
        losses = {}
        for key, prediction in self(features).items():
            # At least float32: under bf16 autocast the errors of 12288 pixels are summed.
            dtype = torch.promote_types(prediction.dtype, torch.float32)
            if key in self.layout.images:
                target = image_to_float(obs[key], dtype)
            else:
                target = encodings.symlog(obs[key].to(dtype))
            losses[key] = F.mse_loss(prediction.to(dtype), target, reduction="none").flatten(1).sum(-1)
        return losses
