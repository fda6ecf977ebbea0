"""Scalar encodings of DreamerV3: symlog and symlog two-hot targets for rewards and values.

Pure tensor functions with no state; the heads that use them are in ``nets.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def symlog(x: Tensor) -> Tensor:
    """sign(x) * log(1 + |x|): compresses large magnitudes, identity near zero."""
    return torch.sign(x) * torch.log1p(x.abs())


def symexp(x: Tensor) -> Tensor:
    """The inverse of :func:`symlog`."""
    return torch.sign(x) * torch.expm1(x.abs())


def twohot_bins(num: int = 255, low: float = -20.0, high: float = 20.0) -> Tensor:
    """Bin centres in symlog space, as DreamerV3 uses for rewards and values."""
    return torch.linspace(low, high, num)


def twohot(target: Tensor, bins: Tensor) -> Tensor:
    """Encode scalars as two-hot vectors over sorted ``bins``.

    The weight is split between the two nearest bins in proportion to closeness, so the
    expectation over bins equals the target (clipped to the bin range).

    :param target: (...) scalars in the bins' space (apply :func:`symlog` first for symlog bins).
    :param bins: (K,) sorted bin centres.
    :returns: (..., K) two-hot weights summing to 1.
    """
    target = target.clamp(bins[0], bins[-1])
    above = torch.searchsorted(bins, target.contiguous(), right=False).clamp(1, len(bins) - 1)
    below = above - 1
    low, high = bins[below], bins[above]
    weight_high = (target - low) / (high - low)
    encoded = torch.zeros(*target.shape, len(bins), dtype=target.dtype, device=target.device)
    encoded.scatter_(-1, below.unsqueeze(-1), (1.0 - weight_high).unsqueeze(-1))
    encoded.scatter_add_(-1, above.unsqueeze(-1), weight_high.unsqueeze(-1))
    return encoded


def twohot_loss(logits: Tensor, target: Tensor, bins: Tensor) -> Tensor:
    """Cross-entropy between predicted bin logits and the two-hot of symlog(target).

    :param logits: (..., K) bin logits.
    :param target: (...) raw scalar targets.
    :returns: (...) the loss per element.
    """
    return -(twohot(symlog(target), bins) * F.log_softmax(logits, dim=-1)).sum(-1)


def twohot_mean(logits: Tensor, bins: Tensor) -> Tensor:
    """The predicted scalar: symexp of the expected bin under softmax(logits)."""
    # A matrix-vector product (no (..., K) product tensor), kept in float32 under autocast.
    with torch.autocast(logits.device.type, enabled=False):
        return symexp(F.softmax(logits.float(), dim=-1) @ bins.float())
