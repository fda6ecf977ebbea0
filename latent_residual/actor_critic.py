"""The actor-critic trained in imagination (DreamerV3-style) over any world model that fulfils the contract,
and its file format.

Imagination itself is ``rollout.imagine``; the loops that call ``ActorCritic.train_step`` are in the workflow
(``pretraining.py``, ``policy_training.py``).
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import Independent, Normal, TanhTransform, TransformedDistribution

from latent_residual import encodings
from latent_residual.config import config_from_dict, config_to_dict
from latent_residual.contract import State, WorldModel
from latent_residual.errors import CheckpointError, ConfigError
from latent_residual.nets import MLP, TwoHotHead
from latent_residual.rollout import imagine
from latent_residual.serialization import (
    fingerprint,
    load_optimizer_tensors,
    metadata_int,
    metadata_json,
    optimizer_tensors,
    read_checked,
    strict_load,
    write_safetensors,
)

FILE_FORMAT = "latent-residual-actor-critic"
FILE_FORMAT_VERSION = 1


@dataclass
class ActorCriticConfig:
    """Actor-critic settings; defaults are the authors' (DreamerV3 with their horizon and rates)."""

    hidden: int = field(default=512, metadata={"help": "Width of actor and critic MLPs."})
    layers: int = field(default=2, metadata={"help": "Hidden blocks of actor and critic."})
    horizon: int = field(default=40, metadata={"help": "Imagination horizon."})
    gamma: float = field(default=1 - 1 / 333, metadata={"help": "Discount."})
    lam: float = field(default=0.95, metadata={"help": "Lambda of the lambda-returns."})
    entropy: float = field(default=3e-4, metadata={"help": "Actor entropy bonus."})
    actor_lr: float = field(default=3e-5, metadata={"help": "Actor learning rate."})
    critic_lr: float = field(default=3e-5, metadata={"help": "Critic learning rate."})
    slow_critic_fraction: float = field(default=0.02, metadata={"help": "EMA update fraction of the slow critic."})
    slow_critic_reg: float = field(default=1.0, metadata={"help": "Weight pulling the critic towards the slow critic."})
    return_norm_decay: float = field(default=0.99, metadata={"help": "EMA decay of the return percentile range."})
    min_std: float = field(default=0.1, metadata={"help": "Minimum action standard deviation."})
    max_std: float = field(default=1.0, metadata={"help": "Maximum action standard deviation."})
    grad_clip: float = field(default=100.0, metadata={"help": "Gradient norm clip for actor and critic."})
    dense_bias: bool = field(
        default=True,
        metadata={"help": "Biases in the hidden Linears of actor and critic (DreamerV3 and sheeprl have none)."},
    )
    norm_eps: float = field(
        default=1e-5, metadata={"help": "LayerNorm epsilon of actor and critic (DreamerV3 and sheeprl use 1e-3)."}
    )
    actor_gradient: str = field(
        default="dynamics",
        metadata={
            "help": "Actor gradient: dynamics (backpropagate lambda-returns through the frozen model, as the "
            "2023 DreamerV3 does for continuous actions) or reinforce (score function, as its later version does)."
        },
    )
    continuation: str = field(
        default="probability",
        metadata={
            "help": "How imagined steps continue in the returns: probability (the continuation head's, "
            "differentiable) or mode (0 or 1, no gradient through the head; DreamerV3's and sheeprl's)."
        },
    )
    detach_actor_input: bool = field(
        default=False,
        metadata={
            "help": "The actor reads sg(features) in imagination (DreamerV3's and sheeprl's policy(sg(s))): "
            "returns reach it through its actions and the dynamics, not through the states it read."
        },
    )

    def __post_init__(self) -> None:
        if not (0 < self.gamma <= 1 and 0 <= self.lam <= 1):
            raise ConfigError(f"ActorCriticConfig: gamma in (0, 1] and lam in [0, 1]; got {self.gamma}, {self.lam}.")
        if not 0 < self.min_std <= self.max_std:
            raise ConfigError(f"ActorCriticConfig: need 0 < min_std <= max_std, got {self.min_std}, {self.max_std}.")
        if self.actor_gradient not in ("reinforce", "dynamics"):
            raise ConfigError(
                f"ActorCriticConfig.actor_gradient must be reinforce or dynamics, got {self.actor_gradient!r}."
            )
        if self.continuation not in ("probability", "mode"):
            raise ConfigError(f"ActorCriticConfig.continuation must be probability or mode, got {self.continuation!r}.")
        if self.horizon < 1 or self.hidden < 1 or self.layers < 0:
            raise ConfigError("ActorCriticConfig: horizon and hidden must be >= 1, layers >= 0.")


class Actor(nn.Module):
    """A tanh-squashed Normal policy on world-model features; std bounded to [min_std, max_std]."""

    def __init__(self, feature_size: int, action_size: int, config: ActorCriticConfig) -> None:
        super().__init__()
        self.net = MLP(
            feature_size, 2 * action_size, config.hidden, config.layers, bias=config.dense_bias, eps=config.norm_eps
        )
        self.min_std, self.max_std = config.min_std, config.max_std

    def params(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """The pre-squash Normal's mean and std, each (..., action_size)."""
        mean, raw_std = self.net(features).chunk(2, -1)
        std = (self.max_std - self.min_std) * torch.sigmoid(raw_std + 2.0) + self.min_std
        return mean, std

    def dist(self, features: Tensor) -> TransformedDistribution:
        return squashed_normal(*self.params(features))

    def forward(self, features: Tensor) -> Tensor:
        """The deterministic action tanh(mean), used for evaluation and export."""
        return torch.tanh(self.params(features)[0])


def squashed_normal(mean: Tensor, std: Tensor) -> TransformedDistribution:
    """tanh(Normal(mean, std)) over the last axis of ``mean`` and ``std`` (..., A): the actor's distribution."""
    return TransformedDistribution(Independent(Normal(mean, std), 1), [TanhTransform(cache_size=1)])


def normal_entropy(std: Tensor) -> Tensor:
    """Entropy of a diagonal Normal with ``std`` (..., A), summed over A (``Normal.entropy``'s formula): the
    actor's bonus uses its pre-squash Normal, as the squashed one has no closed form."""
    return (0.5 + 0.5 * math.log(2 * math.pi) + torch.log(std)).sum(-1)


def squashed_rsample(mean: Tensor, std: Tensor) -> Tensor:
    """A reparameterised tanh(Normal(mean, std)) sample, as ``Actor.dist(...).rsample()`` draws it (the same
    draw from the global generator), without building the distribution objects and their checks."""
    return torch.tanh(mean + torch.empty_like(mean).normal_() * std)


def lambda_returns(reward: Tensor, cont: Tensor, value: Tensor, gamma: float, lam: float) -> Tensor:
    """TD(lambda) returns along imagined trajectories.

    :param reward: (B, H) rewards received on arriving at steps 1..H.
    :param cont: (B, H) continuation probabilities of steps 1..H.
    :param value: (B, H + 1) values of steps 0..H.
    :returns: (B, H) returns for steps 0..H-1.
    """
    H = reward.shape[1]
    # R_t = r_t + gamma c_t ((1 - lam) v_{t+1} + lam R_{t+1}): the part without R_{t+1} for every step at once.
    direct = reward + gamma * (1 - lam) * cont * value[:, 1:]  # (B, H)
    carried = gamma * lam * cont  # (B, H)
    returns = []
    last = value[:, -1]
    for t in reversed(range(H)):
        last = direct[:, t] + carried[:, t] * last
        returns.append(last)
    return torch.stack(returns[::-1], 1)


class ActorCritic(nn.Module):
    """Actor, critic, slow critic and return normaliser, trained from imagined rollouts.

    With ``actor_gradient="dynamics"`` (the default) the actor maximises lambda-returns
    differentiated through the world model (reparameterised actions, straight-through latents);
    gradients are taken for the actor's parameters only, so a frozen or adapted model's weights
    never receive any. With ``"reinforce"`` the actor follows normalised advantages and
    imagination runs without gradients at all.
    """

    def __init__(self, feature_size: int, action_size: int, config: ActorCriticConfig | None = None) -> None:
        super().__init__()
        self.config = config or ActorCriticConfig()
        self.feature_size, self.action_size = feature_size, action_size
        self.actor = Actor(feature_size, action_size, self.config)
        self.critic = TwoHotHead(
            feature_size, self.config.hidden, self.config.layers, bias=self.config.dense_bias, eps=self.config.norm_eps
        )
        self.slow_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.register_buffer("return_scale", torch.ones(()))
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=self.config.actor_lr, eps=1e-5)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=self.config.critic_lr, eps=1e-5)

    def act(self, features: Tensor, *, sample: bool) -> Tensor:
        return self.actor.dist(features).sample().clamp(-1.0, 1.0) if sample else self.actor(features)

    def train_step(
        self,
        model: WorldModel,
        start: State,
        *,
        reward_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, float]:
        """Imagine from ``start`` (a batch of states) and update actor and critic once.

        :param reward_fn: Maps imagined features (B, H + 1, F) and actions (B, H, A) to rewards
            (B, H); the world model's reward head when omitted (Plan2Explore passes its
            disagreement here).
        """
        imagined = self._imagine(model, start, reward_fn, generator)
        weight, scale, slow_value = self._normalisers(imagined)
        states = imagined["features"][:, :-1]  # (B, H, F)
        if self.config.actor_gradient == "dynamics":
            # Imagination ran the actor and the critic on these states with gradients: reuse both.
            std, critic_logits = imagined["std"], imagined["critic_logits"]
            log_prob = None
        else:
            # Imagination ran without gradients (REINFORCE): one actor and one critic pass here.
            mean, std = self.actor.params(states)
            log_prob = squashed_normal(mean, std).log_prob(imagined["actions"].clamp(-1 + 1e-6, 1 - 1e-6))
            critic_logits = self.critic(imagined["features"].detach())
        entropy = normal_entropy(std)  # (B, H)
        # The critic's part of the graph is used again by its own update.
        actor_loss = self._update_actor(imagined, log_prob, entropy, weight, scale, retain_graph=log_prob is None)
        critic_loss = self._update_critic(critic_logits, imagined["returns"].detach(), slow_value, weight)
        # One copy to the host for every metric instead of one each.
        named = {
            "actor_loss": actor_loss,
            "critic_loss": critic_loss,
            "imagined_reward": imagined["reward"].mean(),
            "imagined_return": imagined["returns"].mean(),
            "entropy": entropy.mean(),
            "return_scale": self.return_scale,
        }
        values = torch.stack([value.detach().float() for value in named.values()]).tolist()
        return dict(zip(named, values, strict=True))

    def _imagine(
        self,
        model: WorldModel,
        start: State,
        reward_fn: Callable[[Tensor, Tensor], Tensor] | None,
        generator: torch.Generator | None,
    ) -> dict[str, Tensor]:
        """Roll out the actor from ``start``; returns features, actions, the actor's std at each step,
        reward, cont, the critic's logits and value, and lambda-returns."""
        config = self.config
        stds: list[Tensor] = []
        if config.actor_gradient == "dynamics":

            def policy(features: Tensor) -> Tensor:
                mean, std = self.actor.params(features.detach() if config.detach_actor_input else features)
                stds.append(std)  # the entropy bonus reads it later, gradients included
                return squashed_rsample(mean, std)

            # Returns must be differentiable through the model, an adapted model's frozen base too.
            context = model.base_gradients()
        else:
            policy = lambda f: self.act(f, sample=True)  # noqa: E731
            context = torch.no_grad()
        start = {key: value.detach() for key, value in start.items()}
        with context:
            rollout = imagine(model, start, policy, config.horizon, generator=generator)
            features = rollout["features"]  # (B, H + 1, F)
            actions = rollout["actions"]  # (B, H, A)
            B, H1, F = features.shape
            # Rewards and continuations are those of arriving at steps 1..H: the start state needs none.
            arrived = features[:, 1:].reshape(B * (H1 - 1), F)
            if reward_fn is None:
                reward = model.reward(arrived).reshape(B, H1 - 1)
            else:
                reward = reward_fn(features, actions)
            cont = self._continuation(model, arrived).reshape(B, H1 - 1)
            critic_logits = self.critic(features)  # (B, H + 1, bins)
            value = encodings.twohot_mean(critic_logits, self.critic.bins)
            returns = lambda_returns(reward, cont, value, config.gamma, config.lam)  # (B, H)
        return {
            "features": features,
            "actions": actions,
            "std": torch.stack(stds, 1) if stds else None,  # (B, H, A)
            "reward": reward,
            "cont": cont,
            "critic_logits": critic_logits,
            "value": value,
            "returns": returns,
        }

    def _continuation(self, model: WorldModel, features: Tensor) -> Tensor:
        """The continuation of (N, F) imagined features, (N,): the head's probability, or its mode."""
        if self.config.continuation == "probability":
            return model.continuation(features)
        with torch.no_grad():
            return (model.continuation(features) > 0.5).to(features.dtype)

    @torch.no_grad()
    def _normalisers(self, imagined: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """Step weights (B, H), the return scale (updated here) and the slow critic's values (B, H)."""
        cont, returns = imagined["cont"], imagined["returns"]
        # Steps after a predicted episode end count less, as in DreamerV3.
        weight = torch.cumprod(torch.cat([torch.ones_like(cont[:, :1]), cont[:, :-1]], 1), 1)
        low, high = torch.quantile(returns.flatten(), torch.tensor([0.05, 0.95], device=returns.device))
        decay = self.config.return_norm_decay
        self.return_scale.mul_(decay).add_((1 - decay) * (high - low))
        return weight, self.return_scale.clamp(min=1.0), self.slow_critic.mean(imagined["features"].detach())[:, :-1]

    def _update_actor(
        self,
        imagined: dict[str, Tensor],
        log_prob: Tensor | None,
        entropy: Tensor,
        weight: Tensor,
        scale: Tensor,
        *,
        retain_graph: bool,
    ) -> Tensor:
        config = self.config
        returns = imagined["returns"]
        if log_prob is None:
            objective = returns / scale
        else:
            objective = log_prob * (returns - imagined["value"][:, :-1]) / scale
        actor_loss = -(weight * (objective + config.entropy * entropy)).mean()
        # Gradients for the actor alone: the world model and the critic receive none from it.
        params = list(self.actor.parameters())
        self.actor_opt.zero_grad(set_to_none=True)
        grads = torch.autograd.grad(actor_loss, params, allow_unused=True, retain_graph=retain_graph)
        for param, grad in zip(params, grads):
            param.grad = grad
        nn.utils.clip_grad_norm_(params, config.grad_clip)
        self.actor_opt.step()
        return actor_loss

    def _update_critic(self, logits: Tensor, returns: Tensor, slow_value: Tensor, weight: Tensor) -> Tensor:
        """One critic step from its logits (B, H + 1, bins) on the imagined states (the last one unused)."""
        config = self.config
        bins = self.critic.bins
        # Two-hot cross-entropy against the returns and, pulling towards it, the slow critic's values:
        # one log-softmax and one gather serve both targets.
        log_prob = torch.log_softmax(logits, -1)  # (B, H + 1, bins)
        return_bins, return_weights = encodings.twohot_indices(encodings.symlog(returns), bins)  # (B, H, 2) each
        slow_bins, slow_weights = encodings.twohot_indices(encodings.symlog(slow_value), bins)
        # The last step has no return: it gets weight 0, so the gather reads the logits whole and
        # their gradient needs no copy into a larger tensor.
        index = nn.functional.pad(torch.cat([return_bins, slow_bins], -1), (0, 0, 0, 1))  # (B, H + 1, 4)
        target_weights = nn.functional.pad(
            torch.cat([return_weights, config.slow_critic_reg * slow_weights], -1), (0, 0, 0, 1)
        )
        cross_entropy = encodings.twohot_cross_entropy(log_prob, index, target_weights)[:, :-1]  # (B, H)
        critic_loss = (weight * cross_entropy).mean()
        # Gradients for the critic alone: its logits may hang off the imagination graph.
        params = list(self.critic.parameters())
        self.critic_opt.zero_grad(set_to_none=True)
        for param, grad in zip(params, torch.autograd.grad(critic_loss, params)):
            param.grad = grad
        nn.utils.clip_grad_norm_(params, config.grad_clip)
        self.critic_opt.step()
        with torch.no_grad():
            for slow, fast in zip(self.slow_critic.parameters(), self.critic.parameters()):
                slow.lerp_(fast, config.slow_critic_fraction)
        return critic_loss


_CHECKS = {
    "file_format": FILE_FORMAT,
    "version": FILE_FORMAT_VERSION,
    "error": CheckpointError,
    "kind": "latent-residual actor-critic file",
    "required": ("config", "feature_size", "action_size"),
}


def save_actor_critic(
    actor_critic: ActorCritic, path: str | Path, *, extra: dict[str, Any] | None = None, optimizer_state: bool = True
) -> None:
    """Write actor, critic, slow critic, return scale and (unless ``optimizer_state`` is false, as for a shipped
    policy, whose moments are about half its file) the optimiser moments to one safetensors file. A file without
    moments loads with fresh ones."""
    tensors = {f"net.{key}": value for key, value in actor_critic.state_dict().items()}
    if optimizer_state:
        tensors.update(optimizer_tensors(actor_critic.actor_opt, "actor_opt"))
        tensors.update(optimizer_tensors(actor_critic.critic_opt, "critic_opt"))
    metadata = {
        "format": FILE_FORMAT,
        "format_version": str(FILE_FORMAT_VERSION),
        "config": json.dumps(config_to_dict(actor_critic.config)),
        "feature_size": str(actor_critic.feature_size),
        "action_size": str(actor_critic.action_size),
        "fingerprint": fingerprint(actor_critic),
        "extra": json.dumps(extra or {}),
    }
    write_safetensors(Path(path), tensors, metadata)


def load_actor_critic(path: str | Path, *, device: str | torch.device = "cpu") -> ActorCritic:
    """Rebuild an ActorCritic saved by :func:`save_actor_critic` (strict keys, shapes and dtypes, finite
    values, the recorded fingerprint when the file has one; no pickle)."""
    path = Path(path)
    tensors, metadata = read_checked(path, **_CHECKS)
    stored_config = metadata_json(path, metadata, "config", CheckpointError)
    feature_size, action_size = (
        metadata_int(path, metadata, key, CheckpointError) for key in ("feature_size", "action_size")
    )
    config = config_from_dict(ActorCriticConfig, stored_config, source=f"{path}: key 'config'", error=CheckpointError)
    actor_critic = ActorCritic(feature_size, action_size, config)
    weights = {key[4:]: value for key, value in tensors.items() if key.startswith("net.")}
    # Files written before fingerprints were recorded have none; they load as they are.
    strict_load(actor_critic, weights, path, CheckpointError, expected_fingerprint=metadata.get("fingerprint"))
    actor_critic.to(device)
    load_optimizer_tensors(actor_critic.actor_opt, tensors, "actor_opt")
    load_optimizer_tensors(actor_critic.critic_opt, tensors, "critic_opt")
    return actor_critic
