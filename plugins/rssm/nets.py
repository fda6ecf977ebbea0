"""The RSSM's networks: LayerNorm GRU cell, bias-free MLPs, image/vector encoders and decoders, DreamerV3 init.

The world model that wires them together, and its loss, are in ``model.py``; sampling and KL are the core's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import gymnasium
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latent_residual import encodings
from latent_residual.errors import ConfigError, DatasetError

#: LayerNorm epsilon of every norm in DreamerV3 and sheeprl's ``dreamer_v3`` configs.
NORM_EPS = 1e-3
#: Side of the smallest feature map of the image encoder (DreamerV3 and sheeprl stop at 4x4).
MIN_SIDE = 4


# ---------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------


def dense_blocks(in_size: int, units: int, layers: int) -> nn.Sequential:
    """(bias-free Linear -> LayerNorm(eps 1e-3) -> SiLU) x ``layers``: sheeprl's MLP with a norm, no output layer."""
    blocks: list[nn.Module] = []
    for index in range(layers):
        blocks += [
            nn.Linear(in_size if index == 0 else units, units, bias=False),
            nn.LayerNorm(units, eps=NORM_EPS),
            nn.SiLU(),
        ]
    return nn.Sequential(*blocks)


class DenseHead(nn.Module):
    """``dense_blocks`` then a biased Linear output: the prior, posterior, reward and continuation nets."""

    def __init__(self, in_size: int, out_size: int, units: int, layers: int) -> None:
        super().__init__()
        self.body = dense_blocks(in_size, units, layers)
        self.out = nn.Linear(units if layers else in_size, out_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.body(x))


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


class ChannelNorm(nn.LayerNorm):
    """LayerNorm over the channels of a (N, C, H, W) feature map (sheeprl's ``LayerNormChannelLast``)."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


# ---------------------------------------------------------------------------
# Observations
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ObservationLayout:
    """Which keys of a Dict observation space are images (uint8 H x W x C, one shared size) and which
    vectors; both in sorted key order, the order their encoders concatenate them in."""

    images: dict[str, tuple[int, int, int]]
    vectors: dict[str, tuple[int, ...]]

    @classmethod
    def from_space(cls, space: gymnasium.spaces.Space) -> ObservationLayout:
        if not isinstance(space, gymnasium.spaces.Dict):
            raise ConfigError(
                f"The RSSM needs a gymnasium.spaces.Dict observation space, got {space!r}; wrap a single "
                "Box as Dict({'state': box})."
            )
        images, vectors = {}, {}
        for key in sorted(space.spaces):
            sub = space.spaces[key]
            if not isinstance(sub, gymnasium.spaces.Box):
                raise ConfigError(f"RSSM observation {key!r} must be a Box space, got {sub!r}.")
            if sub.dtype == np.uint8 and len(sub.shape) == 3:
                height, width, _ = sub.shape
                stages = math.log2(height / MIN_SIDE) if height >= 2 * MIN_SIDE else 0.0
                if height != width or stages < 1 or not stages.is_integer():
                    raise ConfigError(
                        f"RSSM image {key!r} has shape {sub.shape}; images must be square with a side of "
                        f"{MIN_SIDE} * 2**n, n >= 1 (64x64 works)."
                    )
                images[key] = tuple(sub.shape)
            else:
                vectors[key] = tuple(sub.shape)
        sizes = {shape[:2] for shape in images.values()}
        if len(sizes) > 1:
            raise ConfigError(
                f"RSSM images share one encoder, so they need one size; got {dict(images)}."
            )
        if not images and not vectors:
            raise ConfigError("The RSSM needs at least one observation key, got an empty Dict space.")
        return cls(images, vectors)

    @property
    def keys(self) -> list[str]:
        return [*self.images, *self.vectors]

    def shape(self, key: str) -> tuple[int, ...]:
        return self.images[key] if key in self.images else self.vectors[key]

    @property
    def image_side(self) -> int:
        return next(iter(self.images.values()))[0]

    @property
    def cnn_stages(self) -> int:
        """Stride-2 convs from the image side down to ``MIN_SIDE`` (4 for 64x64)."""
        return int(math.log2(self.image_side // MIN_SIDE))


def image_to_float(image: Tensor, dtype: torch.dtype) -> Tensor:
    """Map uint8 pixels in [0, 255] to [-0.5, 0.5], the scale of the image decoder's output."""
    return image.to(dtype) / 255.0 - 0.5


class ImageEncoder(nn.Module):
    """One CNN over every image key stacked on channels: stride-2 convs (kernel 4, bias-free,
    ``multiplier * 2**i`` channels, LayerNorm over channels, SiLU) down to 4x4, flattened (C, H, W)."""

    def __init__(self, channels: int, side: int, multiplier: int, stages: int) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        for index in range(stages):
            out = multiplier * 2**index
            blocks += [
                nn.Conv2d(channels, out, 4, stride=2, padding=1, bias=False),
                ChannelNorm(out, eps=NORM_EPS),
                nn.SiLU(),
            ]
            channels = out
        self.convs = nn.Sequential(*blocks)
        self.out_size = channels * (side >> stages) ** 2

    def forward(self, image: Tensor, dtype: torch.dtype) -> Tensor:
        """Encode (N, H, W, C) uint8 pixels to (N, out_size)."""
        x = image_to_float(image, dtype).permute(0, 3, 1, 2)  # (N, C, H, W), a view
        return self.convs(x).flatten(1)  # (N, C' * 4 * 4), channel-major as sheeprl's


class ImageDecoder(nn.Module):
    """The encoder's mirror: a biased Linear to the 4x4 map, transposed convs (bias-free, LayerNorm,
    SiLU) and a last biased transposed conv to the stacked image channels."""

    def __init__(self, in_size: int, channels: int, side: int, multiplier: int, stages: int) -> None:
        super().__init__()
        self.start = (multiplier * 2 ** (stages - 1), side >> stages, side >> stages)  # (C, h, w)
        self.linear = nn.Linear(in_size, math.prod(self.start))
        blocks: list[nn.Module] = []
        size = self.start[0]
        for index in reversed(range(stages - 1)):
            out = multiplier * 2**index
            blocks += [
                nn.ConvTranspose2d(size, out, 4, stride=2, padding=1, bias=False),
                ChannelNorm(out, eps=NORM_EPS),
                nn.SiLU(),
            ]
            size = out
        blocks.append(nn.ConvTranspose2d(size, channels, 4, stride=2, padding=1))
        self.convs = nn.Sequential(*blocks)

    def forward(self, features: Tensor) -> Tensor:
        """Decode (N, in_size) features to (N, H, W, C) pixels on the [-0.5, 0.5] scale."""
        x = self.linear(features).reshape(-1, *self.start)  # (N, C, 4, 4)
        return self.convs(x).permute(0, 2, 3, 1)


class MultiEncoder(nn.Module):
    """Embeds a dict of raw observations: [CNN over the stacked images, symlog MLP over the vectors]."""

    def __init__(self, layout: ObservationLayout, multiplier: int, units: int, layers: int) -> None:
        super().__init__()
        self.layout = layout
        self.images: ImageEncoder | None = None
        self.vectors: nn.Sequential | None = None
        self.out_size = 0
        if layout.images:
            channels = sum(shape[2] for shape in layout.images.values())
            self.images = ImageEncoder(channels, layout.image_side, multiplier, layout.cnn_stages)
            self.out_size += self.images.out_size
        self.vector_size = sum(math.prod(shape) for shape in layout.vectors.values())
        if layout.vectors:
            self.vectors = dense_blocks(self.vector_size, units, layers)
            self.out_size += units

    def forward(self, obs: Mapping[str, Tensor], dtype: torch.dtype) -> Tensor:
        """Embed observations with any leading axes, (*lead, *shape) per key, to (*lead, out_size)."""
        missing = [key for key in self.layout.keys if key not in obs]
        if missing:
            raise DatasetError(f"RSSM observations lack keys {missing}; got keys {sorted(obs)}.")
        first = self.layout.keys[0]
        lead = obs[first].shape[: obs[first].dim() - len(self.layout.shape(first))]
        parts = []
        if self.images is not None:
            stacked = torch.cat([obs[key].reshape(-1, *shape) for key, shape in self.layout.images.items()], -1)
            parts.append(self.images(stacked, dtype))  # (N, out) from (N, H, W, sum C)
        if self.vectors is not None:
            flat = torch.cat(
                [obs[key].reshape(-1, math.prod(shape)) for key, shape in self.layout.vectors.items()], -1
            )
            parts.append(self.vectors(encodings.symlog(flat.to(dtype))))  # (N, units)
        return torch.cat(parts, -1).reshape(*lead, self.out_size)


class MultiDecoder(nn.Module):
    """Reconstructs every key from features: the images from one transposed CNN (split by channels),
    each vector from a shared bias-free MLP and its own biased Linear head, in symlog space."""

    def __init__(self, layout: ObservationLayout, in_size: int, multiplier: int, units: int, layers: int) -> None:
        super().__init__()
        self.layout = layout
        self.images: ImageDecoder | None = None
        self.channels = [shape[2] for shape in layout.images.values()]
        if layout.images:
            self.images = ImageDecoder(in_size, sum(self.channels), layout.image_side, multiplier, layout.cnn_stages)
        self.vectors = dense_blocks(in_size, units, layers) if layout.vectors else None
        self.heads = nn.ModuleDict(
            {key: nn.Linear(units if layers else in_size, math.prod(shape)) for key, shape in layout.vectors.items()}
        )

    def forward(self, features: Tensor) -> dict[str, Tensor]:
        """Predict from (N, in_size) features: images (N, H, W, C) on the [-0.5, 0.5] scale, vectors
        (N, *shape) in symlog space."""
        out: dict[str, Tensor] = {}
        if self.images is not None:
            pixels = self.images(features).split(self.channels, -1)  # (N, H, W, C) each
            out.update(zip(self.layout.images, pixels, strict=True))
        if self.vectors is not None:
            hidden = self.vectors(features)  # (N, units)
            for key, head in self.heads.items():
                out[key] = head(hidden).reshape(-1, *self.layout.vectors[key])
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
