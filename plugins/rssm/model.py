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

from latent_residual import distributions, encodings, rollout
from latent_residual.contract import LatentSpec, State, WorldModel
from latent_residual.errors import ConfigError, DatasetError
from latent_residual_plugins.rssm.config import RSSMConfig
from latent_residual_plugins.rssm.nets import (
    DenseHead,
    MultiDecoder,
    MultiEncoder,
    ObservationLayout,
    RecurrentModel,
    init_weights,
    uniform_init,
)

#: Keys besides the observations that ``RSSM.loss`` reads from a batch.
BATCH_KEYS = ("action", "reward", "is_first", "is_terminal")


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
        self.layout = ObservationLayout.from_space(observation_space)
        self.latent = LatentSpec(config.stoch, config.classes)
        self.action_size = math.prod(action_space.shape)
        self.deter_size = config.deter
        self.feature_size = config.deter + self.latent.size
        self.unimix = config.unimix
        self.posterior_uses_deter = not config.decoupled
        S = self.latent.size
        self.encoder = MultiEncoder(self.layout, config.cnn_multiplier, config.units, config.mlp_layers)
        self.recurrent = RecurrentModel(S + self.action_size, config.units, config.deter)
        self.prior = DenseHead(config.deter, S, config.hidden, 1)
        post_in = self.encoder.out_size + (0 if config.decoupled else config.deter)
        self.post = DenseHead(post_in, S, config.hidden, 1)
        self.decoder = MultiDecoder(
            self.layout, self.feature_size, config.cnn_multiplier, config.units, config.mlp_layers
        )
        self.reward_head = DenseHead(self.feature_size, config.reward_bins, config.units, config.mlp_layers)
        self.cont_head = DenseHead(self.feature_size, 1, config.units, config.mlp_layers)
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
        """Reconstruction + reward two-hot + continuation BCE + balanced KL (DreamerV3), on a (B, T) batch.

        ``batch["action"][:, t]`` is the action taken at step t and ``batch["reward"][:, t]`` the
        reward received on arriving at step t; the continuation target is ``1 - is_terminal``.
        A batch without ``reward`` (reward-free target data) trains without the reward term, as
        the Dreamer-finetune baseline does.
        """
        missing = [key for key in (*self.layout.keys, *BATCH_KEYS) if key not in batch and key != "reward"]
        if missing:
            raise DatasetError(f"RSSM.loss needs batch keys {missing}; got keys {sorted(batch)}.")
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
        if "reward" in batch:
            reward_target = batch["reward"].reshape(B * T).to(dtype)
            reward_loss = encodings.twohot_loss(self.reward_head(features), reward_target, self.bins).mean()
        else:
            reward_loss = torch.zeros((), dtype=dtype, device=features.device)
        cont_target = 1.0 - batch["is_terminal"].reshape(B * T).to(dtype)
        cont_logits = self.cont_head(features).squeeze(-1)
        cont_loss = nn.functional.binary_cross_entropy_with_logits(cont_logits, cont_target.to(cont_logits.dtype))
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
