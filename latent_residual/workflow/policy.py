"""The deployable policy: raw observation -> encoder -> posterior mode -> actor mean, as one module.

The same module is evaluated in torch and exported to ONNX (``export.py``), so both compute the same graph.
"""

from __future__ import annotations

from collections.abc import Mapping

import gymnasium
import numpy as np
import torch
from torch import Tensor, nn

from latent_residual import distributions
from latent_residual.actor_critic import Actor
from latent_residual.contract import WorldModel
from latent_residual.errors import ConfigError


class Policy(nn.Module):
    """Maps a batch of raw observations (one tensor per key, batch first) to deterministic actions.

    It is memoryless: it needs a backbone whose posterior reads only the current observation
    (``posterior_uses_deter`` false, as in DRAW), whose features read only ``stoch``. Images
    enter as uint8, exactly as the environment emits them; all preprocessing is inside.
    """

    def __init__(self, model: WorldModel, actor: Actor) -> None:
        super().__init__()
        if model.posterior_uses_deter:
            raise ConfigError(
                f"{type(model).__name__}'s posterior depends on its recurrent state, so its policy needs state "
                "inputs and outputs; only memoryless policies (DRAW-like backbones) are supported here."
            )
        if not isinstance(model.observation_space, gymnasium.spaces.Dict):
            raise ConfigError(
                f"The world model's observation_space is {type(model.observation_space).__name__}, expected a "
                "gymnasium Dict (one entry per observation key); build it with make_backbone()."
            )
        self.model = model
        self.actor = actor
        self.keys = list(model.observation_space.spaces)

    def forward(self, obs: Mapping[str, Tensor]) -> Tensor:
        embed = self.model.embed({key: obs[key].unsqueeze(1) for key in self.keys})[:, 0]  # (B, E)
        logits = self.model.posterior({}, embed)  # (B, groups, classes)
        stoch = distributions.mode_one_hot(distributions.probs(logits, self.model.posterior_unimix))
        # Only stoch matters for a memoryless policy's features; the prior slot gets neutral logits.
        state = self.model.next_state({}, torch.zeros_like(logits), stoch)
        return self.actor(self.model.features(state))

    @torch.no_grad()
    def act(self, obs: Mapping[str, object]) -> np.ndarray:
        """Act on one unbatched observation dict (NumPy arrays or tensors); returns (action_size,)."""
        device = next(self.parameters()).device
        batch = {key: torch.as_tensor(np.asarray(obs[key]), device=device).unsqueeze(0) for key in self.keys}
        return self(batch)[0].cpu().numpy()
