"""Multi-categorical latent distributions: unimix, straight-through samples, KL and its balanced, masked loss.

Pure tensor functions with no state; scalar encodings (symlog, two-hot) are in ``encodings.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def log_probs(logits: Tensor, unimix: float = 0.0) -> Tensor:
    """Return log-probabilities of softmax(logits) mixed with ``unimix`` of the uniform distribution.

    :param logits: Raw logits, classes on the last axis, e.g. (B, groups, classes).
    :param unimix: Weight of the uniform mixture in [0, 1); 0 gives plain log-softmax.
    """
    if unimix == 0.0:
        return F.log_softmax(logits, dim=-1)
    classes = logits.shape[-1]
    probs = (1.0 - unimix) * F.softmax(logits, dim=-1) + unimix / classes
    return torch.log(probs)


def probs(logits: Tensor, unimix: float = 0.0) -> Tensor:
    """Return softmax(logits) mixed with ``unimix`` of the uniform distribution."""
    return log_probs(logits, unimix).exp()


def sample_one_hot(prob: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Draw a one-hot sample per group with a straight-through gradient to ``prob``.

    :param prob: Probabilities, classes on the last axis, e.g. (B, groups, classes).
    :returns: One-hot tensor of the same shape; its gradient flows to ``prob`` as identity.
    """
    flat = prob.detach().reshape(-1, prob.shape[-1])
    index = torch.multinomial(flat, 1, generator=generator).squeeze(-1)
    one_hot = F.one_hot(index, prob.shape[-1]).to(prob.dtype).reshape(prob.shape)
    return one_hot + prob - prob.detach()


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
