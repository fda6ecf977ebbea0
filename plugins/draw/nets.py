"""DRAW's observation networks: one image CNN per image key and a symlog-vector MLP, encoders and decoders.

The latent dynamics, posterior and heads are assembled in ``model.py``; the CNNs, MLPs and the observation
layout are the core's (``latent_residual.nets``, ``latent_residual.observations``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from latent_residual.errors import ConfigError
from latent_residual.nets import MLP, ImageDecoder, ImageEncoder, dense_blocks
from latent_residual.observations import ObservationLayout


def observation_layout(space: Any, cnn_layers: int) -> ObservationLayout:
    """The core's layout of ``space``, whose images must have sides divisible by ``2**cnn_layers``."""
    layout = ObservationLayout.from_space(space, "DRAW")
    stride = 2**cnn_layers
    for key, shape in layout.images.items():
        height, width, _ = shape
        if height % stride or width % stride:
            raise ConfigError(
                f"DRAW image {key!r} has shape {shape}; with cnn_layers={cnn_layers} its "
                f"height and width must be divisible by {stride} (64x64 works)."
            )
    return layout


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
        self.vector_size = layout.vector_size
        self.vectors = dense_blocks(self.vector_size, mlp_units, mlp_layers) if layout.vectors else None
        self.out_size = sum(encoder.out_size for encoder in self.images.values()) + (mlp_units if layout.vectors else 0)

    def forward(self, obs: Mapping[str, Tensor], dtype: torch.dtype) -> Tensor:
        """Embed observations with any leading axes, (*lead, *shape) per key, to (*lead, out_size)."""
        lead = self.layout.lead_shape(obs, "DRAW")
        parts = [encoder(obs[key].reshape(-1, *self.layout.images[key]), dtype) for key, encoder in self.images.items()]
        if self.vectors is not None:
            parts.append(self.vectors(self.layout.vector_input(obs, dtype)))
        return torch.cat(parts, -1).reshape(*lead, self.out_size)


class MultiDecoder(nn.Module):
    """Reconstructs every observation key from features: images by transposed convs, vectors in symlog (angles
    as cos and sin; ``ObservationLayout.decoded`` turns them back)."""

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
        self.vector_sizes = [layout.encoded_size(key) for key in layout.vectors]
        self.vectors = MLP(in_size, sum(self.vector_sizes), mlp_units, mlp_layers) if layout.vectors else None

    def forward(self, features: Tensor) -> dict[str, Tensor]:
        """Predict from (N, in_size) features: images (N, H, W, C) on the [-0.5, 0.5] scale, vectors
        (N, encoded_size) in symlog space."""
        out = {key: decoder(features) for key, decoder in self.images.items()}
        if self.vectors is not None:
            out.update(zip(self.layout.vectors, self.vectors(features).split(self.vector_sizes, -1), strict=True))
        return out
