"""Online pretraining in simulation: a world model and a task policy trained while a behaviour explores
(Plan2Explore, the task reward, or random), resumable from its output directory, data-parallel under torchrun.

Offline training from a dataset is ``model_training.py``; the episode loop is ``collection.py``; process
groups and collectives are ``distributed.py``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from latent_residual import distributions
from latent_residual.actor_critic import ActorCritic, ActorCriticConfig, load_actor_critic, save_actor_critic
from latent_residual.config import config_to_dict
from latent_residual.contract import State, WorldModel
from latent_residual.errors import ConfigError
from latent_residual.progress import RunLogger
from latent_residual.registry.lookup import demo_env, env_expert, make_backbone, make_env
from latent_residual.rollout import posterior_states, step, subsample_states
from latent_residual.serialization import load_optimizer_tensors, optimizer_tensors
from latent_residual.workflow.data.collection import EpisodeCollector, begin_episode
from latent_residual.workflow.data.datasets import DatasetWriter, load_dataset
from latent_residual.workflow.data.recording import Episode
from latent_residual.workflow.deployment.loading import load_world_model
from latent_residual.workflow.training.distributed import (
    Ranks,
    all_true,
    average_buffers,
    average_gradients_at_step,
    barrier,
    broadcast_from_main,
    gather_ints,
    process_group,
    rank_seed,
)
from latent_residual.workflow.training.exploration import Disagreement
from latent_residual.workflow.training.model_training import (
    COMPILE_HELP,
    PROGRESS_NAME,
    WORLD_MODEL_NAME,
    WorldModelTrainer,
    check_precision,
    read_optimiser_state,
    read_progress,
    resolve_backbone,
    write_run_state,
)
from latent_residual.workflow.training.replay import ReplayBuffer

EXPLORATION = ("plan2explore", "reward", "random")
ACTOR_CRITIC_NAME = "actor_critic.safetensors"
EXPLORE_ACTOR_CRITIC_NAME = "explore_actor_critic.safetensors"
REPLAY_NAME = "replay"


@dataclass
class PretrainConfig:
    """Pretraining in simulation. Defaults are the authors' where they apply; CPU runs lower env_steps."""

    env_id: str = field(default="", metadata={"help": "Simulation environment id; empty: the registered demo source."})
    env_kwargs: dict[str, Any] = field(default_factory=dict, metadata={"help": "Environment kwargs (JSON)."})
    backbone: str = field(
        default="",
        metadata={"help": "Backbone id (see `latent-residual plugins`); empty: the one the environment names."},
    )
    backbone_preset: str = field(
        default="", metadata={"help": "A preset the backbone registers (such as 'cpu'); backbone_kwargs override it."}
    )
    backbone_kwargs: dict[str, Any] = field(default_factory=dict, metadata={"help": "Backbone kwargs (JSON)."})
    exploration: str = field(
        default="plan2explore",
        metadata={"help": "Behaviour that collects data: plan2explore (paper), reward or random."},
    )
    env_steps: int = field(default=100_000, metadata={"help": "Environment steps to collect."})
    prefill: int = field(
        default=2500, metadata={"help": "Steps collected before training starts (random after any expert steps)."}
    )
    expert_steps: int = field(
        default=0,
        metadata={
            "help": "First steps driven by the environment's scripted expert (with expert_noise), to seed the "
            "replay with rewarded states; 0 uses none (the paper's Plan2Explore alone)."
        },
    )
    expert_noise: float = field(default=0.3, metadata={"help": "Gaussian action noise of the expert steps."})
    train_ratio: float = field(default=512.0, metadata={"help": "Replayed steps per environment step (paper: 512)."})
    batch_size: int = field(default=16, metadata={"help": "Sequences per world-model batch."})
    seq_len: int = field(default=64, metadata={"help": "Steps per sequence."})
    model_lr: float = field(default=1e-4, metadata={"help": "World-model Adam learning rate."})
    model_grad_clip: float = field(default=1000.0, metadata={"help": "World-model gradient norm clip."})
    disagreement_members: int = field(default=8, metadata={"help": "Plan2Explore ensemble size."})
    imagination_starts: int = field(
        default=0, metadata={"help": "Posterior states per update used as imagination starts; 0 uses all B*T."}
    )
    checkpoint_every: int = field(default=5000, metadata={"help": "Environment steps between checkpoints."})
    seed: int = field(
        default=0,
        metadata={
            "help": "Seed for environment, networks and sampling (under torchrun, rank 0's; others derive theirs)."
        },
    )
    device: str = field(
        default="cpu", metadata={"help": "Torch device ('cuda' under torchrun: each process takes cuda:LOCAL_RANK)."}
    )
    precision: str = field(
        default="fp32",
        metadata={"help": "World-model loss precision: fp32, or bf16 (bfloat16 autocast; weights stay fp32)."},
    )
    compile: bool = field(default=False, metadata={"help": COMPILE_HELP})

    def __post_init__(self) -> None:
        if self.exploration not in EXPLORATION:
            raise ConfigError(
                f"PretrainConfig.exploration must be one of {', '.join(EXPLORATION)}; got {self.exploration!r}."
            )
        check_precision(self.precision, "PretrainConfig.")
        for name in ("env_steps", "batch_size", "seq_len", "checkpoint_every", "disagreement_members"):
            if getattr(self, name) < 1:
                raise ConfigError(f"PretrainConfig.{name} must be >= 1, got {getattr(self, name)!r}.")
        if self.expert_steps < 0 or self.expert_noise < 0:
            raise ConfigError("PretrainConfig.expert_steps and expert_noise must be >= 0.")
        if self.prefill < self.seq_len:
            raise ConfigError(f"PretrainConfig.prefill ({self.prefill}) must cover one sequence ({self.seq_len}).")
        if self.train_ratio <= 0:
            raise ConfigError(f"PretrainConfig.train_ratio must be > 0, got {self.train_ratio!r}.")

    def resolved(self) -> PretrainConfig:
        """This config with the registry's choices filled in: the environment, its backbone and the preset's kwargs."""
        env_id = self.env_id or demo_env().id
        backbone, kwargs = resolve_backbone(env_id, self.backbone, self.backbone_preset, self.backbone_kwargs)
        return dataclasses.replace(self, env_id=env_id, backbone=backbone, backbone_preset="", backbone_kwargs=kwargs)


@dataclass
class PretrainResult:
    """What pretraining did; ``episode_returns`` are the collecting behaviour's, in order."""

    env_steps: int
    updates: int
    episode_returns: list[float]
    seconds: float


class LatentAgent:
    """Acts in an environment with any world model: filters observations step by step, carrying the
    model's state (recurrent or not), and samples the actor-critic's action."""

    def __init__(self, model: WorldModel, actor_critic: ActorCritic) -> None:
        self.model = model
        self.actor_critic = actor_critic
        self.keys = list(model.observation_space.spaces)
        self._state: State | None = None
        self._action: Tensor | None = None

    def reset(self) -> None:
        """Forget the carried state: the next observation starts an episode."""
        self._state = None

    @torch.no_grad()
    def act(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        device = self.model.device()
        batch = {key: torch.as_tensor(np.asarray(obs[key]), device=device)[None, None] for key in self.keys}
        embed = self.model.embed(batch)[:, 0]
        initial = self.model.initial_state(1)
        is_first = self._state is None
        if is_first:
            self._state, self._action = initial, torch.zeros(1, self.model.action_size, device=device)
        first = torch.tensor([is_first], device=device)
        logits, deter = step(self.model, self._state, self._action, first, initial)
        prob = distributions.probs(self.model.posterior(deter, embed), self.model.posterior_unimix)
        self._state = self.model.next_state(deter, logits, distributions.sample_one_hot(prob))
        self._action = self.actor_critic.act(self.model.features(self._state), sample=True)
        return self._action[0].cpu().numpy()


class _PretrainBehaviour:
    """What acts while pretraining: the expert's first steps (with noise), random prefill, then the agent.

    It draws its own randomness from the seed each episode starts with, so a resumed run repeats it.
    """

    description = "pretraining"

    def __init__(self, run: _PretrainRun) -> None:
        self.run = run
        self.rng = np.random.default_rng(run.seed)
        self.env: Any = None

    def bind(self, env: Any) -> None:
        self.env = env

    def reset(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.run.agent.reset()
        if self.run.expert is not None and self.run.env_steps < self.run.config.expert_steps:
            begin_episode(self.run.expert, self.env, seed)

    def __call__(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        config, space = self.run.config, self.env.action_space
        if self.run.env_steps < config.expert_steps:
            return self.run.expert(obs) + config.expert_noise * self.rng.standard_normal(space.shape)
        if self.run.env_steps < config.prefill or config.exploration == "random":
            return self.rng.uniform(space.low, space.high)
        return self.run.agent.act(obs)


class _PretrainRun:
    """The state of one pretraining run, so that it can be checkpointed and resumed as a unit.

    Under torchrun each rank holds one: its own environment, seed and replay shard, and equal
    copies of the networks. The ranks step their environments in lock-step, so ``env_steps``
    (counted over all ranks) and with it every update and checkpoint fall on the same step
    everywhere; rank 0 writes the checkpoints.
    """

    def __init__(self, config: PretrainConfig, ac_config: ActorCriticConfig, out: Path, ranks: Ranks) -> None:
        self.config, self.out, self.ranks = config, out, ranks
        self.seed = rank_seed(config.seed, ranks)
        torch.manual_seed(self.seed)
        self.rng = np.random.default_rng(self.seed)
        self.generator = torch.Generator().manual_seed(self.seed)
        self.env = make_env(config.env_id, **config.env_kwargs)
        self.progress = read_progress(out)
        self._check_world_size()
        self._build_networks(ac_config)
        if self.progress:
            self._load_checkpoint()
        self._synchronise_networks()
        self.replay = ReplayBuffer(config.seq_len)
        self.writer = self._replay_writer()
        acting = self.explore if self.explore is not None else self.task
        self.agent = LatentAgent(self.model, acting)
        self.env_steps = int(self.progress.get("env_steps", 0))
        self.updates = int(self.progress.get("updates", 0))
        self.returns: list[float] = list(self.progress.get("episode_returns", [])) if ranks.is_main else []
        # Episode i of a rank resets with its seed + i, so a resumed rank continues its own numbering.
        self.episodes = int(self.progress.get("rank_episodes", [len(self.returns)])[ranks.rank]) if self.progress else 0
        self.expert = env_expert(config.env_id, **config.env_kwargs) if self.env_steps < config.expert_steps else None
        self._credit = 0.0
        self._replay_ready = False
        barrier(ranks)  # every rank has read the checkpoint before rank 0 may write the next one

    def _check_world_size(self) -> None:
        """A resumed run needs the world size it was started with: each rank reloads its own replay shard."""
        written = int(self.progress.get("world_size", 1)) if self.progress else self.ranks.world_size
        if written != self.ranks.world_size:
            raise ConfigError(
                f"{self.out / PROGRESS_NAME} was written by a run of {written} process(es), with a replay shard "
                f"each; resume it with {written} (torchrun's --nnodes x --nproc-per-node), not "
                f"{self.ranks.world_size}, or pretrain into a new directory."
            )

    def _build_networks(self, ac_config: ActorCriticConfig) -> None:
        config = self.config
        obs_space, act_space = self.env.observation_space, self.env.action_space
        if self.progress:
            self.model = load_world_model(self.out / WORLD_MODEL_NAME, device=config.device)
        else:
            self.model = make_backbone(config.backbone, obs_space, act_space, **config.backbone_kwargs).to(
                config.device
            )
        F, A = self.model.feature_size, self.model.action_size
        self.task = ActorCritic(F, A, ac_config).to(config.device)
        self.explore: ActorCritic | None = None
        self.disagreement: Disagreement | None = None
        if config.exploration == "plan2explore":
            self.explore = ActorCritic(F, A, ac_config).to(config.device)
            self.disagreement = Disagreement(
                F,
                A,
                self._embed_size(),
                members=config.disagreement_members,
                hidden=ac_config.hidden,
                layers=ac_config.layers,
            ).to(config.device)
            self.disagreement_opt = torch.optim.Adam(self.disagreement.parameters(), lr=config.model_lr, eps=1e-8)
        self.model_opt = torch.optim.Adam(self.model.parameters(), lr=config.model_lr, eps=1e-8)
        # The loss runs through DDP, which also copies rank 0's world model to every rank here.
        self.trainer = WorldModelTrainer(
            self.model,
            self.model_opt,
            config.model_grad_clip,
            precision=config.precision,
            compile=config.compile,
            ranks=self.ranks,
        )

    def _synchronise_networks(self) -> None:
        """Give every rank rank 0's networks (each rank seeded its own) and make their updates average
        gradients over the ranks, so they stay equal; without torchrun nothing changes."""
        for network in (self.task, self.explore, self.disagreement):
            if network is not None:
                broadcast_from_main(network, self.ranks)
        optimisers = [self.task.actor_opt, self.task.critic_opt]
        if self.explore is not None:
            optimisers += [self.explore.actor_opt, self.explore.critic_opt, self.disagreement_opt]
        for optimiser in optimisers:
            average_gradients_at_step(optimiser, self.ranks)

    def _embed_size(self) -> int:
        sample = {
            key: torch.as_tensor(np.asarray(space.sample()), device=self.config.device)[None, None]
            for key, space in self.env.observation_space.spaces.items()
        }
        with torch.no_grad():
            return int(self.model.embed(sample).shape[-1])

    def _replay_writer(self) -> DatasetWriter:
        """Every finished episode goes to ``replay/`` on disk (rank r > 0 of a torchrun: its shard
        ``replay-rank<r>/``); a resumed run reloads them first."""
        config = self.config
        replay_dir = self.out / (REPLAY_NAME if self.ranks.is_main else f"{REPLAY_NAME}-rank{self.ranks.rank}")
        if (replay_dir / "dataset.json").exists():
            for episode in load_dataset(replay_dir).episodes:
                self.replay.add(episode)
        return DatasetWriter(
            replay_dir,
            env_id=config.env_id,
            env_kwargs=config.env_kwargs,
            observation_space=self.env.observation_space,
            action_space=self.env.action_space,
            provenance={
                "behaviour": f"pretraining ({config.exploration}; {config.expert_steps} expert steps first)",
                "seed": self.seed,
            },
        )

    def _load_checkpoint(self) -> None:
        self.task = load_actor_critic(self.out / ACTOR_CRITIC_NAME, device=self.config.device)
        tensors = read_optimiser_state(self.out)
        load_optimizer_tensors(self.model_opt, tensors, "model_opt")
        if self.explore is not None:
            self.explore = load_actor_critic(self.out / EXPLORE_ACTOR_CRITIC_NAME, device=self.config.device)
            weights = {k[len("disagreement.") :]: v for k, v in tensors.items() if k.startswith("disagreement.")}
            self.disagreement.load_state_dict(weights)
            load_optimizer_tensors(self.disagreement_opt, tensors, "disagreement_opt")

    def checkpoint(self, done: bool) -> None:
        """Write the run's state (rank 0; the other ranks wait until it is written)."""
        rank_episodes = gather_ints(self.episodes, self.ranks)
        if self.ranks.is_main:
            self._write_checkpoint(done, rank_episodes)
        barrier(self.ranks)

    def _write_checkpoint(self, done: bool, rank_episodes: list[int]) -> None:
        config = self.config
        save_actor_critic(self.task, self.out / ACTOR_CRITIC_NAME, extra={"env_id": config.env_id})
        tensors = optimizer_tensors(self.model_opt, "model_opt")
        if self.explore is not None:
            save_actor_critic(self.explore, self.out / EXPLORE_ACTOR_CRITIC_NAME)
            tensors.update({f"disagreement.{k}": v for k, v in self.disagreement.state_dict().items()})
            tensors.update(optimizer_tensors(self.disagreement_opt, "disagreement_opt"))
        progress = {
            "env_steps": self.env_steps,
            "updates": self.updates,
            "episode_returns": self.returns,
            "done": done,
            "config": config_to_dict(config),
        }
        if self.ranks.parallel:
            progress.update(world_size=self.ranks.world_size, rank_episodes=rank_episodes)
        write_run_state(self.out, self.model, {"env_steps": self.env_steps, "env_id": config.env_id}, tensors, progress)

    def update(self) -> dict[str, float]:
        """One world-model step, then one step of each actor-critic (and the disagreement ensemble).

        Under torchrun every update averages its gradients over the ranks (each rank's batch is
        its own); the return normalisers, updated from each rank's imagination, are averaged after.
        """
        config = self.config
        batch = self.replay.sample(config.batch_size, self.rng, config.device)
        metrics = {f"model/{k}": v for k, v in self.trainer.step(batch).items()}
        filtered = posterior_states(self.model, batch)
        starts = {key: value.flatten(0, 1) for key, value in filtered["states"].items()}
        starts = subsample_states(starts, config.imagination_starts, self.generator)
        metrics.update(
            {f"task/{k}": v for k, v in self.task.train_step(self.model, starts, generator=self.generator).items()}
        )
        average_buffers(self.task, self.ranks)
        if self.disagreement is not None:
            features, embed, actions = filtered["features"], filtered["embed"], batch["action"].float()
            disagreement_loss = self.disagreement.loss(features[:, :-1], actions[:, :-1], embed[:, 1:])
            self.disagreement_opt.zero_grad(set_to_none=True)
            disagreement_loss.backward()
            self.disagreement_opt.step()
            explore_metrics = self.explore.train_step(
                self.model, starts, reward_fn=self.disagreement.reward, generator=self.generator
            )
            average_buffers(self.explore, self.ranks)
            metrics["explore/disagreement_loss"] = disagreement_loss.item()
            metrics.update({f"explore/{k}": v for k, v in explore_metrics.items()})
        self.updates += 1
        return metrics

    def after_env_step(self, log: RunLogger) -> None:
        """Count a step (one per rank), run the updates it pays for (train_ratio), checkpoint when one is due.

        Each rank's update replays ``batch_size x seq_len`` steps for its own environment step, so
        the ratio holds over all ranks too.
        """
        config, world_size = self.config, self.ranks.world_size
        self.env_steps += world_size
        log.advance(world_size)
        if self.env_steps >= config.prefill and not self._replay_ready:
            # Updates are collective: they start once every rank's replay holds an episode.
            self._replay_ready = all_true(bool(self.replay.episodes), self.ranks)
        if self.env_steps >= config.prefill and self._replay_ready:
            self._credit += config.train_ratio / (config.batch_size * config.seq_len)
            while self._credit >= 1.0:
                metrics = self.update()
                self._credit -= 1.0
                if self.updates % 25 == 1:  # the first update, then every 25th
                    log.log(self.env_steps, **metrics)
        if self.env_steps // config.checkpoint_every > (self.env_steps - world_size) // config.checkpoint_every:
            self.checkpoint(done=False)

    def finish_episode(self, episode: Episode, log: RunLogger) -> None:
        self.episodes += 1
        self.writer.add_episode(episode)
        self.replay.add(episode)
        self.returns.append(float(episode["reward"].sum()))
        log.log(self.env_steps, episode_return=self.returns[-1])


def pretrain(
    config: PretrainConfig,
    out_dir: str | Path,
    *,
    ac_config: ActorCriticConfig | None = None,
    quiet: bool = False,
) -> PretrainResult:
    """Pretrain a world model and a task policy in simulation; resumable from ``out_dir``.

    ``out_dir`` receives ``world_model/`` (a checkpoint), ``actor_critic.safetensors`` (the
    simulation policy), ``replay/`` (every finished episode, as a dataset), ``metrics.csv``,
    TensorBoard files and ``progress.json``. Re-running with the same ``out_dir`` continues
    from the last checkpoint (a larger ``env_steps`` extends a finished run); a run that has
    reached ``env_steps`` returns at once. An episode still running at ``env_steps`` is not kept.

    Under torchrun (``torchrun --nproc-per-node N ...``) every process runs its own environment
    with its own seed, keeps its own replay (rank r > 0 writes ``replay-rank<r>/``) and samples
    ``batch_size`` sequences from it per update; all networks average their gradients over the
    processes. ``env_steps``, ``prefill``, ``expert_steps`` and ``checkpoint_every`` count the
    steps of all processes together. Rank 0 writes the checkpoints, metrics and progress; each
    rank's result lists the returns of its own episodes (rank 0's are those in ``progress.json``).
    """
    config = config.resolved()
    out = Path(out_dir)
    with process_group(config.device) as (ranks, device):
        config = dataclasses.replace(config, device=device)
        run = _PretrainRun(config, ac_config or ActorCriticConfig(), out, ranks)
        if run.env_steps >= config.env_steps:
            return PretrainResult(run.env_steps, run.updates, run.returns, 0.0)
        start = time.monotonic()
        collector = EpisodeCollector(run.env, _PretrainBehaviour(run), seed=run.seed)
        main = ranks.is_main
        with RunLogger(
            out if main else None, config.env_steps, "pretrain", quiet=quiet or not main, initial=run.env_steps
        ) as log:

            def after_step(taken: int) -> bool:
                if taken:  # the reset records a step but takes none
                    run.after_env_step(log)
                return run.env_steps >= config.env_steps

            while run.env_steps < config.env_steps:
                episode = collector.episode(run.episodes, after_step=after_step)
                if episode is not None:
                    run.finish_episode(episode, log)
        run.checkpoint(done=True)
        return PretrainResult(run.env_steps, run.updates, run.returns, time.monotonic() - start)
