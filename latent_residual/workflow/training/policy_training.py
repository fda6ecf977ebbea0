"""Training a fresh actor-critic purely in a world model's imagination, from posterior states of recorded
data (ReDRAW's step 3), and the ``train-policy`` step on saved files. The actor-critic itself is the kernel's
(``actor_critic.py``).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from latent_residual.actor_critic import ActorCritic, ActorCriticConfig, save_actor_critic
from latent_residual.adapters import load_adapter
from latent_residual.contract import WorldModel
from latent_residual.errors import ConfigError, TrainingDivergedError
from latent_residual.progress import RunLogger
from latent_residual.rollout import start_bank, subsample_states
from latent_residual.serialization import write_text
from latent_residual.workflow.data.datasets import reward_free_sequences
from latent_residual.workflow.deployment.loading import load_world_model
from latent_residual.workflow.training.distributed import (
    Ranks,
    average_gradients_at_step,
    average_in_place,
    average_scalars,
    check_cpu_workers,
    check_in_sync,
    rank_seed,
    spawned_group,
)
from latent_residual.workflow.training.selection import Selection, SelectionConfig, choose


@dataclass
class PolicyTrainConfig:
    """Training a fresh actor-critic purely in imagination, from posterior states of recorded data."""

    steps: int = field(default=2000, metadata={"help": "Actor-critic updates."})
    starts: int = field(default=1024, metadata={"help": "Imagination starts per update (paper: 16 x 64)."})
    seed: int = field(default=0, metadata={"help": "Seed for networks and sampling."})
    candidates: int = field(
        default=1,
        metadata={"help": "Policies trained, seeds seed, seed+1, ...; one is chosen without real reward."},
    )
    snapshots: int = field(
        default=1, metadata={"help": "Candidates kept per seed along training, evenly spaced, the last included."}
    )
    workers: int = field(
        default=1,
        metadata={
            "help": "Processes that share each update's starts, data-parallel on this machine's cores (gradients "
            "and the return scale averaged every update). The result depends on this number, not on the cores."
        },
    )

    def __post_init__(self) -> None:
        for name in ("steps", "starts", "candidates", "snapshots", "workers"):
            if getattr(self, name) < 1:
                raise ConfigError(f"PolicyTrainConfig.{name} must be >= 1, got {getattr(self, name)}.")
        if self.starts % self.workers:
            raise ConfigError(
                f"PolicyTrainConfig.starts ({self.starts}) must divide evenly among its {self.workers} workers."
            )

    @property
    def selects(self) -> bool:
        """Whether more than one candidate is trained, so one is chosen (``selection.py``)."""
        return self.candidates * self.snapshots > 1


def train_policy(
    model: WorldModel,
    sequences: Mapping[str, Tensor],
    config: PolicyTrainConfig | None = None,
    *,
    ac_config: ActorCriticConfig | None = None,
    actor_critic: ActorCritic | None = None,
    log_dir: str | Path | None = None,
    quiet: bool = False,
    on_update: Callable[[int, ActorCritic], None] | None = None,
) -> ActorCritic:
    """Train a re-initialised actor-critic in ``model``'s imagination (ReDRAW's step 3).

    Imagination starts from posterior states of ``sequences`` (the target data); rewards come
    from the model's frozen reward head, so the data needs no rewards. With ``config.workers`` > 1 the
    other workers are spawned processes (a script that calls this needs Python's
    ``if __name__ == "__main__":`` guard), each with one torch thread.

    :param actor_critic: Train this one further (its optimisers' moments included) instead of a
        fresh one, as the Dreamer-finetune baseline keeps training the simulation policy;
        ``ac_config`` is then its own.
    :param on_update: Called with the update's number (from 1) and the actor-critic after each update
        (snapshots along training, for selection).
    :raises TrainingDivergedError: An update's losses or imagined returns are NaN or infinite.
    """
    config = config or PolicyTrainConfig()
    check_cpu_workers(model.device(), config.workers, "train_policy")
    if config.workers == 1:
        return _train(model, sequences, config, ac_config, actor_critic, Ranks(), log_dir, quiet, on_update)
    args = (model, dict(sequences), config, ac_config, actor_critic)
    with spawned_group(config.workers, _policy_worker, args) as ranks:
        return _train(model, sequences, config, ac_config, actor_critic, ranks, log_dir, quiet, on_update)


def _policy_worker(
    ranks: Ranks,
    model: WorldModel,
    sequences: Mapping[str, Tensor],
    config: PolicyTrainConfig,
    ac_config: ActorCriticConfig | None,
    actor_critic: ActorCritic | None,
) -> None:
    """A spawned worker of a data-parallel :func:`train_policy`: the same updates on its share of the starts."""
    # The frozen model may stay in memory shared with rank 0; a policy trained further may not.
    _train(model, sequences, config, ac_config, copy.deepcopy(actor_critic), ranks, None, True, None)


def _train(
    model: WorldModel,
    sequences: Mapping[str, Tensor],
    config: PolicyTrainConfig,
    ac_config: ActorCriticConfig | None,
    actor_critic: ActorCritic | None,
    ranks: Ranks,
    log_dir: str | Path | None,
    quiet: bool,
    on_update: Callable[[int, ActorCritic], None] | None,
) -> ActorCritic:
    """:func:`train_policy`'s updates on this rank; every rank starts from the same networks and bank and
    samples its own starts."""
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(rank_seed(config.seed, ranks))
    bank = start_bank(model, sequences, seed=config.seed)
    if actor_critic is None:
        actor_critic = ActorCritic(model.feature_size, model.action_size, ac_config).to(model.device())
    starts = config.starts // ranks.world_size
    hooks = [average_gradients_at_step(opt, ranks) for opt in (actor_critic.actor_opt, actor_critic.critic_opt)]
    try:
        with RunLogger(log_dir, config.steps, "train policy", quiet=quiet or not ranks.is_main) as run:
            for update in range(1, config.steps + 1):
                metrics = actor_critic.train_step(model, subsample_states(bank, starts, generator), generator=generator)
                if ranks.parallel:
                    average_in_place(actor_critic.return_scale, ranks)  # each rank moved it by its own starts
                    metrics = average_scalars(metrics, ranks)
                _check_finite(update, metrics)
                run.advance()
                if on_update is not None:
                    on_update(update, actor_critic)
                if update % 50 == 0 or update == config.steps:
                    run.log(update, **metrics)
        check_in_sync(actor_critic, "actor-critic", ranks)
    finally:
        for hook in hooks:
            if hook is not None:
                hook.remove()
    return actor_critic


def _check_finite(update: int, metrics: Mapping[str, float]) -> None:
    bad = {key: value for key, value in metrics.items() if not math.isfinite(value)}
    if bad:
        raise TrainingDivergedError(
            f"policy training diverged at update {update}: "
            + ", ".join(f"{key}={value}" for key, value in bad.items())
            + " (try lower --ac-actor-lr / --ac-critic-lr, or check the world model's reward head)."
        )


def _snapshot_updates(steps: int, snapshots: int) -> list[int]:
    """Evenly spaced updates ending at the last one."""
    return sorted({max(1, round(steps * (k + 1) / snapshots)) for k in range(snapshots)})


def train_candidates(
    models: WorldModel | Sequence[WorldModel],
    sequences: Mapping[str, Tensor],
    config: PolicyTrainConfig,
    selection: SelectionConfig,
    *,
    ac_config: ActorCriticConfig | None = None,
    log_dir: str | Path | None = None,
    quiet: bool = False,
) -> Selection:
    """Train ``config.candidates`` policies (seeds ``config.seed`` on) in each of ``models`` (one model, or several
    fits of it), keep ``config.snapshots`` of each along training, and choose one by the offline criterion
    (``selection.py``), every candidate scored in every model. No reward of the data is read."""
    models = [models] if isinstance(models, WorldModel) else list(models)
    sequences = {key: value for key, value in sequences.items() if key != "reward"}
    keep = _snapshot_updates(config.steps, config.snapshots)
    candidates: list[tuple[int, int, int, ActorCritic]] = []
    for fit, model in enumerate(models):
        for offset in range(config.candidates):
            seed = config.seed + offset

            def snapshot(update: int, trained: ActorCritic, fit: int = fit, seed: int = seed) -> None:
                if update in keep:
                    candidates.append((fit, seed, update, copy.deepcopy(trained)))

            where = f"fit{fit}/seed{seed}" if len(models) > 1 else f"seed{seed}"
            train_policy(
                model,
                sequences,
                dataclasses.replace(config, seed=seed, candidates=1, snapshots=1),
                ac_config=ac_config,
                log_dir=None if log_dir is None else Path(log_dir) / where,
                quiet=quiet,
                on_update=snapshot,
            )
    return choose(models, candidates, sequences, selection)


def train_saved_policy(
    world_model: Path,
    data: Path,
    out: Path,
    config: PolicyTrainConfig,
    *,
    ac_config: ActorCriticConfig | None = None,
    adapters: Sequence[Path] = (),
    max_transitions: int | None = None,
    sequence_length: int = 32,
    selection: SelectionConfig | None = None,
) -> ActorCritic:
    """Train a fresh actor-critic in the imagination of a saved world model (with an adapter, the adapted one) from
    the target dataset ``data``, and save it to the file ``out`` (its metrics in ``policy_logs`` beside it).

    With more than one candidate (``config.candidates``, ``config.snapshots``) or several ``adapters`` (fits of one
    residual, candidates trained in each), the one ``selection`` chooses is saved and every candidate's score goes
    to ``<out>.selection.json``."""
    base = load_world_model(world_model)
    models = [load_adapter(base, adapter, trainable=False) for adapter in adapters] or [base]
    sequences = reward_free_sequences(data, sequence_length, max_transitions=max_transitions)
    log_dir = out.parent / "policy_logs"
    chosen = None
    if config.selects or len(models) > 1:
        chosen = train_candidates(
            models, sequences, config, selection or SelectionConfig(), ac_config=ac_config, log_dir=log_dir
        )
        actor_critic = chosen.actor_critic
    else:
        actor_critic = train_policy(models[0], sequences, config, ac_config=ac_config, log_dir=log_dir)
    fit = 0 if chosen is None else chosen.scores[chosen.chosen].fit
    adapter = adapters[fit] if adapters else None
    save_actor_critic(actor_critic, out, extra={"world_model": str(world_model), "adapter": str(adapter or "")})
    if chosen is not None:
        write_text(selection_path(out), json.dumps(chosen.to_dict(), indent=2) + "\n")
    return actor_critic


def selection_path(policy_file: Path) -> Path:
    """Where ``train-policy --candidates`` records the candidates' scores beside the policy file."""
    return policy_file.with_name(policy_file.name.removesuffix(".safetensors") + ".selection.json")
