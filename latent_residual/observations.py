"""Dict observations as backbones see them: image and vector keys, pixels to [-0.5, 0.5], symlog vectors, recon loss.

No networks (image CNNs are in ``nets.py``) and no Gymnasium import: spaces are duck-typed, as in ``serialization.py``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from latent_residual import encodings
from latent_residual.errors import ConfigError, DatasetError, did_you_mean

L = TypeVar("L", bound="ObservationLayout")


def image_to_float(image: Tensor, dtype: torch.dtype) -> Tensor:
    """Map uint8 pixels in [0, 255] to [-0.5, 0.5], the scale of an image decoder's output."""
    return image.to(dtype) / 255.0 - 0.5


def _is_box(space: Any) -> bool:
    return all(hasattr(space, name) for name in ("shape", "dtype", "low", "high"))


@dataclass(frozen=True)
class ObservationLayout:
    """Which keys of a Dict observation space are images (uint8 H x W x C) and which are vectors (every
    other Box), each in sorted key order: the order encoders concatenate them in."""

    images: dict[str, tuple[int, int, int]]
    vectors: dict[str, tuple[int, ...]]

    @classmethod
    def from_space(cls: type[L], space: Any, owner: str) -> L:
        """Split a Dict-of-Box space; ``owner`` (``"DRAW"``, ...) starts the ``ConfigError`` messages.

        Image sizes are not checked here: each backbone has its own rule for them.
        """
        spaces = getattr(space, "spaces", None)
        if not isinstance(spaces, Mapping):
            raise ConfigError(
                f"{owner} needs a gymnasium.spaces.Dict observation space, got {space!r}; wrap a single "
                "Box as Dict({'state': box})."
            )
        images, vectors = {}, {}
        for key in sorted(spaces):
            sub = spaces[key]
            if not _is_box(sub):
                raise ConfigError(f"{owner} observation {key!r} must be a Box space, got {sub!r}.")
            if np.dtype(sub.dtype) == np.uint8 and len(sub.shape) == 3:
                images[key] = tuple(sub.shape)
            else:
                vectors[key] = tuple(sub.shape)
        if not images and not vectors:
            raise ConfigError(f"{owner} needs at least one observation key, got an empty Dict space.")
        return cls(images, vectors)

    @property
    def keys(self) -> list[str]:
        return [*self.images, *self.vectors]

    def shape(self, key: str) -> tuple[int, ...]:
        return self.images[key] if key in self.images else self.vectors[key]

    def check_names(self, names: Iterable[str], setting: str) -> None:
        """Refuse a ``setting`` (e.g. ``"DRAWConfig.recon_key_scales"``) that names a key this layout lacks."""
        unknown = sorted(set(names) - set(self.keys))
        if unknown:
            raise ConfigError(
                f"{setting} names {unknown}, which the observation space lacks; its keys: {self.keys}."
                f"{did_you_mean(unknown[0], self.keys)}"
            )

    @property
    def vector_size(self) -> int:
        """Elements of all vector keys together."""
        return sum(math.prod(shape) for shape in self.vectors.values())

    def lead_shape(self, obs: Mapping[str, Tensor], owner: str) -> torch.Size:
        """The leading axes of raw observations ``(*lead, *shape)`` per key; a ``DatasetError`` names
        the keys ``obs`` lacks."""
        missing = [key for key in self.keys if key not in obs]
        if missing:
            raise DatasetError(f"{owner} observations lack keys {missing}; got keys {sorted(obs)}.")
        first = self.keys[0]
        return obs[first].shape[: obs[first].dim() - len(self.shape(first))]

    def vector_input(self, obs: Mapping[str, Tensor], dtype: torch.dtype) -> Tensor:
        """Every vector key flattened and concatenated in order, cast to ``dtype`` and symlog-ed:
        (N, vector_size), N the product of the leading axes."""
        flat = torch.cat([obs[key].reshape(-1, math.prod(shape)) for key, shape in self.vectors.items()], -1)
        return encodings.symlog(flat.to(dtype))

    def reconstruction_loss(self, predictions: Mapping[str, Tensor], obs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Squared error summed over each observation's elements: (N,) per key, for predictions (images on
        the [-0.5, 0.5] scale, vectors in symlog space) and raw targets, both (N, *shape)."""
        losses = {}
        for key, prediction in predictions.items():
            # At least float32: under bf16 autocast the errors of 12288 pixels are summed.
            dtype = torch.promote_types(prediction.dtype, torch.float32)
            if key in self.images:
                target = image_to_float(obs[key], dtype)
            else:
                target = encodings.symlog(obs[key].to(dtype))
            error = F.mse_loss(prediction.to(dtype), target, reduction="none")  # (N, *shape); a scalar key's (N,)
            losses[key] = error.reshape(len(error), -1).sum(-1)
        return losses

    def decoded(self, predictions: Mapping[str, Tensor], lead: tuple[int, ...]) -> dict[str, Tensor]:
        """Decoder outputs (N, *shape) per key as ``decode`` returns them: (*lead, *shape), images on the
        [-0.5, 0.5] scale, vectors back in the environment's units (symexp)."""
        decoded = {}
        for key, value in predictions.items():
            if key in self.vectors:
                value = encodings.symexp(value)
            decoded[key] = value.reshape(*lead, *self.shape(key))
        return decoded
