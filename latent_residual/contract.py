"""The world-model contract: what a backbone provides so residuals, imagination and policies can use it.

Generic algorithms over the contract (observe, imagine) are in ``rollout.py``; backbones are plugins.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from latent_residual.errors import ConfigError

State = dict[str, Tensor]
"""A model's per-step latent state: named tensors with the batch first. ``"stoch"`` is required:
the (B, groups, classes) one-hot sample z. Anything else (an RNN's ``"deter"``, DRAW's
``"belief"``) is the backbone's own business."""


@dataclass(frozen=True)
class LatentSpec:
    """The layout of a multi-categorical latent: ``groups`` categoricals of ``classes`` each."""

    groups: int
    classes: int

    def __post_init__(self) -> None:
        for name in ("groups", "classes"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1 or (name == "classes" and value < 2):
                minimum = 2 if name == "classes" else 1
                raise ConfigError(f"LatentSpec.{name} must be an integer >= {minimum}, got {value!r}.")

    @property
    def size(self) -> int:
        """Length of the flattened one-hot: groups * classes."""
        return self.groups * self.classes

    def to_dict(self) -> dict[str, int]:
        return {"groups": self.groups, "classes": self.classes}


class WorldModel(nn.Module, abc.ABC):
    """A latent world model with a multi-categorical stochastic state.

    One step of the model, as the generic code in ``rollout.py`` drives it::

        logits, deter = model.dynamics(state, action, is_first)   # raw prior logits: THE seam
        post = model.posterior(deter, embed)                       # only when observing
        z = sample(post or prior)                                  # straight-through one-hot
        state = model.next_state(deter, logits, z)

    A residual adapter changes only ``dynamics``' logits before anything else sees them, so
    the belief a backbone carries (DRAW's sigma) follows the corrected prior, as in ReDRAW.

    Subclasses set ``latent``, ``action_size`` and ``feature_size`` in ``__init__`` and
    implement the abstract methods. All tensors are batch first; observation tensors may carry
    a time axis, (B, T, ...).
    """

    latent: LatentSpec
    action_size: int
    feature_size: int
    unimix: float = 0.01
    #: False when the posterior depends on the observation alone (DRAW): observe() then
    #: computes all posteriors in one batched call, and residual fitting can cache them.
    posterior_uses_deter: bool = True
    #: True when a deployed policy needs nothing but the current observation: the posterior
    #: ignores the deterministic state and ``features`` read only ``stoch`` (DRAW). Otherwise
    #: (the default, always correct) the policy filters, carrying state between steps.
    memoryless: bool = False
    #: Set by ``make_backbone`` so checkpoints can rebuild the model.
    backbone_id: str | None = None
    backbone_kwargs: dict[str, Any] = {}
    observation_space: Any = None
    action_space: Any = None

    @property
    def prior_unimix(self) -> float:
        """Uniform mixture applied to the prior when sampling or scoring it."""
        return self.unimix

    @property
    def posterior_unimix(self) -> float:
        """Uniform mixture applied to the posterior when sampling or scoring it."""
        return self.unimix

    @abc.abstractmethod
    def initial_state(self, batch_size: int) -> State:
        """Return the state before an episode's first step, each tensor (batch_size, ...)."""

    @abc.abstractmethod
    def embed(self, obs: Mapping[str, Tensor]) -> Tensor:
        """Encode raw observations: each value (B, T, *shape) as the environment emits it,
        images uint8; returns (B, T, embed_size). Preprocessing happens inside."""

    @abc.abstractmethod
    def dynamics(self, state: State, action: Tensor, is_first: Tensor) -> tuple[Tensor, State]:
        """Predict step t from step t-1: the raw prior logits and the deterministic part of state t.

        :param state: State t-1; already reset to ``initial_state`` where ``is_first``.
        :param action: (B, action_size) action t-1; zero where ``is_first``.
        :param is_first: (B,) bool, true where step t starts an episode.
        :returns: (B, groups, classes) raw prior logits, before softmax and unimix; and a dict
            of the deterministic tensors of state t (empty for a model without any).
        """

    @abc.abstractmethod
    def posterior(self, deter: State, embed: Tensor) -> Tensor:
        """Return (B, groups, classes) raw posterior logits from state t's deterministic part
        and the observation embedding (B, embed_size)."""

    @abc.abstractmethod
    def next_state(self, deter: State, prior_logits: Tensor, stoch: Tensor) -> State:
        """Assemble state t from its deterministic part, the (possibly corrected) prior logits
        and the sampled (B, groups, classes) one-hot ``stoch``."""

    @abc.abstractmethod
    def features(self, state: State) -> Tensor:
        """Return the (B, feature_size) input of the heads and the policy."""

    @abc.abstractmethod
    def reward(self, features: Tensor) -> Tensor:
        """Return the predicted reward (B,) for features (B, feature_size)."""

    @abc.abstractmethod
    def continuation(self, features: Tensor) -> Tensor:
        """Return the predicted probability (B,) that the episode continues."""

    def decode(self, features: Tensor) -> dict[str, Tensor]:
        """Reconstruct observations from features; keys as in the observation space.

        Optional: the library never calls it; it is there for a backbone's own loss and for
        looking at predictions.
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement decode().")

    def base_gradients(self) -> contextlib.AbstractContextManager:
        """A block within which gradients flow through the model to its *inputs* (actions, states).

        An actor trained by backpropagation through the dynamics runs imagination inside it. A
        plain model already lets gradients through, so this is a no-op; a wrapper that freezes
        its base under ``torch.no_grad`` (a residual adapter) lifts that for the block.
        """
        return contextlib.nullcontext()

    def loss(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        """Return the world-model training loss on a (B, T) batch and scalar metrics.

        Optional: a backbone trained elsewhere can skip it and still be adapted.
        """
        raise NotImplementedError(
            f"{type(self).__name__} does not implement loss(); it can be adapted with a residual "
            "but not pretrained by latent-residual."
        )

    def dynamics_parameters(self) -> Iterator[nn.Parameter]:
        """Yield the parameters that ``dynamics`` uses (the prior network).

        Optional: needed only by the prior-finetuning baseline, which trains these alone.
        """
        raise NotImplementedError(
            f"{type(self).__name__} does not implement dynamics_parameters(); the prior-finetune baseline needs it."
        )

    def device(self) -> torch.device:
        """The device of the model's first parameter (CPU for a parameterless model)."""
        for parameter in self.parameters():
            return parameter.device
        return torch.device("cpu")
