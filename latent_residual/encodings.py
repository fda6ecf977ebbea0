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


def twohot_indices(target: Tensor, bins: Tensor) -> tuple[Tensor, Tensor]:
    """The two nearest of sorted ``bins`` for each scalar, and their weights.

    The weight is split between the two bins in proportion to closeness, so the weighted bins
    equal the target (clipped to the bin range).

    :param target: (...) scalars in the bins' space (apply :func:`symlog` first for symlog bins).
    :param bins: (K,) sorted bin centres.
    :returns: bin indices (..., 2), below then above, and their weights (..., 2), summing to 1.
    """
    target = target.clamp(bins[0], bins[-1])
    above = torch.searchsorted(bins, target.contiguous(), right=False).clamp(1, len(bins) - 1)
    below = above - 1
    low, high = bins[below], bins[above]
    weight_high = (target - low) / (high - low)
    return torch.stack([below, above], -1), torch.stack([1.0 - weight_high, weight_high], -1)


def twohot(target: Tensor, bins: Tensor) -> Tensor:
    """Encode scalars (...) as two-hot vectors (..., K) over sorted ``bins`` (see :func:`twohot_indices`)."""
    index, weight = twohot_indices(target, bins)
    encoded = torch.zeros(*target.shape, len(bins), dtype=weight.dtype, device=target.device)
    return encoded.scatter_add_(-1, index, weight)


def twohot_cross_entropy(log_prob: Tensor, index: Tensor, weight: Tensor) -> Tensor:
    """Cross-entropy -sum_k target_k log_prob_k against targets given as bin indices and weights.

    It gathers the few bins a target names instead of multiplying a dense (..., K) target, which
    saves two (..., K) tensors forward and backward.

    :param log_prob: (..., K) bin log-probabilities.
    :param index: (..., n) bins of the target, as :func:`twohot_indices` gives them (several
        targets concatenated along the last axis add up).
    :param weight: (..., n) their weights.
    :returns: (...) the cross-entropy per element.
    """
    # gather neither broadcasts nor checks the leading axes: a smaller index would silently read a corner.
    if index.shape != weight.shape or index.shape[:-1] != log_prob.shape[:-1]:
        raise ValueError(
            f"twohot_cross_entropy: index {tuple(index.shape)} and weight {tuple(weight.shape)} "
            f"must match each other and log_prob {tuple(log_prob.shape)} on every axis but the last."
        )
    return -(log_prob.gather(-1, index) * weight).sum(-1)


def twohot_loss(logits: Tensor, target: Tensor, bins: Tensor) -> Tensor:
    """Cross-entropy between predicted bin logits and the two-hot of symlog(target).

    :param logits: (..., K) bin logits.
    :param target: (...) raw scalar targets.
    :returns: (...) the loss per element.
    """
    return twohot_cross_entropy(F.log_softmax(logits, dim=-1), *twohot_indices(symlog(target), bins))


def twohot_mean(logits: Tensor, bins: Tensor) -> Tensor:
    """The predicted scalar: symexp of the expected bin under softmax(logits)."""
    # A matrix-vector product (no (..., K) product tensor), kept in float32 under autocast.
    with torch.autocast(logits.device.type, enabled=False):
        return symexp(F.softmax(logits.float(), dim=-1) @ bins.float())
