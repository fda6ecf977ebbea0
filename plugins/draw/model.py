"""The DRAW world model: a latent-state autoregressive model with no recurrent state, and its training loss.

Hyperparameters are in ``config.py`` and observation networks in ``nets.py``; rollouts are the core's.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

import gymnasium
import torch
from torch import Tensor, nn

from latent_residual import distributions
from latent_residual.contract import LatentSpec, State, WorldModel
from latent_residual.errors import ConfigError
from latent_residual.losses import world_model_loss
from latent_residual.nets import MLP, BernoulliHead, TwoHotHead
from latent_residual_plugins.draw.config import DRAWConfig
from latent_residual_plugins.draw.nets import MultiDecoder, MultiEncoder, observation_layout


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
        self.layout = observation_layout(observation_space, config.cnn_layers).with_angles(
            config.angles, "DRAWConfig.angles"
        )
        self.layout.check_names(config.recon_key_scales, "DRAWConfig.recon_key_scales")
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
        self.reward_head = TwoHotHead(self.feature_size, config.head_units, config.head_layers, config.reward_bins)
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
        return {"stoch": stoch, "belief": distributions.softmax(prior_logits)}

    def features(self, state: State) -> Tensor:
        stoch = state["stoch"]
        return stoch.reshape(*stoch.shape[:-2], self.feature_size)

    def reward(self, features: Tensor) -> Tensor:
        return self.reward_head.mean(features)

    def continuation(self, features: Tensor) -> Tensor:
        return self.cont_head.prob(features)

    def decode(self, features: Tensor) -> dict[str, Tensor]:
        return self.layout.decoded(self.decoder(features.reshape(-1, self.feature_size)), features.shape[:-1])

    # ------------------------------------------------------------------
    # Training
    # ------------------------------------------------------------------

    def loss(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        """:func:`latent_residual.losses.world_model_loss` (reconstruction + balanced KL) with the reward
        head's two-hot cross-entropy and the continuation head's BCE; every batch key is required."""
        return world_model_loss(
            self,
            batch,
            self.layout,
            self.decoder,
            self.config,
            owner="DRAW",
            dtype=self._dtype(),
            reward_loss=lambda features, target: self.reward_head.loss(features, target).mean(),
            cont_loss=lambda features, target: self.cont_head.loss(features, target).mean(),
        )
