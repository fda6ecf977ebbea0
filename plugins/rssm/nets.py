"""The RSSM's networks: LayerNorm GRU cell, bias-free MLPs, stacked-image/vector encoder and decoder, DreamerV3 init.

The world model that wires them together is in ``model.py``; image CNNs, observation layout, loss and KL are the core's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from latent_residual import nets, observations
from latent_residual.errors import ConfigError

#: LayerNorm epsilon of every norm in DreamerV3 and sheeprl's ``dreamer_v3`` configs.
NORM_EPS = 1e-3
#: Side of the smallest feature map of the image encoder (DreamerV3 and sheeprl stop at 4x4).
MIN_SIDE = 4


# ---------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------


def dense_blocks(in_size: int, units: int, layers: int) -> nn.Sequential:
    """(bias-free Linear -> LayerNorm(eps 1e-3) -> SiLU) x ``layers``: sheeprl's MLP with a norm, no output layer."""
    return nets.dense_blocks(in_size, units, layers, bias=False, eps=NORM_EPS)


def dense_head(in_size: int, out_size: int, units: int, layers: int) -> nets.MLP:
    """``dense_blocks`` then a biased Linear output (the core's ``MLP``, bias-free with eps 1e-3): the
    prior, posterior, reward and continuation nets."""
    return nets.MLP(in_size, out_size, units, layers, bias=False, eps=NORM_EPS)


class LayerNormGRUCell(nn.Module):
    """DreamerV3's GRU cell, as sheeprl's ``LayerNormGRUCell`` with ``bias=False``.

    ``[r, c, u] = LayerNorm(W [h, x])`` (one bias-free Linear to 3H, the norm over all 3H, eps 1e-3);
    ``c = tanh(sigmoid(r) * c)``; ``u = sigmoid(u - 1)``; ``h' = u * c + (1 - u) * h``.
    """

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.linear = nn.Linear(hidden_size + input_size, 3 * hidden_size, bias=False)
        self.norm = nn.LayerNorm(3 * hidden_size, eps=NORM_EPS)

    def forward(self, x: Tensor, h: Tensor) -> Tensor:
        """Step (B, input_size) inputs from (B, H) state h to the next (B, H) state."""
        gates = self.norm(self.linear(torch.cat([h, x], -1)))  # (B, 3H); h first, as sheeprl
        reset, cand, update = gates.chunk(3, -1)  # (B, H) each
        cand = torch.tanh(torch.sigmoid(reset) * cand)
        update = torch.sigmoid(update - 1.0)  # -1: the cell starts biased towards keeping h
        return update * cand + (1.0 - update) * h


class RecurrentModel(nn.Module):
    """The deterministic transition: input block over [z_{t-1}, a_{t-1}], then the GRU cell (sheeprl's
    ``rssm.recurrent_model``: ``mlp`` is our ``inputs``, ``rnn`` our ``cell``)."""

    def __init__(self, input_size: int, units: int, deter: int) -> None:
        super().__init__()
        self.inputs = dense_blocks(input_size, units, 1)
        self.cell = LayerNormGRUCell(units, deter)

    def forward(self, x: Tensor, h: Tensor) -> Tensor:
        """(B, S*D + A) flattened z and action, (B, H) h -> the next (B, H) h."""
        return self.cell(self.inputs(x), h)


# ---------------------------------------------------------------------------
# Observations
# ---------------------------------------------------------------------------


class ObservationLayout(observations.ObservationLayout):
    """The core's layout with the RSSM's rule for images: square, a side of 4 * 2**n, one size for all
    (they share one CNN, stacked on channels)."""

    @classmethod
    def for_rssm(cls, space: Any) -> ObservationLayout:
        layout = cls.from_space(space, "The RSSM")
        for key, shape in layout.images.items():
            height, width, _ = shape
            stages = math.log2(height / MIN_SIDE) if height >= 2 * MIN_SIDE else 0.0
            if height != width or stages < 1 or not stages.is_integer():
                raise ConfigError(
                    f"RSSM image {key!r} has shape {shape}; images must be square with a side of "
                    f"{MIN_SIDE} * 2**n, n >= 1 (64x64 works)."
                )
        if len({shape[:2] for shape in layout.images.values()}) > 1:
            raise ConfigError(f"RSSM images share one encoder, so they need one size; got {dict(layout.images)}.")
        return layout

    @property
    def image_side(self) -> int:
        return next(iter(self.images.values()))[0]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(side, side, channels of every image key stacked)."""
        return (self.image_side, self.image_side, sum(shape[2] for shape in self.images.values()))

    @property
    def cnn_stages(self) -> int:
        """Stride-2 convs from the image side down to ``MIN_SIDE`` (4 for 64x64)."""
        return int(math.log2(self.image_side // MIN_SIDE))


class MultiEncoder(nn.Module):
    """Embeds a dict of raw observations: [CNN over the stacked images, symlog MLP over the vectors]."""

    def __init__(self, layout: ObservationLayout, multiplier: int, units: int, layers: int) -> None:
        super().__init__()
        self.layout = layout
        self.images: nets.ImageEncoder | None = None
        self.vectors: nn.Sequential | None = None
        self.out_size = 0
        if layout.images:
            self.images = nets.ImageEncoder(layout.image_shape, multiplier, layout.cnn_stages, eps=NORM_EPS)
            self.out_size += self.images.out_size  # channel-major (C' * 4 * 4), as sheeprl's
        self.vector_size = layout.vector_size
        if layout.vectors:
            self.vectors = dense_blocks(self.vector_size, units, layers)
            self.out_size += units

    def forward(self, obs: Mapping[str, Tensor], dtype: torch.dtype) -> Tensor:
        """Embed observations with any leading axes, (*lead, *shape) per key, to (*lead, out_size)."""
        lead = self.layout.lead_shape(obs, "RSSM")
        parts = []
        if self.images is not None:
            stacked = torch.cat([obs[key].reshape(-1, *shape) for key, shape in self.layout.images.items()], -1)
            parts.append(self.images(stacked, dtype))  # (N, out) from (N, H, W, sum C)
        if self.vectors is not None:
            parts.append(self.vectors(self.layout.vector_input(obs, dtype)))  # (N, units)
        return torch.cat(parts, -1).reshape(*lead, self.out_size)


class MultiDecoder(nn.Module):
    """Reconstructs every key from features: the images from one transposed CNN (split by channels),
    each vector from a shared bias-free MLP and its own biased Linear head, in symlog space."""

    def __init__(self, layout: ObservationLayout, in_size: int, multiplier: int, units: int, layers: int) -> None:
        super().__init__()
        self.layout = layout
        self.images: nets.ImageDecoder | None = None
        self.channels = [shape[2] for shape in layout.images.values()]
        if layout.images:
            # A biased Linear to the (C, 4, 4) map (sheeprl's order), transposed convs to the stacked channels.
            self.images = nets.ImageDecoder(
                in_size, layout.image_shape, multiplier, layout.cnn_stages, eps=NORM_EPS, channels_first=True
            )
        self.vectors = dense_blocks(in_size, units, layers) if layout.vectors else None
        self.heads = nn.ModuleDict(
            {key: nn.Linear(units if layers else in_size, layout.encoded_size(key)) for key in layout.vectors}
        )

    def forward(self, features: Tensor) -> dict[str, Tensor]:
        """Predict from (N, in_size) features: images (N, H, W, C) on the [-0.5, 0.5] scale, vectors
        (N, encoded_size) in symlog space (angles as cos and sin)."""
        out: dict[str, Tensor] = {}
        if self.images is not None:
            pixels = self.images(features).split(self.channels, -1)  # (N, H, W, C) each
            out.update(zip(self.layout.images, pixels, strict=True))
        if self.vectors is not None:
            hidden = self.vectors(features)  # (N, units)
            for key, head in self.heads.items():
                out[key] = head(hidden)
        return out


# ---------------------------------------------------------------------------
# Initialisation (DreamerV3's, as sheeprl's ``init_weights`` and ``uniform_init_weights``)
# ---------------------------------------------------------------------------


def _fans(module: nn.Module) -> tuple[int, int]:
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    space = module.kernel_size[0] * module.kernel_size[1]
    return space * module.in_channels, space * module.out_channels


def init_weights(module: nn.Module) -> None:
    """Truncated normal with fan-average variance for Linear and conv weights, zero biases, unit norms."""
    if isinstance(module, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
        fan_in, fan_out = _fans(module)
        # 0.8796...: the std of a unit normal truncated at +-2, so the weights' std is the target.
        std = math.sqrt(2.0 / (fan_in + fan_out)) / 0.87962566103423978
        nn.init.trunc_normal_(module.weight, std=std, a=-2.0 * std, b=2.0 * std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def uniform_init(scale: float) -> Callable[[nn.Module], None]:
    """Uniform output-layer init with variance ``scale`` / fan-average (0 gives zeros), zero bias."""

    def apply(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            fan_in, fan_out = _fans(module)
            limit = math.sqrt(3.0 * scale / ((fan_in + fan_out) / 2.0))
            nn.init.uniform_(module.weight, -limit, limit)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    return apply
