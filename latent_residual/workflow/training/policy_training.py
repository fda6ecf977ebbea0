"""Training a fresh actor-critic purely in a world model's imagination, from posterior states of recorded
data (ReDRAW's step 3), and the ``train-policy`` step on saved files. The actor-critic itself is the kernel's
(``actor_critic.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from latent_residual.actor_critic import ActorCritic, ActorCriticConfig, save_actor_critic
from latent_residual.adapters import load_adapter
from latent_residual.contract import State, WorldModel
from latent_residual.errors import ConfigError
from latent_residual.progress import RunLogger
from latent_residual.rollout import posterior_states, subsample_states
from latent_residual.workflow.data.datasets import reward_free_sequences
from latent_residual.workflow.deployment.loading import load_world_model


@dataclass
class PolicyTrainConfig:
    """Training a fresh actor-critic purely in imagination, from posterior states of recorded data."""

    steps: int = field(default=2000, metadata={"help": "Actor-critic updates."})
    starts: int = field(default=1024, metadata={"help": "Imagination starts per update (paper: 16 x 64)."})
    seed: int = field(default=0, metadata={"help": "Seed for networks and sampling."})

    def __post_init__(self) -> None:
        if self.steps < 1 or self.starts < 1:
            raise ConfigError(f"PolicyTrainConfig: steps and starts must be >= 1, got {self.steps}, {self.starts}.")


def start_bank(model: WorldModel, sequences: Mapping[str, Tensor], *, seed: int = 0) -> State:
    """Posterior states of every step of ``sequences`` under ``model`` (adapted or not), flattened."""
    generator = torch.Generator(device=model.device()).manual_seed(seed)
    states = posterior_states(model, sequences, generator=generator)["states"]
    return {key: value.flatten(0, 1) for key, value in states.items()}


def train_policy(
    model: WorldModel,
    sequences: Mapping[str, Tensor],
    config: PolicyTrainConfig | None = None,
    *,
    ac_config: ActorCriticConfig | None = None,
    actor_critic: ActorCritic | None = None,
    log_dir: str | Path | None = None,
    quiet: bool = False,
) -> ActorCritic:
    """Train a re-initialised actor-critic in ``model``'s imagination (ReDRAW's step 3).

    Imagination starts from posterior states of ``sequences`` (the target data); rewards come
    from the model's frozen reward head, so the data needs no rewards.

    :param actor_critic: Train this one further (its optimisers' moments included) instead of a
        fresh one, as the Dreamer-finetune baseline keeps training the simulation policy;
        ``ac_config`` is then its own.
    """
    config = config or PolicyTrainConfig()
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    bank = start_bank(model, sequences, seed=config.seed)
    if actor_critic is None:
        actor_critic = ActorCritic(model.feature_size, model.action_size, ac_config).to(model.device())
    with RunLogger(log_dir, config.steps, "train policy", quiet=quiet) as run:
        for update in range(1, config.steps + 1):
            metrics = actor_critic.train_step(
                model, subsample_states(bank, config.starts, generator), generator=generator
            )
            run.advance()
            if update % 50 == 0 or update == config.steps:
                run.log(update, **metrics)
    return actor_critic


def train_saved_policy(
    world_model: Path,
    data: Path,
    out: Path,
    config: PolicyTrainConfig,
    *,
    ac_config: ActorCriticConfig | None = None,
    adapter: Path | None = None,
    max_transitions: int | None = None,
    sequence_length: int = 32,
) -> ActorCritic:
    """Train a fresh actor-critic in the imagination of a saved world model (with ``adapter``, the adapted one) from
    the target dataset ``data``, and save it to the file ``out`` (its metrics in ``policy_logs`` beside it)."""
    model = load_world_model(world_model)
    if adapter is not None:
        model = load_adapter(model, adapter, trainable=False)
    sequences = reward_free_sequences(data, sequence_length, max_transitions=max_transitions)
    actor_critic = train_policy(model, sequences, config, ac_config=ac_config, log_dir=out.parent / "policy_logs")
    save_actor_critic(actor_critic, out, extra={"world_model": str(world_model), "adapter": str(adapter or "")})
    return actor_critic
