"""The world-model loss backbones share: observe a (B, T) batch, balanced KL, reconstruction, the weighted sum.

No networks and no backbone's own terms (it calls their decoder, reward and continuation losses); fitting is elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol

import torch
from torch import Tensor

from latent_residual import distributions, rollout
from latent_residual.contract import WorldModel
from latent_residual.errors import DatasetError
from latent_residual.observations import ObservationLayout

#: Keys besides the observations that :func:`world_model_loss` reads from a batch.
BATCH_KEYS = ("action", "reward", "is_first", "is_terminal")


class LossScales(Protocol):
    """The weights of the loss terms and the KL's free bits (fields of a backbone's config)."""

    recon_scale: float
    recon_key_scales: Mapping[str, float]
    reward_scale: float
    cont_scale: float
    dyn_scale: float
    rep_scale: float
    free_bits: float


def world_model_loss(
    model: WorldModel,
    batch: Mapping[str, Tensor],
    layout: ObservationLayout,
    decoder: Callable[[Tensor], Mapping[str, Tensor]],
    scales: LossScales,
    *,
    owner: str,
    dtype: torch.dtype,
    reward_loss: Callable[[Tensor, Tensor], Tensor],
    cont_loss: Callable[[Tensor, Tensor], Tensor],
    reward_optional: bool = False,
) -> tuple[Tensor, dict[str, float]]:
    """Reconstruction + reward + continuation + balanced KL (DreamerV3's), on a (B, T) batch.

    ``batch["action"][:, t]`` is the action taken at step t and ``batch["reward"][:, t]`` the reward
    received on arriving at step t; the continuation target is ``1 - is_terminal``. The batch is
    filtered with :func:`latent_residual.rollout.observe`; the KL is
    :func:`latent_residual.distributions.balanced_kl` with the model's unimix.

    :param layout: The observation keys; each is reconstructed from the features.
    :param decoder: (N, feature_size) features -> predictions per key, as
        :meth:`ObservationLayout.reconstruction_loss` scores them.
    :param scales: ``recon_scale``, ``recon_key_scales`` (per observation key, 1 when not named), ``reward_scale``,
        ``cont_scale``, ``dyn_scale``, ``rep_scale``, ``free_bits``.
    :param owner: Names the model in the ``DatasetError`` for missing keys (``"DRAW"`` -> ``DRAW.loss``).
    :param dtype: The model's parameter dtype; actions, rewards and targets are cast to it.
    :param reward_loss: (N,) features and raw reward targets (N,) -> the scalar reward loss.
    :param cont_loss: Features and continuation targets (N,) -> the scalar continuation loss.
    :param reward_optional: A batch without ``reward`` (reward-free target data) trains without the
        reward term instead of raising.
    :returns: The scalar loss and float metrics: ``loss``, ``recon``, ``recon/<key>``, ``reward``,
        ``cont``, ``kl`` and the unclipped ``dyn`` and ``rep``.
    """
    optional = ("reward",) if reward_optional else ()
    missing = [key for key in (*layout.keys, *BATCH_KEYS) if key not in batch and key not in optional]
    if missing:
        raise DatasetError(f"{owner}.loss needs batch keys {missing}; got keys {sorted(batch)}.")
    is_first = batch["is_first"].bool()
    B, T = is_first.shape
    embed = model.embed(batch)  # (B, T, E)
    prev_action = rollout.prev_actions(batch["action"].to(dtype).reshape(B, T, model.action_size))
    out = rollout.observe(model, prev_action, is_first, embed=embed)
    kl_loss, kl_metrics = distributions.balanced_kl(
        distributions.log_probs(out["post_logits"], model.posterior_unimix),
        distributions.log_probs(out["prior_logits"], model.prior_unimix),
        is_first,
        dyn_scale=scales.dyn_scale,
        rep_scale=scales.rep_scale,
        free_bits=scales.free_bits,
    )
    features = out["features"].reshape(B * T, model.feature_size)
    targets = {key: batch[key].reshape(B * T, *layout.shape(key)) for key in layout.keys}
    recon = {key: value.mean() for key, value in layout.reconstruction_loss(decoder(features), targets).items()}
    recon_loss = sum(scales.recon_key_scales.get(key, 1.0) * value for key, value in recon.items())
    if "reward" in batch:
        reward = reward_loss(features, batch["reward"].reshape(B * T).to(dtype))
    else:
        reward = torch.zeros((), dtype=dtype, device=features.device)
    cont = cont_loss(features, 1.0 - batch["is_terminal"].reshape(B * T).to(dtype))
    loss = scales.recon_scale * recon_loss + scales.reward_scale * reward + scales.cont_scale * cont + kl_loss
    named = {
        "loss": loss,
        "recon": recon_loss,
        **{f"recon/{key}": value for key, value in recon.items()},
        "reward": reward,
        "cont": cont,
        "kl": kl_loss,
        **kl_metrics,
    }
    # One device-to-host copy for all metrics instead of one sync each.
    values = torch.stack([value.detach().float() for value in named.values()]).tolist()
    return loss, dict(zip(named, values, strict=True))
