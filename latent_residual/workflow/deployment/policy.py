"""The deployable policy: raw observation -> encoder -> posterior mode -> actor mean, as one module, for
memoryless backbones (one observation in) and recurrent ones (the filter's state carried between steps).

The same module is evaluated in torch and exported to ONNX (``export.py``), so both compute the same graph.
"""

from __future__ import annotations

from collections.abc import Mapping

import gymnasium
import numpy as np
import torch
from torch import Tensor, nn

from latent_residual import distributions, rollout
from latent_residual.actor_critic import Actor
from latent_residual.contract import State, WorldModel
from latent_residual.errors import ConfigError, NonFiniteObservationError


def filter_state_shapes(model: WorldModel) -> dict[str, tuple[int, ...]]:
    """Each tensor of ``model``'s filter state, its shape per step without the batch axis, keys sorted."""
    with torch.no_grad():
        initial = model.initial_state(1)
    return {key: tuple(initial[key].shape[1:]) for key in sorted(initial)}


class Policy(nn.Module):
    """Maps raw observations (one tensor per key, batch first) to deterministic actions.

    With a memoryless backbone (``model.memoryless``, as DRAW) the current observation is all it
    needs: :meth:`forward`. Any other backbone's policy filters: :meth:`step` also takes the
    previous state, the previous action (as the environment received it) and whether this step
    starts an episode, and returns the next state with the action. :meth:`act` hides that
    difference: it carries the state between calls, and :meth:`reset` starts an episode. Images
    enter as uint8, exactly as the environment emits them; all preprocessing is inside.
    """

    def __init__(self, model: WorldModel, actor: Actor) -> None:
        super().__init__()
        if model.memoryless and model.posterior_uses_deter:
            raise ConfigError(
                f"{type(model).__name__} says it is memoryless but its posterior reads the deterministic state; "
                "a memoryless backbone's posterior must read the observation alone."
            )
        if not isinstance(model.observation_space, gymnasium.spaces.Dict):
            raise ConfigError(
                f"The world model's observation_space is {type(model.observation_space).__name__}, expected a "
                "gymnasium Dict (one entry per observation key); build it with make_backbone()."
            )
        self.model = model
        self.actor = actor
        self.keys = list(model.observation_space.spaces)
        self.stateful = not model.memoryless
        #: The state's keys (sorted) and per-step shapes: what a stateful policy carries.
        self.state_shapes = filter_state_shapes(model) if self.stateful else {}
        self._carried: tuple[State, Tensor] | None = None

    def _embed(self, obs: Mapping[str, Tensor]) -> Tensor:
        return self.model.embed({key: obs[key].unsqueeze(1) for key in self.keys})[:, 0]  # (B, E)

    def _mode(self, logits: Tensor) -> Tensor:
        return distributions.mode_one_hot(distributions.probs(logits, self.model.posterior_unimix))

    def forward(self, obs: Mapping[str, Tensor]) -> Tensor:
        """A memoryless policy's (B, A) actions for a batch of observations."""
        if self.stateful:
            raise ConfigError(
                f"{type(self.model).__name__} is not memoryless: its policy filters, so call step() with the "
                "previous state, or act() which carries it."
            )
        logits = self.model.posterior({}, self._embed(obs))  # (B, groups, classes)
        # Only stoch matters for a memoryless policy's features; the prior slot gets neutral logits.
        state = self.model.next_state({}, torch.zeros_like(logits), self._mode(logits))
        return self.actor(self.model.features(state))

    def step(
        self, obs: Mapping[str, Tensor], state: State, prev_action: Tensor, is_first: Tensor
    ) -> tuple[Tensor, State]:
        """One filtering step of a stateful policy: (B, A) actions and the next state.

        :param state: The state after the previous step, each tensor (B, ...); ignored where ``is_first``.
        :param prev_action: (B, A) the action the environment received at the previous step.
        :param is_first: (B,) bool, true where ``obs`` starts an episode.
        """
        action, state, _, _ = self.filter_step(obs, state, prev_action, is_first)
        return action, state

    def filter_step(
        self, obs: Mapping[str, Tensor], state: State, prev_action: Tensor, is_first: Tensor
    ) -> tuple[Tensor, State, Tensor, Tensor]:
        """:meth:`step` that also returns the (B, groups, classes) raw prior and posterior logits it filtered
        with (the coverage alarm's surprise compares them); any backbone, memoryless ones included."""
        initial = self.model.initial_state(prev_action.shape[0])
        prior, deter = rollout.step(self.model, state, prev_action, is_first, initial)
        post = self.model.posterior(deter, self._embed(obs))
        state = self.model.next_state(deter, prior, self._mode(post))
        return self.actor(self.model.features(state)), state, prior, post

    def blank_state(self, batch_size: int, shapes: Mapping[str, tuple[int, ...]] | None = None) -> tuple[State, Tensor]:
        """A (state, previous action) pair for the first step of an episode; its values are not read there.
        ``shapes`` replaces :attr:`state_shapes` (the ONNX graph carries the state of a memoryless filter too)."""
        device = next(self.parameters()).device
        shapes = self.state_shapes if shapes is None else shapes
        state = {key: torch.zeros(batch_size, *shape, device=device) for key, shape in shapes.items()}
        return state, torch.zeros(batch_size, self.model.action_size, device=device)

    def reset(self, seed: int | None = None) -> None:
        """Start an episode: the next :meth:`act` forgets the carried state.

        ``seed`` is unused (the policy is deterministic).
        """
        self._carried = None

    @torch.no_grad()
    def act(self, obs: Mapping[str, object]) -> np.ndarray:
        """Act on one unbatched observation dict (NumPy arrays or tensors); returns (action_size,).

        :raises NonFiniteObservationError: A value holds NaN or infinity (a ValueError), named by key.
        """
        device = next(self.parameters()).device
        arrays = {key: np.asarray(obs[key]) for key in self.keys}
        for key, value in arrays.items():
            if value.dtype.kind in "fc" and not np.isfinite(value).all():
                raise NonFiniteObservationError(
                    f"Observation {key!r} holds non-finite values ({int(np.isnan(value).sum())} NaN, "
                    f"{int(np.isinf(value).sum())} infinite); the policy refuses to act on it."
                )
        batch = {key: torch.as_tensor(value, device=device).unsqueeze(0) for key, value in arrays.items()}
        if not self.stateful:
            return self(batch)[0].cpu().numpy()
        first = self._carried is None
        state, prev_action = self.blank_state(1) if first else self._carried
        action, state = self.step(batch, state, prev_action, torch.tensor([first], device=device))
        self._carried = (state, action)
        return action[0].cpu().numpy()
