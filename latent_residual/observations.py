"""Dict observations as backbones see them: image and vector keys, pixels to [-0.5, 0.5], symlog vectors, recon loss.

No networks (image CNNs are in ``nets.py``) and no Gymnasium import: spaces are duck-typed, as in ``serialization.py``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
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
    other Box), each in sorted key order: the order encoders concatenate them in; and which vector elements
    are angles, which encoders read and decoders predict as (cos, sin) so that theta and theta + 2 pi are one
    observation (an unlimited hinge's raw angle, like the DMC reacher's shoulder, winds past any range seen)."""

    images: dict[str, tuple[int, int, int]]
    vectors: dict[str, tuple[int, ...]]
    angles: dict[str, tuple[int, ...]] = field(default_factory=dict)

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

    def with_angles(self: L, angles: Mapping[str, Iterable[int]], setting: str) -> L:
        """This layout with ``angles`` (flat element indices per vector key) read as angles; a ``ConfigError``
        naming ``setting`` refuses an image key, a key the layout lacks or an index past the key's size."""
        self.check_names(angles, setting)
        checked = {}
        for key, indices in angles.items():
            if key not in self.vectors:
                raise ConfigError(f"{setting} names image {key!r}; angles are elements of vector keys.")
            size = math.prod(self.vectors[key])
            indices = tuple(sorted(int(index) for index in indices))
            if indices and indices[-1] >= size:
                raise ConfigError(f"{setting}[{key!r}] has index {indices[-1]}; {key!r} has {size} elements.")
            if indices:
                checked[key] = indices
        return replace(self, angles=checked)

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

    def encoded_size(self, key: str) -> int:
        """Elements of vector ``key`` as encoders read it and decoders predict it: one more per angle."""
        return math.prod(self.vectors[key]) + len(self.angles.get(key, ()))

    @property
    def vector_size(self) -> int:
        """Elements of all vector keys together, as encoders read them."""
        return sum(self.encoded_size(key) for key in self.vectors)

    def _encoded(self, key: str, value: Tensor) -> Tensor:
        """Raw ``value`` (N, *shape) of vector ``key`` to (N, encoded_size) in symlog space: the elements that
        are not angles in order, then the cosines, then the sines of the angles."""
        size = math.prod(self.vectors[key])
        flat = value.reshape(-1, size)
        angles = self.angles.get(key)
        if angles:
            # Column slices, not a fancy index: both ONNX exporters keep the batch axis dynamic through them.
            columns = [flat[:, i : i + 1] for i in range(size)]
            theta = torch.cat([columns[i] for i in angles], -1)
            kept = [columns[i] for i in range(size) if i not in angles]
            flat = torch.cat([*kept, torch.cos(theta), torch.sin(theta)], -1)
        return encodings.symlog(flat)

    def _raw(self, key: str, encoded: Tensor) -> Tensor:
        """The inverse of :meth:`_encoded`, (N, encoded_size) to (N, size): angles come back in (-pi, pi]."""
        flat = encodings.symexp(encoded)
        angles = self.angles.get(key)
        if not angles:
            return flat
        size, count = math.prod(self.vectors[key]), len(angles)
        others = [i for i in range(size) if i not in angles]
        kept, cos, sin = flat.split([size - count, count, count], -1)
        raw = flat.new_empty(len(flat), size)
        raw[:, others] = kept
        raw[:, list(angles)] = torch.atan2(sin, cos)
        return raw

    def lead_shape(self, obs: Mapping[str, Tensor], owner: str) -> torch.Size:
        """The leading axes of raw observations ``(*lead, *shape)`` per key; a ``DatasetError`` names
        the keys ``obs`` lacks."""
        missing = [key for key in self.keys if key not in obs]
        if missing:
            raise DatasetError(f"{owner} observations lack keys {missing}; got keys {sorted(obs)}.")
        first = self.keys[0]
        return obs[first].shape[: obs[first].dim() - len(self.shape(first))]

    def vector_input(self, obs: Mapping[str, Tensor], dtype: torch.dtype) -> Tensor:
        """Every vector key flattened (its angles as cos and sin), concatenated in order, cast to ``dtype`` and
        symlog-ed: (N, vector_size), N the product of the leading axes."""
        return torch.cat(
            [self._encoded(key, obs[key].reshape(-1, *shape).to(dtype)) for key, shape in self.vectors.items()], -1
        )

    def reconstruction_loss(self, predictions: Mapping[str, Tensor], obs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Squared error summed over each observation's elements: (N,) per key, for predictions (images (N, *shape)
        on the [-0.5, 0.5] scale, vectors (N, encoded_size) in symlog space) and raw targets (N, *shape)."""
        losses = {}
        for key, prediction in predictions.items():
            # At least float32: under bf16 autocast the errors of 12288 pixels are summed.
            dtype = torch.promote_types(prediction.dtype, torch.float32)
            if key in self.images:
                target = image_to_float(obs[key], dtype)
            else:
                target = self._encoded(key, obs[key].to(dtype))
            error = F.mse_loss(prediction.to(dtype), target, reduction="none")  # (N, *shape) or (N, encoded_size)
            losses[key] = error.reshape(len(error), -1).sum(-1)
        return losses

    def decoded(self, predictions: Mapping[str, Tensor], lead: tuple[int, ...]) -> dict[str, Tensor]:
        """Decoder outputs per key (images (N, *shape), vectors (N, encoded_size)) as ``decode`` returns them:
        (*lead, *shape), images on the [-0.5, 0.5] scale, vectors back in the environment's units (symexp; angles
        in (-pi, pi])."""
        decoded = {}
        for key, value in predictions.items():
            if key in self.vectors:
                value = self._raw(key, value)
            decoded[key] = value.reshape(*lead, *self.shape(key))
        return decoded
