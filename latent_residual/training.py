"""Training loops: pretraining a world model and its behaviour in simulation, and a policy in imagination.

Residual fitting is in ``fitting.py``; evaluation in ``evaluation.py``; the actor-critic in ``behavior.py``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from latent_residual import latent
from latent_residual.behavior import ActorCritic, ActorCriticConfig
from latent_residual.checkpoints import load_world_model, save_world_model
from latent_residual.config import config_from_dict, config_to_dict
from latent_residual.contract import State, WorldModel
from latent_residual.errors import ConfigError, DatasetError
from latent_residual.exploration import Disagreement
from latent_residual.files import read_safetensors, write_safetensors, write_text
from latent_residual.metrics import RunLogger
from latent_residual.rollout import observe, prev_actions, step

EXPLORATION = ("plan2explore", "reward", "random")
ACTOR_CRITIC_NAME = "actor_critic.safetensors"
PROGRESS_NAME = "progress.json"


@dataclass
class PretrainConfig:
    """Pretraining in simulation. Defaults are the authors' where they apply; CPU runs lower env_steps."""

    env_id: str = field(default="dmc/pendulum-swingup-v0", metadata={"help": "Simulation environment id."})
    env_kwargs: dict[str, Any] = field(default_factory=dict, metadata={"help": "Environment kwargs (JSON)."})
    backbone: str = field(default="draw-v0", metadata={"help": "Backbone id (see `latent-residual plugins`)."})
    backbone_kwargs: dict[str, Any] = field(
        default_factory=lambda: {"preset": "small"}, metadata={"help": "Backbone kwargs (JSON)."}
    )
    exploration: str = field(
        default="plan2explore",
        metadata={"help": "Behaviour that collects data: plan2explore (paper), reward or random."},
    )
    env_steps: int = field(default=100_000, metadata={"help": "Environment steps to collect."})
    prefill: int = field(default=2500, metadata={"help": "Steps collected before training starts (random after any expert steps)."})
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
    seed: int = field(default=0, metadata={"help": "Seed for environment, networks and sampling."})
    device: str = field(default="cpu", metadata={"help": "Torch device."})

    def __post_init__(self) -> None:
        if self.exploration not in EXPLORATION:
            raise ConfigError(
                f"PretrainConfig.exploration must be one of {', '.join(EXPLORATION)}; got {self.exploration!r}."
            )
        for name in ("env_steps", "batch_size", "seq_len", "checkpoint_every", "disagreement_members"):
            if getattr(self, name) < 1:
                raise ConfigError(f"PretrainConfig.{name} must be >= 1, got {getattr(self, name)!r}.")
        if self.expert_steps < 0 or self.expert_noise < 0:
            raise ConfigError("PretrainConfig.expert_steps and expert_noise must be >= 0.")
        if self.prefill < self.seq_len:
            raise ConfigError(f"PretrainConfig.prefill ({self.prefill}) must cover one sequence ({self.seq_len}).")
        if self.train_ratio <= 0:
            raise ConfigError(f"PretrainConfig.train_ratio must be > 0, got {self.train_ratio!r}.")


class ReplayBuffer:
    """Finished episodes in memory; samples (B, T) windows uniformly over all windows."""

    def __init__(self, seq_len: int) -> None:
        self.seq_len = seq_len
        self.episodes: list[dict[str, np.ndarray]] = []
        self._windows: list[int] = []

    def add(self, episode: Mapping[str, np.ndarray]) -> None:
        length = len(episode["is_first"])
        if length >= self.seq_len:
            self.episodes.append(dict(episode))
            self._windows.append(length - self.seq_len + 1)

    @property
    def transitions(self) -> int:
        return sum(len(ep["is_first"]) for ep in self.episodes)

    def sample(self, batch_size: int, rng: np.random.Generator, device: str | torch.device) -> dict[str, Tensor]:
        if not self.episodes:
            raise DatasetError(f"The replay buffer holds no episode of at least {self.seq_len} steps yet.")
        weights = np.asarray(self._windows, dtype=np.float64)
        picks = rng.choice(len(self.episodes), size=batch_size, p=weights / weights.sum())
        rows = []
        for index in picks:
            start = int(rng.integers(self._windows[index]))
            rows.append({key: value[start : start + self.seq_len] for key, value in self.episodes[index].items()})
        batch = {key: torch.as_tensor(np.stack([row[key] for row in rows]), device=device) for key in rows[0]}
        # A window cut from mid-episode has no context: treat its first step as a start.
        batch["is_first"][:, 0] = True
        return batch


class Agent:
    """Acts in an environment with any world model: filters observations step by step, carrying the
    model's state (recurrent or not), and asks an actor-critic for the action."""

    def __init__(self, model: WorldModel, actor_critic: ActorCritic, *, sample: bool) -> None:
        self.model = model
        self.actor_critic = actor_critic
        self.sample = sample
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
        prob = latent.probs(self.model.posterior(deter, embed), self.model.posterior_unimix)
        stoch = latent.sample_one_hot(prob) if self.sample else latent.mode_one_hot(prob)
        self._state = self.model.next_state(deter, logits, stoch)
        self._action = self.actor_critic.act(self.model.features(self._state), sample=self.sample)
        return self._action[0].cpu().numpy()


def world_model_step(
    model: WorldModel, optimiser: torch.optim.Optimizer, batch: Mapping[str, Tensor], grad_clip: float
) -> dict[str, float]:
    """One gradient step on the backbone's own loss; returns its metrics (``loss`` included)."""
    model.train()
    loss, metrics = model.loss(batch)
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimiser.step()
    model.eval()
    return {"loss": loss.item(), **metrics}


def train_world_model(
    model: WorldModel,
    episodes: list[Mapping[str, np.ndarray]],
    *,
    updates: int,
    batch_size: int = 16,
    seq_len: int = 64,
    lr: float = 1e-4,
    grad_clip: float = 1000.0,
    seed: int = 0,
    log_dir: str | Path | None = None,
    quiet: bool = False,
) -> WorldModel:
    """Train ``model`` offline on recorded episodes (for example a dataset's), in place.

    Offline pretraining from a fixed, diverse simulation dataset is far cheaper on a CPU than
    interaction: every second goes into updates. Defaults are the paper's (batch 16 x 64,
    Adam 1e-4, clip 1000).
    """
    replay = ReplayBuffer(seq_len)
    for episode in episodes:
        replay.add(episode)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr, eps=1e-8)
    with RunLogger(log_dir, updates, "train world model", quiet=quiet) as run:
        for update in range(1, updates + 1):
            metrics = world_model_step(model, optimiser, replay.sample(batch_size, rng, model.device()), grad_clip)
            run.advance()
            if update % 100 == 1 or update == updates:
                run.log(update, **metrics)
    return model


def posterior_starts(
    model: WorldModel, batch: Mapping[str, Tensor], obs_keys: list[str]
) -> tuple[State, Tensor, Tensor]:
    """Filter a (B, T) batch without gradients; return every posterior state flattened to (B*T, ...)
    as imagination starts, the (B, T, E) embeddings and the (B, T, F) features."""
    with torch.no_grad():
        embed = model.embed({key: batch[key] for key in obs_keys})
        out = observe(model, prev_actions(batch["action"].float()), batch["is_first"], embed=embed)
    return {key: value.flatten(0, 1) for key, value in out["states"].items()}, embed, out["features"]


def _subsample(states: State, count: int, generator: torch.Generator) -> State:
    total = states["stoch"].shape[0]
    if count <= 0 or count >= total:
        return states
    index = torch.randperm(total, generator=generator)[:count].to(states["stoch"].device)
    return {key: value[index] for key, value in states.items()}


def _optimizer_tensors(optimizer: torch.optim.Optimizer, prefix: str) -> dict[str, Tensor]:
    tensors = {}
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            tensors[f"{prefix}.{index}.{key}"] = torch.as_tensor(value)
    return tensors


def _load_optimizer_tensors(optimizer: torch.optim.Optimizer, tensors: Mapping[str, Tensor], prefix: str) -> None:
    state: dict[int, dict[str, Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith(prefix + "."):
            _, index, key = name.rsplit(".", 2)
            state.setdefault(int(index), {})[key] = value
    if state:
        optimizer.load_state_dict({"state": state, "param_groups": optimizer.state_dict()["param_groups"]})


def save_actor_critic(actor_critic: ActorCritic, path: str | Path, *, extra: dict[str, Any] | None = None) -> None:
    """Write actor, critic, slow critic, return scale and optimiser moments to one safetensors file."""
    tensors = {f"net.{key}": value for key, value in actor_critic.state_dict().items()}
    tensors.update(_optimizer_tensors(actor_critic.actor_opt, "actor_opt"))
    tensors.update(_optimizer_tensors(actor_critic.critic_opt, "critic_opt"))
    metadata = {
        "format": "latent-residual-actor-critic",
        "config": json.dumps(config_to_dict(actor_critic.config)),
        "feature_size": str(actor_critic.feature_size),
        "action_size": str(actor_critic.action_size),
        "extra": json.dumps(extra or {}),
    }
    write_safetensors(Path(path), tensors, metadata)


def load_actor_critic(path: str | Path, *, device: str | torch.device = "cpu") -> ActorCritic:
    """Rebuild an ActorCritic saved by :func:`save_actor_critic` (strict keys, no pickle)."""
    from latent_residual.errors import AdapterFileError

    path = Path(path)
    tensors, metadata = read_safetensors(path)
    if metadata.get("format") != "latent-residual-actor-critic":
        raise AdapterFileError(f"{path}: not a latent-residual actor-critic file (format {metadata.get('format')!r}).")
    config = config_from_dict(ActorCriticConfig, json.loads(metadata["config"]), source=f"{path} metadata 'config'")
    actor_critic = ActorCritic(int(metadata["feature_size"]), int(metadata["action_size"]), config)
    weights = {key[4:]: value for key, value in tensors.items() if key.startswith("net.")}
    missing = sorted(set(actor_critic.state_dict()) - set(weights))
    unexpected = sorted(set(weights) - set(actor_critic.state_dict()))
    if missing or unexpected:
        raise AdapterFileError(f"{path}: actor-critic keys do not match: missing {missing}, unexpected {unexpected}.")
    actor_critic.load_state_dict(weights)
    actor_critic.to(device)
    _load_optimizer_tensors(actor_critic.actor_opt, tensors, "actor_opt")
    _load_optimizer_tensors(actor_critic.critic_opt, tensors, "critic_opt")
    return actor_critic


@dataclass
class PretrainResult:
    """What pretraining did; ``episode_returns`` are the collecting behaviour's, in order."""

    env_steps: int
    updates: int
    episode_returns: list[float]
    seconds: float


class _Pretraining:
    """The state of one pretraining run, so that it can be checkpointed and resumed as a unit."""

    def __init__(self, config: PretrainConfig, ac_config: ActorCriticConfig, out: Path) -> None:
        from latent_residual.datasets import DatasetWriter, load_dataset
        from latent_residual.registry import make_backbone, make_env

        self.config, self.out = config, out
        torch.manual_seed(config.seed)
        self.rng = np.random.default_rng(config.seed)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.env = make_env(config.env_id, **config.env_kwargs)
        obs_space, act_space = self.env.observation_space, self.env.action_space
        progress_path = out / PROGRESS_NAME
        self.progress = json.loads(progress_path.read_text()) if progress_path.exists() else {}
        if self.progress:
            self.model = load_world_model(out / "world_model", device=config.device)
        else:
            self.model = make_backbone(config.backbone, obs_space, act_space, **config.backbone_kwargs).to(config.device)
        self.obs_keys = list(obs_space.spaces)
        A = self.model.action_size
        self.task = ActorCritic(self.model.feature_size, A, ac_config).to(config.device)
        self.explore = None
        self.disagreement = None
        if config.exploration == "plan2explore":
            embed_size = self._embed_size()
            self.explore = ActorCritic(self.model.feature_size, A, ac_config).to(config.device)
            self.disagreement = Disagreement(
                self.model.feature_size, A, embed_size, members=config.disagreement_members,
                hidden=ac_config.hidden, layers=ac_config.layers,
            ).to(config.device)
            self.disagreement_opt = torch.optim.Adam(self.disagreement.parameters(), lr=config.model_lr, eps=1e-8)
        self.model_opt = torch.optim.Adam(self.model.parameters(), lr=config.model_lr, eps=1e-8)
        if self.progress:
            self._load_checkpoint()
        self.replay = ReplayBuffer(config.seq_len)
        replay_dir = out / "replay"
        if (replay_dir / "dataset.json").exists():
            for episode in load_dataset(replay_dir).episodes:
                self.replay.add(episode)
        self.writer = DatasetWriter(
            replay_dir,
            env_id=config.env_id,
            env_kwargs=config.env_kwargs,
            observation_space=obs_space,
            action_space=act_space,
            provenance={
                "behaviour": f"pretraining ({config.exploration}; {config.expert_steps} expert steps first)",
                "seed": config.seed,
            },
        )
        acting = self.explore if self.explore is not None else self.task
        self.agent = Agent(self.model, acting, sample=True)
        self.env_steps = int(self.progress.get("env_steps", 0))
        self.updates = int(self.progress.get("updates", 0))
        self.returns: list[float] = list(self.progress.get("episode_returns", []))

    def _embed_size(self) -> int:
        sample = {
            key: torch.as_tensor(np.asarray(space.sample()), device=self.config.device)[None, None]
            for key, space in self.env.observation_space.spaces.items()
        }
        with torch.no_grad():
            return int(self.model.embed(sample).shape[-1])

    def _load_checkpoint(self) -> None:
        self.task = load_actor_critic(self.out / ACTOR_CRITIC_NAME, device=self.config.device)
        tensors, _ = read_safetensors(self.out / "optimizers.safetensors")
        _load_optimizer_tensors(self.model_opt, tensors, "model_opt")
        if self.explore is not None:
            self.explore = load_actor_critic(self.out / "explore_actor_critic.safetensors", device=self.config.device)
            weights = {k[len("disagreement."):]: v for k, v in tensors.items() if k.startswith("disagreement.")}
            self.disagreement.load_state_dict(weights)
            _load_optimizer_tensors(self.disagreement_opt, tensors, "disagreement_opt")

    def checkpoint(self, done: bool) -> None:
        save_world_model(self.model, self.out / "world_model", extra={"env_steps": self.env_steps, "env_id": self.config.env_id})
        save_actor_critic(self.task, self.out / ACTOR_CRITIC_NAME, extra={"env_id": self.config.env_id})
        tensors = _optimizer_tensors(self.model_opt, "model_opt")
        if self.explore is not None:
            save_actor_critic(self.explore, self.out / "explore_actor_critic.safetensors")
            tensors.update({f"disagreement.{k}": v for k, v in self.disagreement.state_dict().items()})
            tensors.update(_optimizer_tensors(self.disagreement_opt, "disagreement_opt"))
        write_safetensors(self.out / "optimizers.safetensors", tensors, {"format": "latent-residual-optimizers"})
        progress = {
            "env_steps": self.env_steps,
            "updates": self.updates,
            "episode_returns": self.returns,
            "done": done,
            "config": config_to_dict(self.config),
        }
        write_text(self.out / PROGRESS_NAME, json.dumps(progress, indent=2) + "\n")

    def update(self) -> dict[str, float]:
        config = self.config
        batch = self.replay.sample(config.batch_size, self.rng, config.device)
        metrics = world_model_step(self.model, self.model_opt, batch, config.model_grad_clip)
        starts, embed, features = posterior_starts(self.model, batch, self.obs_keys)
        starts = _subsample(starts, config.imagination_starts, self.generator)
        metrics = {f"model/{k}": v for k, v in metrics.items()}
        metrics.update({f"task/{k}": v for k, v in self.task.train_step(self.model, starts, generator=self.generator).items()})
        if self.disagreement is not None:
            actions = batch["action"].float()
            disagreement_loss = self.disagreement.loss(features[:, :-1], actions[:, :-1], embed[:, 1:])
            self.disagreement_opt.zero_grad(set_to_none=True)
            disagreement_loss.backward()
            self.disagreement_opt.step()
            explore_metrics = self.explore.train_step(
                self.model, starts, reward_fn=self.disagreement.reward, generator=self.generator
            )
            metrics["explore/disagreement_loss"] = disagreement_loss.item()
            metrics.update({f"explore/{k}": v for k, v in explore_metrics.items()})
        self.updates += 1
        return metrics


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
    reached ``env_steps`` returns at once.
    """
    from latent_residual.datasets import EpisodeRecorder, begin_episode

    out = Path(out_dir)
    run_state = _Pretraining(config, ac_config or ActorCriticConfig(), out)
    if run_state.env_steps >= config.env_steps:
        return PretrainResult(run_state.env_steps, run_state.updates, run_state.returns, 0.0)
    start = time.monotonic()
    per_update = config.batch_size * config.seq_len / config.train_ratio  # env steps per update
    credit = 0.0
    recorder = EpisodeRecorder()
    obs, _ = run_state.env.reset(seed=config.seed + len(run_state.returns))
    recorder.start(obs)
    run_state.agent.reset()
    episode_return = 0.0
    action_space = run_state.env.action_space
    action_space.seed(config.seed + run_state.env_steps)
    expert = None
    if run_state.env_steps < config.expert_steps:
        from latent_residual.registry import env_expert

        expert = env_expert(config.env_id, **config.env_kwargs)
        begin_episode(expert, run_state.env, config.seed + len(run_state.returns))
    with RunLogger(out, config.env_steps, "pretrain", quiet=quiet) as run:
        run.advance(run_state.env_steps)
        while run_state.env_steps < config.env_steps:
            if run_state.env_steps < config.expert_steps:
                noisy = expert(obs) + config.expert_noise * run_state.rng.standard_normal(action_space.shape)
                action = np.clip(noisy, action_space.low, action_space.high).astype(np.float32)
            elif run_state.env_steps < config.prefill or config.exploration == "random":
                action = action_space.sample()
            else:
                action = run_state.agent.act(obs)
            obs, reward, terminated, truncated, _ = run_state.env.step(action)
            episode_return += float(reward)
            run_state.env_steps += 1
            run.advance()
            episode = recorder.step(np.asarray(action, np.float32), obs, reward, terminated, truncated)
            if episode is not None:
                run_state.writer.add_episode(episode)
                run_state.replay.add(episode)
                run_state.returns.append(episode_return)
                run.log(run_state.env_steps, episode_return=episode_return)
                obs, _ = run_state.env.reset(seed=config.seed + len(run_state.returns))
                if run_state.env_steps < config.expert_steps:  # the expert drives this episode too
                    begin_episode(expert, run_state.env, config.seed + len(run_state.returns))
                recorder.start(obs)
                run_state.agent.reset()
                episode_return = 0.0
            if run_state.env_steps >= config.prefill and run_state.replay.episodes:
                credit += 1.0 / per_update
                while credit >= 1.0:
                    metrics = run_state.update()
                    credit -= 1.0
                    if run_state.updates % 25 == 1:  # the first update, then every 25th
                        run.log(run_state.env_steps, **metrics)
            if run_state.env_steps % config.checkpoint_every == 0:
                run_state.checkpoint(done=False)
    run_state.checkpoint(done=True)
    return PretrainResult(run_state.env_steps, run_state.updates, run_state.returns, time.monotonic() - start)


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
    keys = [key for key in sequences if key not in ("action", "is_first", "is_last", "is_terminal", "reward")]
    device = model.device()
    generator = torch.Generator(device=device).manual_seed(seed)
    parts: list[State] = []
    N = sequences["is_first"].shape[0]
    with torch.no_grad():
        for begin in range(0, N, 64):
            chunk = {key: value[begin : begin + 64].to(device) for key, value in sequences.items()}
            embed = model.embed({key: chunk[key] for key in keys})
            out = observe(
                model, prev_actions(chunk["action"].float()), chunk["is_first"].bool(), embed=embed, generator=generator
            )
            parts.append({key: value.flatten(0, 1) for key, value in out["states"].items()})
    return {key: torch.cat([part[key] for part in parts]) for key in parts[0]}


def train_policy(
    model: WorldModel,
    sequences: Mapping[str, Tensor],
    config: PolicyTrainConfig | None = None,
    *,
    ac_config: ActorCriticConfig | None = None,
    log_dir: str | Path | None = None,
    quiet: bool = False,
) -> ActorCritic:
    """Train a re-initialised actor-critic in ``model``'s imagination (ReDRAW's step 3).

    Imagination starts from posterior states of ``sequences`` (the target data); rewards come
    from the model's frozen reward head, so the data needs no rewards.
    """
    config = config or PolicyTrainConfig()
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    bank = start_bank(model, sequences, seed=config.seed)
    actor_critic = ActorCritic(model.feature_size, model.action_size, ac_config).to(model.device())
    with RunLogger(log_dir, config.steps, "train policy", quiet=quiet) as run:
        for update in range(1, config.steps + 1):
            metrics = actor_critic.train_step(model, _subsample(bank, config.starts, generator), generator=generator)
            run.advance()
            if update % 50 == 0 or update == config.steps:
                run.log(update, **metrics)
    return actor_critic
