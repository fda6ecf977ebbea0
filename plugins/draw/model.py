"""The DRAW world model: a latent-state autoregressive model with no recurrent state, and its training loss.

Hyperparameters are in ``config.py`` and observation networks in ``nets.py``; rollouts are the core's.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

import gymnasium
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latent_residual import distributions, encodings, rollout
from latent_residual.contract import LatentSpec, State, WorldModel
from latent_residual.errors import ConfigError, DatasetError
from latent_residual.nets import MLP, BernoulliHead, TwoHotHead
from latent_residual_plugins.draw.config import DRAWConfig
from latent_residual_plugins.draw.nets import MultiDecoder, MultiEncoder, ObservationLayout

#: Keys besides the observations that ``DRAW.loss`` reads from a batch.
BATCH_KEYS = ("action", "reward", "is_first", "is_terminal")


class DRAW(WorldModel):
    """DRAW: z_t depends on (z_{t-1}, sigma_{t-1}, a_{t-1}) only, where sigma is the prior's softmax.

    The state is ``{"stoch": z, "belief": sigma}``, both (B, groups, classes). The posterior
    sees the current observation alone, so :func:`latent_residual.observe` batches it.
    ``decode`` returns images as float on the [-0.5, 0.5] scale (pixels / 255 - 0.5) and
    vectors in the environment's units.

    :param observation_space: A Dict of uint8 (H, W, C) images and float vectors.
    :param action_space: A Box; actions are clipped to [-1, 1] before the prior sees them.
    :param preset: A name in ``PRESETS`` (``tiny``, ``small``, ``paper``).
    :param overrides: ``DRAWConfig`` fields that replace the preset's.
    """

    posterior_uses_deter = False
    memoryless = True

    def __init__(
        self,
        observation_space: gymnasium.spaces.Space,
        action_space: gymnasium.spaces.Space,
        preset: str = "small",
        **overrides: Any,
    ) -> None:
        super().__init__()
        config = DRAWConfig.from_preset(preset, **overrides)
        if not isinstance(action_space, gymnasium.spaces.Box):
            raise ConfigError(f"DRAW needs a Box action space, got {action_space!r}.")
        self.config = config
        self.layout = ObservationLayout.from_space(observation_space, config.cnn_layers)
        self.latent = LatentSpec(config.groups, config.classes)
        self.action_size = math.prod(action_space.shape)
        self.feature_size = self.latent.size
        self.unimix = config.unimix
        self.encoder = MultiEncoder(
            self.layout, config.cnn_depth, config.cnn_layers, config.mlp_units, config.mlp_layers
        )
        self.prior = MLP(
            self.action_size + 2 * self.latent.size, self.latent.size, config.hidden, config.dynamics_layers
        )
        # Zeros start every episode from the uniform prior.
        self.initial_logits = nn.Parameter(torch.zeros(config.groups, config.classes))
        self.post = MLP(self.encoder.out_size, self.latent.size, config.hidden, config.posterior_layers)
        self.decoder = MultiDecoder(
            self.layout,
            self.feature_size,
            config.cnn_depth,
            config.cnn_layers,
            config.mlp_units,
            config.mlp_layers,
        )
        self.reward_head = TwoHotHead(
            self.feature_size, config.head_units, config.head_layers, config.reward_bins
        )
        self.cont_head = BernoulliHead(self.feature_size, config.head_units, config.head_layers)

    def _dtype(self) -> torch.dtype:
        return self.initial_logits.dtype

    def dynamics_parameters(self) -> Iterator[nn.Parameter]:
        """The prior network and the initial logits: what the "DRAW finetune" baseline trains."""
        yield from self.prior.parameters()
        yield self.initial_logits

    # ------------------------------------------------------------------
    # The contract
    # ------------------------------------------------------------------

    def initial_state(self, batch_size: int) -> State:
        shape = (batch_size, *self.initial_logits.shape)
        return {"stoch": self.initial_logits.new_zeros(shape), "belief": self.initial_logits.new_zeros(shape)}

    def embed(self, obs: Mapping[str, Tensor]) -> Tensor:
        return self.encoder(obs, self._dtype())

    def dynamics(self, state: State, action: Tensor, is_first: Tensor) -> tuple[Tensor, State]:
        B = action.shape[0]
        G, C = self.latent.groups, self.latent.classes
        inputs = torch.cat(
            [
                action.to(self._dtype()).clamp(-1.0, 1.0),
                state["belief"].flatten(1),
                state["stoch"].flatten(1),
            ],
            -1,
        )
        logits = self.prior(inputs).reshape(B, G, C)
        logits = torch.where(is_first.reshape(B, 1, 1), self.initial_logits, logits)
        return logits, {}

    def posterior(self, deter: State, embed: Tensor) -> Tensor:
        return self.post(embed).reshape(*embed.shape[:-1], self.latent.groups, self.latent.classes)

    def next_state(self, deter: State, prior_logits: Tensor, stoch: Tensor) -> State:
        return {"stoch": stoch, "belief": F.softmax(prior_logits, -1)}

    def features(self, state: State) -> Tensor:
        stoch = state["stoch"]
        return stoch.reshape(*stoch.shape[:-2], self.feature_size)

    def reward(self, features: Tensor) -> Tensor:
        return self.reward_head.mean(features)

    def continuation(self, features: Tensor) -> Tensor:
        return self.cont_head.prob(features)

    def decode(self, features: Tensor) -> dict[str, Tensor]:
        lead = features.shape[:-1]
        decoded = {}
        for key, value in self.decoder(features.reshape(-1, self.feature_size)).items():
            if key in self.layout.vectors:
                value = encodings.symexp(value)
            decoded[key] = value.reshape(*lead, *self.layout.shape(key))
        return decoded

    # ------------------------------------------------------------------
    # Training
    # ------------------------------------------------------------------

    def loss(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        """Reconstruction + reward two-hot + continuation BCE + balanced KL, on a (B, T) batch.

        ``batch["action"][:, t]`` is the action taken at step t and ``batch["reward"][:, t]`` the
        reward received on arriving at step t; the continuation target is ``1 - is_terminal``.
        """
        missing = [key for key in (*self.layout.keys, *BATCH_KEYS) if key not in batch]
        if missing:
            raise DatasetError(f"DRAW.loss needs batch keys {missing}; got keys {sorted(batch)}.")
        config = self.config
        is_first = batch["is_first"].bool()
        B, T = is_first.shape
        dtype = self._dtype()
        embed = self.embed(batch)  # (B, T, E)
        prev_action = rollout.prev_actions(batch["action"].to(dtype).reshape(B, T, self.action_size))
        out = rollout.observe(self, prev_action, is_first, embed=embed)
        kl_loss, kl_metrics = distributions.balanced_kl(
            distributions.log_probs(out["post_logits"], self.posterior_unimix),
            distributions.log_probs(out["prior_logits"], self.prior_unimix),
            is_first,
            dyn_scale=config.dyn_scale,
            rep_scale=config.rep_scale,
            free_bits=config.free_bits,
        )
        features = out["features"].reshape(B * T, self.feature_size)
        targets = {key: batch[key].reshape(B * T, *self.layout.shape(key)) for key in self.layout.keys}
        recon = {key: value.mean() for key, value in self.decoder.loss(features, targets).items()}
        recon_loss = sum(recon.values())
        reward_loss = self.reward_head.loss(features, batch["reward"].reshape(B * T).to(dtype)).mean()
        cont_target = 1.0 - batch["is_terminal"].reshape(B * T).to(dtype)
        cont_loss = self.cont_head.loss(features, cont_target).mean()
        loss = (
            config.recon_scale * recon_loss
            + config.reward_scale * reward_loss
            + config.cont_scale * cont_loss
            + kl_loss
        )
        named = {
            "loss": loss,
            "recon": recon_loss,
            **{f"recon/{key}": value for key, value in recon.items()},
            "reward": reward_loss,
            "cont": cont_loss,
            "kl": kl_loss,
            **kl_metrics,
        }
        # One device-to-host copy for all metrics instead of one sync each.
        values = torch.stack([value.detach().float() for value in named.values()]).tolist()
        return loss, dict(zip(named, values, strict=True))
