"""Loading what the library saved into working objects: world models rebuilt through the registry, and
deployable policies from a checkpoint and an actor-critic file.

The file formats themselves are the kernel's (``checkpoints.py``, ``actor_critic.py``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from latent_residual.actor_critic import load_actor_critic
from latent_residual.checkpoints import load_weights, read_world_model
from latent_residual.contract import WorldModel
from latent_residual.registry import make_backbone
from latent_residual.workflow.policy import Policy
from latent_residual.workflow.spaces import space_from_json


def load_world_model(directory: str | Path, *, device: str | torch.device = "cpu") -> WorldModel:
    """Rebuild a world model through the registry and load its weights, checking keys strictly."""
    config, tensors = read_world_model(directory)
    model = make_backbone(
        config["backbone_id"],
        space_from_json(config["observation_space"]),
        space_from_json(config["action_space"]),
        **config["backbone_kwargs"],
    )
    return load_weights(model, tensors, directory).to(device)


def load_policy(world_model: str | Path, actor_critic: str | Path) -> Policy:
    """The deployable policy of a world-model checkpoint and an ``actor_critic.safetensors`` file."""
    return Policy(load_world_model(world_model), load_actor_critic(actor_critic).actor)
