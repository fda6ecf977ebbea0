"""Source recipes: how a simulation's world model and policy are built offline from a data plan, and the
one function that builds them (collect the plan, train the world model, train the policy in imagination).

A recipe is registered by the environment's plugin (``register(..., recipe={...})``); online pretraining
with exploration is in ``pretraining.py``, the offline training loop itself in ``model_training.py``.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import json
import os
import platform
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from latent_residual.actor_critic import ActorCritic, ActorCriticConfig, save_actor_critic
from latent_residual.checkpoints import save_world_model
from latent_residual.config import config_to_dict
from latent_residual.contract import WorldModel
from latent_residual.errors import ConfigError, NameNotFound, RegistrationError
from latent_residual.registry.lookup import env_spec, make_backbone, make_env, source_backbone
from latent_residual.serialization import write_text
from latent_residual.version import __version__
from latent_residual.workflow.data.collection import collect
from latent_residual.workflow.data.datasets import Dataset, load_dataset
from latent_residual.workflow.deployment.policy import Policy
from latent_residual.workflow.experiments.evaluation import evaluate
from latent_residual.workflow.training.model_training import train_world_model
from latent_residual.workflow.training.policy_training import PolicyTrainConfig, train_policy
from latent_residual.workflow.training.pretraining import ACTOR_CRITIC_NAME

PROVENANCE_NAME = "provenance.json"
#: Where the simulation policy is scored after building: the seeds every comparison evaluates on.
EVAL_EPISODES, EVAL_SEED = 10, 10_000
#: Where a build with policy rounds chooses among them: other episodes than the reported ones.
SELECT_SEED = 20_000
#: A data plan's behaviours: collected before training, or by the policy in rounds after it.
BEHAVIOURS = ("expert", "random", "policy")


@dataclass(frozen=True)
class DataStep:
    """One step of a data plan: ``behaviour`` with Gaussian action ``noise`` until the dataset holds ``until``
    transitions. "expert" and "random" steps collect before any training; a "policy" step is a round of
    Dreamer's loop: the current simulation policy collects, then the world model and the policy train on."""

    behaviour: str
    noise: float
    until: int


@dataclass(frozen=True)
class SourceRecipe:
    """What to collect in the simulation and how long to train on it; the defaults fit a 2-core CPU.

    Diverse data (an expert at two noise levels plus random actions) is the paper's advice for a
    model that must later be corrected on another robot's data. "policy" steps at the end of the plan
    add the policy's own states, where a policy trained offline finds the model's errors; each such
    round trains the world model ``round_model_updates`` and the policy ``round_policy_updates`` more.
    """

    data_plan: tuple[DataStep, ...]
    backbone: str = ""  # empty: the backbone the environment registers
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    actor_critic: dict[str, Any] = field(default_factory=dict)  # ActorCriticConfig fields
    batch_size: int = 32
    seq_len: int = 16
    model_lr: float = 3e-4
    model_updates: int = 14_000
    policy_updates: int = 1500
    round_model_updates: int = 2000
    round_policy_updates: int = 500
    policy_starts: int = 256
    policy_seq_len: int = 16
    workers: int = 1  # processes sharing each update's batch and starts (train_world_model, PolicyTrainConfig)

    def __post_init__(self) -> None:
        plan = tuple(step if isinstance(step, DataStep) else DataStep(*step) for step in self.data_plan)
        object.__setattr__(self, "data_plan", plan)
        if not plan or any(step.behaviour not in BEHAVIOURS or step.noise < 0 for step in plan):
            raise ConfigError(
                "SourceRecipe.data_plan: expected (behaviour 'expert'|'random'|'policy', noise >= 0, until) steps, "
                f"got {plan!r}."
            )
        offline = [step.behaviour != "policy" for step in plan]
        if not offline[0] or sorted(offline, reverse=True) != offline:
            raise ConfigError(
                "SourceRecipe.data_plan: 'policy' steps come last, after at least one 'expert' or 'random' step "
                f"(the first policy is trained on that data), got {plan!r}."
            )
        if any(later.until <= earlier.until for earlier, later in zip(plan, plan[1:])) or plan[0].until < 1:
            raise ConfigError(f"SourceRecipe.data_plan: each step's 'until' must exceed the one before, got {plan!r}.")
        counts = (self.batch_size, self.seq_len, self.model_updates, self.policy_updates, self.policy_starts)
        if min(*counts, self.round_model_updates, self.round_policy_updates) < 1:
            raise ConfigError(
                "SourceRecipe: batch_size, seq_len, model_updates, policy_updates, round_model_updates, "
                "round_policy_updates and policy_starts must be >= 1."
            )
        if self.workers < 1 or self.batch_size % self.workers or self.policy_starts % self.workers:
            raise ConfigError(
                f"SourceRecipe.workers ({self.workers}) must be >= 1 and divide batch_size ({self.batch_size}) "
                f"and policy_starts ({self.policy_starts}) evenly."
            )
        ActorCriticConfig(**self.actor_critic)  # an unknown or bad field fails here, not after the data is collected


def source_recipe(env_id: str, backbone: str | None = None, **overrides: Any) -> SourceRecipe:
    """The recipe ``env_id``'s plugin registered for ``backbone`` (its default backbone when ``None``), with
    ``overrides`` (recipe fields) on top."""
    spec = env_spec(env_id)
    if not spec.recipe:
        raise NameNotFound(
            f"Environment {env_id!r} has no source recipe (plugin {spec.plugin!r} registered none); register one with "
            "register(..., recipe={...}) (see docs/plugins.md), or pretrain online with `latent-residual pretrain`."
        )
    recipes = spec.recipe
    if "data_plan" in recipes:  # one recipe, for the backbone it names (the environment's when it names none)
        recipes = {recipes.get("backbone") or source_backbone(env_id): recipes}
    backbone = backbone or (next(iter(recipes)) if len(recipes) == 1 else source_backbone(env_id))
    if backbone not in recipes:
        names = sorted(recipes)
        registered = f"one for {names[0]!r}" if len(names) == 1 else f"recipes for {names}"
        raise NameNotFound(
            f"Environment {env_id!r} has no source recipe for backbone {backbone!r}; its plugin ({spec.plugin!r}) "
            f"registered {registered}."
        )
    fields = {**recipes[backbone], "backbone": backbone}
    try:
        return SourceRecipe(**{**fields, **overrides})
    except TypeError as exc:
        raise RegistrationError(
            f"Environment {env_id!r} (plugin {spec.plugin!r}): recipe is malformed: {exc}."
        ) from None


def _commit() -> str | None:
    """The git commit of the library's checkout, when it runs from one."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def build_source(
    env_id: str,
    out: str | Path,
    *,
    recipe: SourceRecipe | None = None,
    data_dir: str | Path | None = None,
    seed: int = 0,
    command: str = "",
    quiet: bool = False,
    say=print,
) -> dict[str, Any]:
    """Build ``env_id``'s source model by its recipe into ``out`` (``world_model/``, the simulation policy
    and ``provenance.json``) and return the provenance, with the policy's return in the simulation.

    The data plan is collected into ``data_dir`` (default ``out/sim_data``), resumably; collection, the
    world model and the policy are all seeded by ``seed``.
    """
    recipe = recipe or source_recipe(env_id)
    if env_spec(env_id).expert is None and any(step.behaviour == "expert" for step in recipe.data_plan):
        raise ConfigError(
            f"The recipe's data plan collects with the scripted expert, but {env_id!r} has no expert; "
            "give it a recipe without 'expert' steps (random actions, then 'policy' rounds)."
        )
    if not recipe.backbone:
        recipe = dataclasses.replace(recipe, backbone=source_backbone(env_id))
    out = Path(out)
    data_dir = Path(data_dir) if data_dir is not None else out / "sim_data"
    started = time.monotonic()
    commit = _commit()  # the code that runs is the checkout's now, not after an hour's build
    rounds = [step for step in recipe.data_plan if step.behaviour == "policy"]
    dataset = _collect_plan(env_id, recipe.data_plan[: len(recipe.data_plan) - len(rounds)], data_dir, seed, quiet, say)
    model, actor_critic = _train_source(env_id, recipe, dataset, out, seed, quiet, say)
    # Rounds can lose what an earlier one learnt, so the build keeps the best pair of model and policy, chosen
    # on episodes of their own: the reported score's episodes choose nothing.
    curve = [_score(env_id, model, actor_critic, SELECT_SEED, dataset.transitions, say)]
    kept = (0, copy.deepcopy(model), copy.deepcopy(actor_critic))
    round_updates = (recipe.round_model_updates, recipe.round_policy_updates)
    for number, step in enumerate(rounds, 1):
        say(f"round {number} of {len(rounds)}: the policy (noise {step.noise}) collects until {step.until} transitions")
        policy = Policy(model, actor_critic.actor)
        collect(env_id, policy, data_dir, transitions=step.until, noise=step.noise, seed=seed, quiet=quiet)
        dataset = load_dataset(data_dir, max_transitions=step.until)
        # Both parts continued in place on the data so far (the policy's own episodes included).
        logs = out / "logs" / f"round{number}"
        _train(model, actor_critic, recipe, dataset, round_updates, logs, seed + number, quiet, say)
        curve.append(_score(env_id, model, actor_critic, SELECT_SEED, dataset.transitions, say))
        if curve[-1]["return_mean"] > curve[kept[0]]["return_mean"]:
            kept = (number, copy.deepcopy(model), copy.deepcopy(actor_critic))
    number, model, actor_critic = kept
    if rounds:
        say(f"keeping round {number}'s model and policy")
    updates = recipe.model_updates + number * recipe.round_model_updates
    save_world_model(model, out / "world_model", extra={"model_updates": updates, "round": number})
    save_actor_critic(actor_critic, out / ACTOR_CRITIC_NAME)
    score = _score(env_id, model, actor_critic, EVAL_SEED, curve[number]["transitions"], say)
    provenance = {
        "what": f"{recipe.backbone} world model and policy built by {env_id}'s source recipe",
        "command": command,
        "version": __version__,
        "commit": commit,
        "date": datetime.date.today().isoformat(),
        "machine": f"{os.cpu_count()}-core {platform.machine()} CPU, {torch.get_num_threads()} torch thread(s)",
        "seed": seed,
        "recipe": config_to_dict(recipe),
        "seconds": round(time.monotonic() - started),
        "simulation_policy_in_simulation": score,
        # The policy after the offline training (round 0) and after each policy round, scored on the choosing
        # episodes, by the transitions it was built on; and which round was kept.
        "learning_curve": curve,
        "kept_round": number,
    }
    write_text(out / PROVENANCE_NAME, json.dumps(provenance, indent=2) + "\n")
    return provenance


def _score(
    env_id: str, model: WorldModel, actor_critic: ActorCritic, seed: int, transitions: int, say
) -> dict[str, Any]:
    """The simulation policy's return over ``EVAL_EPISODES`` episodes from ``seed``, with the data it was built on."""
    result = evaluate(Policy(model, actor_critic.actor), env_id, episodes=EVAL_EPISODES, seed=seed).to_dict()
    say(
        f"simulation policy after {transitions} transitions, episodes from seed {seed}: "
        f"{result['return_mean']:.1f} ± {result['return_std']:.1f}"
    )
    return {"transitions": transitions, "seed": seed, **result}


def _collect_plan(env_id: str, steps: tuple[DataStep, ...], data_dir: Path, seed: int, quiet: bool, say) -> Dataset:
    """Collect the data plan's ``steps`` into ``data_dir`` (each step resumes where the last stopped), and return
    their data alone: a build resumed after its policy rounds had collected trains on what a fresh one does."""
    for step in steps:
        say(f"collecting {step.behaviour} (noise {step.noise}) until {step.until} transitions -> {data_dir}")
        collect(env_id, step.behaviour, data_dir, transitions=step.until, noise=step.noise, seed=seed, quiet=quiet)
    return load_dataset(data_dir, max_transitions=steps[-1].until)


def _train_source(
    env_id: str, recipe: SourceRecipe, dataset: Dataset, out: Path, seed: int, quiet: bool, say
) -> tuple[WorldModel, ActorCritic]:
    """A new world model trained offline on ``dataset`` and a new policy in its imagination (logs under ``out``)."""
    env = make_env(env_id)
    torch.manual_seed(seed)
    model = make_backbone(recipe.backbone, env.observation_space, env.action_space, **recipe.backbone_kwargs)
    env.close()
    actor_critic = _train(
        model, None, recipe, dataset, (recipe.model_updates, recipe.policy_updates), out / "logs", seed, quiet, say
    )
    return model, actor_critic


def _train(
    model: WorldModel, actor_critic: ActorCritic | None, recipe: SourceRecipe, dataset: Dataset,
    updates: tuple[int, int], logs: Path, seed: int, quiet: bool, say,
) -> ActorCritic:  # fmt: skip
    """Train ``model`` on ``dataset``, then ``actor_critic`` (a new one when ``None``) in its imagination, by
    ``updates`` (world model, policy); logs under ``logs``."""
    say(f"training the world model: {updates[0]} updates")
    train_world_model(
        model, dataset.episodes, updates=updates[0], batch_size=recipe.batch_size, seq_len=recipe.seq_len,
        lr=recipe.model_lr, seed=seed, log_dir=logs / "world_model", quiet=quiet, workers=recipe.workers,
    )  # fmt: skip
    say(f"training the simulation policy in imagination: {updates[1]} updates")
    policy_config = PolicyTrainConfig(steps=updates[1], starts=recipe.policy_starts, seed=seed, workers=recipe.workers)
    return train_policy(
        model, _starts(dataset, recipe), policy_config, ac_config=ActorCriticConfig(**recipe.actor_critic),
        actor_critic=actor_critic, log_dir=logs / "policy", quiet=quiet,
    )  # fmt: skip


def _starts(dataset: Dataset, recipe: SourceRecipe) -> dict[str, torch.Tensor]:
    """The windows imagination starts from, without rewards: the policy's come from the model's reward head."""
    sequences = dataset.sequences(recipe.policy_seq_len)
    sequences.pop("reward")
    return sequences
