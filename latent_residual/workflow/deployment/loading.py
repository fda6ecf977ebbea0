"""Loading what the library saved into working objects: world models rebuilt through the registry, and
deployable policies from a checkpoint and an actor-critic file.

The file formats themselves are the kernel's (``checkpoints.py``, ``actor_critic.py``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from latent_residual.actor_critic import load_actor_critic
from latent_residual.adapters import load_adapter
from latent_residual.checkpoints import BUILT_FROM, MODEL_WEIGHTS_NAME, load_weights, read_world_model
from latent_residual.contract import WorldModel
from latent_residual.errors import CheckpointError, ConfigError, NameNotFound
from latent_residual.registry.lookup import make_backbone
from latent_residual.workflow.data.spaces import stored_space
from latent_residual.workflow.deployment.policy import Policy
from latent_residual.workflow.paths import expect_directory


def load_world_model(directory: str | Path, *, device: str | torch.device = "cpu") -> WorldModel:
    """Rebuild a world model through the registry and load its weights, checking keys strictly.

    :raises CheckpointError: Naming the file and the key, for metadata that does not build a model
        (an unregistered backbone, kwargs or spaces it refuses) or does not fit the weights.
    """
    expect_directory(Path(directory), MODEL_WEIGHTS_NAME, CheckpointError)
    config, tensors = read_world_model(directory)
    path = Path(directory) / MODEL_WEIGHTS_NAME
    spaces = [stored_space(path, key, config[key], CheckpointError) for key in ("observation_space", "action_space")]
    backbone = config["backbone_id"]
    try:
        model = make_backbone(backbone, *spaces, **config["backbone_kwargs"])
    except NameNotFound as exc:
        raise CheckpointError(f"{path}: key 'backbone_id': {exc}") from exc
    except (ConfigError, TypeError, ValueError) as exc:
        # The backbone's constructor refused the stored kwargs or spaces (a wrong field, preset or type).
        raise CheckpointError(
            f"{path}: keys 'backbone_kwargs', 'observation_space' and 'action_space' do not build backbone "
            f"{backbone!r}: {exc}"
        ) from exc
    return load_weights(model, tensors, directory, hint=BUILT_FROM).to(device)


def load_policy(world_model: str | Path, actor_critic: str | Path, *, adapter: str | Path | None = None) -> Policy:
    """The deployable policy of a world-model checkpoint and an ``actor_critic.safetensors`` file; with ``adapter``,
    on the adapted model (whose corrected prior the coverage alarm compares with)."""
    model = load_world_model(world_model)
    if adapter is not None:
        model = load_adapter(model, adapter, trainable=False)
    return Policy(model, load_actor_critic(actor_critic).actor)
