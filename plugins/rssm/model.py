"""The DreamerV3 RSSM world model (state {"deter": h, "stoch": z}) on the WorldModel contract, and its loss.

Hyperparameters are in ``config.py`` and networks in ``nets.py``; resets, sampling and rollouts are the core's.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

import gymnasium
import torch
from torch import Tensor, nn

from latent_residual import distributions, encodings
from latent_residual.contract import LatentSpec, State, WorldModel
from latent_residual.errors import ConfigError
from latent_residual.losses import world_model_loss
from latent_residual_plugins.rssm.config import RSSMConfig
from latent_residual_plugins.rssm.nets import (
    MultiDecoder,
    MultiEncoder,
    ObservationLayout,
    RecurrentModel,
    dense_head,
    init_weights,
    uniform_init,
)


class RSSM(WorldModel):
    """DreamerV3's recurrent state-space model: h_t = GRU(h_{t-1}, [z_{t-1}, a_{t-1}]), z_t ~ prior(h_t).

    The state is ``{"deter": h (B, deter), "stoch": z (B, stoch, classes)}``. The initial state is
    h_0 = tanh(``initial_deter``), a learned parameter, and z_0 = the one-hot mode of the prior at
    h_0, as in DreamerV3 and sheeprl; the core resets to it where ``is_first`` and zeroes the
    action, so the first prior of an episode is prior(GRU(h_0, [z_0, 0])). ``decode`` returns
    images as float on the [-0.5, 0.5] scale and vectors in the environment's units.

    :param observation_space: A Dict of uint8 (H, W, C) images (square, one size) and float vectors.
    :param action_space: A Box; actions are clipped to [-1, 1] before the recurrent model sees them.
    :param preset: A name in ``PRESETS`` (``tiny``, ``cpu``, ``XS``, ``S``, ``M``, ``L``, ``XL``).
    :param overrides: ``RSSMConfig`` fields that replace the preset's.
    """

    def __init__(
        self,
        observation_space: gymnasium.spaces.Space,
        action_space: gymnasium.spaces.Space,
        preset: str = "S",
        **overrides: Any,
    ) -> None:
        super().__init__()
        config = RSSMConfig.from_preset(preset, **overrides)
        if not isinstance(action_space, gymnasium.spaces.Box):
            raise ConfigError(f"The RSSM needs a Box action space, got {action_space!r}.")
        self.config = config
        self.layout = ObservationLayout.for_rssm(observation_space).with_angles(config.angles, "RSSMConfig.angles")
        self.layout.check_names(config.recon_key_scales, "RSSMConfig.recon_key_scales")
        self.latent = LatentSpec(config.stoch, config.classes)
        self.action_size = math.prod(action_space.shape)
        self.deter_size = config.deter
        self.feature_size = config.deter + self.latent.size
        self.unimix = config.unimix
        self.posterior_uses_deter = not config.decoupled
        S = self.latent.size
        self.encoder = MultiEncoder(self.layout, config.cnn_multiplier, config.units, config.mlp_layers)
        self.recurrent = RecurrentModel(S + self.action_size, config.units, config.deter)
        self.prior = dense_head(config.deter, S, config.hidden, 1)
        post_in = self.encoder.out_size + (0 if config.decoupled else config.deter)
        self.post = dense_head(post_in, S, config.hidden, 1)
        self.decoder = MultiDecoder(
            self.layout, self.feature_size, config.cnn_multiplier, config.units, config.mlp_layers
        )
        self.reward_head = dense_head(self.feature_size, config.reward_bins, config.units, config.mlp_layers)
        self.cont_head = dense_head(self.feature_size, 1, config.units, config.mlp_layers)
        self.register_buffer("bins", encodings.twohot_bins(config.reward_bins), persistent=False)
        self.apply(init_weights)
        for head, scale in ((self.prior, 1.0), (self.post, 1.0), (self.reward_head, 0.0), (self.cont_head, 1.0)):
            head.out.apply(uniform_init(scale))
        self.decoder.heads.apply(uniform_init(1.0))
        # Zeros: h_0 = tanh(0) = 0 until trained (sheeprl's rssm.initial_recurrent_state).
        self.initial_deter = nn.Parameter(torch.zeros(config.deter))

    def _dtype(self) -> torch.dtype:
        return self.initial_deter.dtype

    def dynamics_parameters(self) -> Iterator[nn.Parameter]:
        """The recurrent model (input block and GRU cell), the prior MLP and the learned initial h."""
        yield from self.recurrent.parameters()
        yield from self.prior.parameters()
        yield self.initial_deter

    # ------------------------------------------------------------------
    # The contract
    # ------------------------------------------------------------------

    def initial_state(self, batch_size: int) -> State:
        deter = torch.tanh(self.initial_deter)  # (H,); the gradient reaches initial_deter through h
        with torch.no_grad():  # z_0 is a mode (an argmax): no gradient either way
            logits = self.prior(deter).reshape(self.latent.groups, self.latent.classes)  # (S, D)
        stoch = distributions.mode_one_hot(logits)  # unimix does not move the mode
        return {"deter": deter.repeat(batch_size, 1), "stoch": stoch.repeat(batch_size, 1, 1)}

    def embed(self, obs: Mapping[str, Tensor]) -> Tensor:
        return self.encoder(obs, self._dtype())

    def dynamics(self, state: State, action: Tensor, is_first: Tensor) -> tuple[Tensor, State]:
        # ``is_first`` needs no handling: the core has already reset state and action there.
        B = action.shape[0]
        x = torch.cat([state["stoch"].flatten(1), action.to(self._dtype()).clamp(-1.0, 1.0)], -1)  # (B, S*D + A)
        deter = self.recurrent(x, state["deter"])  # (B, H)
        logits = self.prior(deter).reshape(B, self.latent.groups, self.latent.classes)
        return logits, {"deter": deter}

    def posterior(self, deter: State, embed: Tensor) -> Tensor:
        x = embed if self.config.decoupled else torch.cat([deter["deter"], embed], -1)  # [h, embed], as sheeprl
        return self.post(x).reshape(*embed.shape[:-1], self.latent.groups, self.latent.classes)

    def next_state(self, deter: State, prior_logits: Tensor, stoch: Tensor) -> State:
        return {"deter": deter["deter"], "stoch": stoch}

    def features(self, state: State) -> Tensor:
        stoch = state["stoch"]
        return torch.cat([state["deter"], stoch.reshape(*stoch.shape[:-2], self.latent.size)], -1)  # [h, z]

    def reward(self, features: Tensor) -> Tensor:
        return encodings.twohot_mean(self.reward_head(features), self.bins)

    def continuation(self, features: Tensor) -> Tensor:
        return torch.sigmoid(self.cont_head(features).squeeze(-1))

    def decode(self, features: Tensor) -> dict[str, Tensor]:
        return self.layout.decoded(self.decoder(features.reshape(-1, self.feature_size)), features.shape[:-1])

    # ------------------------------------------------------------------
    # Training
    # ------------------------------------------------------------------

    def loss(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        """:func:`latent_residual.losses.world_model_loss` (reconstruction + balanced KL, DreamerV3's) with
        two-hot reward and Bernoulli continuation heads. A batch without ``reward`` (reward-free target
        data) trains without the reward term, as the Dreamer-finetune baseline does."""
        return world_model_loss(
            self,
            batch,
            self.layout,
            self.decoder,
            self.config,
            owner="RSSM",
            dtype=self._dtype(),
            reward_loss=self._reward_loss,
            cont_loss=self._continuation_loss,
            reward_optional=True,
        )

    def _reward_loss(self, features: Tensor, target: Tensor) -> Tensor:
        return encodings.twohot_loss(self.reward_head(features), target, self.bins).mean()

    def _continuation_loss(self, features: Tensor, target: Tensor) -> Tensor:
        logits = self.cont_head(features).squeeze(-1)
        return nn.functional.binary_cross_entropy_with_logits(logits, target.to(logits.dtype))
