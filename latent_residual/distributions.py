"""Multi-categorical latent distributions: unimix, straight-through samples, KL and its balanced, masked loss.

Pure tensor functions with no state; scalar encodings (symlog, two-hot) are in ``encodings.py``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

#: Below this many classes torch's CPU (log-)softmax over the last axis takes a slow path (3-9x slower
#: forward and backward for 2-8 classes than over another axis, measured on this project's CPU).
_NARROW_CLASSES = 16


def _over_classes(function: Callable[..., Tensor], logits: Tensor) -> Tensor:
    """``function(logits, dim=-1)``; for few classes on a CPU, run as a reduction over the second-last axis
    of the transposed view (vectorised), then laid out as the input again."""
    if logits.dim() < 2 or logits.shape[-1] >= _NARROW_CLASSES or logits.device.type != "cpu":
        return function(logits, dim=-1)
    return function(logits.transpose(-1, -2), dim=-2).transpose(-1, -2).contiguous()


def softmax(logits: Tensor) -> Tensor:
    """Softmax over the classes (the last axis)."""
    return _over_classes(F.softmax, logits)


def log_probs(logits: Tensor, unimix: float = 0.0) -> Tensor:
    """Return log-probabilities of softmax(logits) mixed with ``unimix`` of the uniform distribution.

    :param logits: Raw logits, classes on the last axis, e.g. (B, groups, classes).
    :param unimix: Weight of the uniform mixture in [0, 1); 0 gives plain log-softmax.
    """
    if unimix == 0.0:
        return _over_classes(F.log_softmax, logits)
    return torch.log(probs(logits, unimix))


def probs(logits: Tensor, unimix: float = 0.0) -> Tensor:
    """Return softmax(logits) mixed with ``unimix`` of the uniform distribution."""
    if unimix == 0.0:
        return softmax(logits)  # one softmax instead of log-softmax then exp
    classes = logits.shape[-1]
    return (1.0 - unimix) * softmax(logits) + unimix / classes


def sample_one_hot(prob: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Draw a one-hot sample per group with a straight-through gradient to ``prob``.

    Sampled by inverting each group's cumulative distribution at one uniform draw: one random
    number per group, where ``torch.multinomial`` draws one per class (the imagination's hot spot).

    :param prob: Probabilities, classes on the last axis, e.g. (B, groups, classes).
    :returns: One-hot tensor of the same shape; its gradient flows to ``prob`` as identity.
    :raises ValueError: If ``prob`` holds NaN or infinite values. Not checked while ``torch.compile``
        traces (the branch would split the graph): NaN then draws class 0, so the caller checks its
        own output (the world-model loss does, through the KL of the same logits).
    """
    flat = prob.detach().reshape(-1, prob.shape[-1])  # (N, C)
    cdf = flat.cumsum(-1)  # (N, C)
    total = cdf[:, -1:]  # (N, 1); 1 up to rounding
    if not torch.compiler.is_compiling() and not torch.isfinite(
        total.sum()
    ):  # one reduction: NaN and inf anywhere reach the sum
        raise ValueError(f"sample_one_hot: the probabilities {tuple(prob.shape)} hold NaN or infinite values.")
    # u in [0, total): the class is the first whose cdf exceeds u, never a class of probability 0.
    u = torch.rand(total.shape, generator=generator, dtype=flat.dtype, device=flat.device) * total
    index = (cdf <= u).sum(-1, keepdim=True).clamp(max=flat.shape[-1] - 1)  # (N, 1)
    return _StraightThrough.apply(prob, index)


class _StraightThrough(torch.autograd.Function):
    """The one-hot of ``index`` (N, 1) shaped as ``prob``, with ``prob``'s gradient passed through unchanged
    (``one_hot + prob - prob.detach()`` in one step)."""

    @staticmethod
    def forward(ctx: object, prob: Tensor, index: Tensor) -> Tensor:
        flat = torch.zeros(index.shape[0], prob.shape[-1], dtype=prob.dtype, device=prob.device)
        return flat.scatter_(-1, index, 1.0).reshape(prob.shape)

    @staticmethod
    def backward(ctx: object, grad: Tensor) -> tuple[Tensor, None]:
        return grad, None


def mode_one_hot(prob: Tensor) -> Tensor:
    """Return the one-hot of the most probable class per group (deterministic deployment)."""
    return F.one_hot(prob.argmax(-1), prob.shape[-1]).to(prob.dtype)


def kl(p_log: Tensor, q_log: Tensor) -> Tensor:
    """KL(p || q) between multi-categoricals given log-probabilities, summed over groups.

    :param p_log: (..., groups, classes) log-probabilities of p.
    :param q_log: (..., groups, classes) log-probabilities of q.
    :returns: (...) the KL in nats.
    """
    return (p_log.exp() * (p_log - q_log)).sum(dim=(-2, -1))


def masked_mean(value: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``value`` over entries where ``mask`` is true; 0 when nothing is selected."""
    mask = mask.to(value.dtype)
    return (value * mask).sum() / mask.sum().clamp(min=1.0)


def balanced_kl(
    post_log: Tensor,
    prior_log: Tensor,
    is_first: Tensor,
    *,
    dyn_scale: float,
    rep_scale: float,
    free_bits: float,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The KL-balanced latent loss of DreamerV3/DRAW, masked at episode starts.

    ``dyn`` = KL(sg(q) || p) trains the prior; ``rep`` = KL(q || sg(p)) trains the posterior.
    Each is clipped from below at ``free_bits`` nats per step, then averaged over the steps that
    are not episode starts (their prior carries no information about the observation).

    :param post_log: (B, T, groups, classes) posterior log-probabilities q.
    :param prior_log: (B, T, groups, classes) prior log-probabilities p.
    :param is_first: (B, T) true at episode starts.
    :returns: The scalar loss and the unclipped ``dyn`` and ``rep`` means for logging.
    """
    dyn = kl(post_log.detach(), prior_log)  # (B, T)
    rep = kl(post_log, prior_log.detach())  # (B, T)
    keep = ~is_first.bool()
    loss = dyn_scale * masked_mean(dyn.clamp(min=free_bits), keep) + rep_scale * masked_mean(
        rep.clamp(min=free_bits), keep
    )
    return loss, {"dyn": masked_mean(dyn.detach(), keep), "rep": masked_mean(rep.detach(), keep)}
