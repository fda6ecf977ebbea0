"""Choosing a policy without real reward: candidates (seeds, and snapshots along training) scored in the corrected
model from posterior states of held-out target data, less the residual ensemble's disagreement on the way; with
several fits of the model, each candidate is scored in every fit's model and its lowest score counts.

Training the candidates is ``policy_training.py``; the criterion reads the model and reward-free data only.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from latent_residual import distributions
from latent_residual.actor_critic import ActorCritic
from latent_residual.adapters import ResidualWorldModel, fitted_independently
from latent_residual.contract import State, WorldModel
from latent_residual.errors import ConfigError
from latent_residual.rollout import imagine, start_bank, subsample_states

#: What the score is, in words, for results files.
CRITERION = (
    "imagined return of the deterministic actor from posterior states of the held-out target sequences, "
    "discounted and continuation-weighted, minus penalty x the disagreement of a residual ensemble whose members "
    "were fitted independently (nats per step; zero otherwise); with several fits, the lowest of the fits' scores"
)


@dataclass
class SelectionConfig:
    """How candidates are scored (how many there are is ``PolicyTrainConfig``'s ``candidates`` and ``snapshots``)."""

    score_holdout: float = field(
        default=0.1, metadata={"help": "Fraction of sequences (the last) whose posterior states start the scoring."}
    )
    score_starts: int = field(default=512, metadata={"help": "Held-out states each candidate is scored from."})
    score_horizon: int = field(default=50, metadata={"help": "Imagined steps of each scoring rollout."})
    score_penalty: float = field(
        default=1.0, metadata={"help": "Weight of the ensemble's disagreement (nats a step) against the reward."}
    )
    score_seed: int = field(
        default=0, metadata={"help": "Seed of the scoring rollouts (the same for every candidate)."}
    )

    def __post_init__(self) -> None:
        for name in ("score_starts", "score_horizon"):
            if getattr(self, name) < 1:
                raise ConfigError(f"SelectionConfig.{name} must be >= 1, got {getattr(self, name)}.")
        if not 0.0 < self.score_holdout < 1.0:
            raise ConfigError(f"SelectionConfig.score_holdout must be in (0, 1), got {self.score_holdout}.")
        if self.score_penalty < 0.0:
            raise ConfigError(f"SelectionConfig.score_penalty must be >= 0, got {self.score_penalty}.")


@dataclass
class CandidateScore:
    """One candidate: the fit it was trained in, its seed and update, and its criterion: ``score`` is the lowest of
    ``scores_by_fit``, and ``imagined_return`` and ``disagreement`` are that fit's."""

    fit: int
    seed: int
    update: int
    imagined_return: float
    disagreement: float
    score: float
    scores_by_fit: list[float]


@dataclass
class Selection:
    """The chosen candidate's actor-critic, every candidate's score and actor-critic."""

    actor_critic: ActorCritic
    chosen: int
    scores: list[CandidateScore]
    config: SelectionConfig
    #: Every candidate's actor-critic, in the order of ``scores``.
    candidates: list[ActorCritic]

    def to_dict(self) -> dict[str, Any]:
        return {
            "criterion": CRITERION,
            "config": dataclasses.asdict(self.config),
            "chosen": self.chosen,
            "candidates": [dataclasses.asdict(score) for score in self.scores],
        }


def held_out_starts(model: WorldModel, sequences: Mapping[str, Tensor], config: SelectionConfig) -> State:
    """``config.score_starts`` posterior states of the last ``score_holdout`` fraction of the (N, T) sequences."""
    N = sequences["is_first"].shape[0]
    held = max(1, round(N * config.score_holdout))
    tail = {key: value[N - held :] for key, value in sequences.items() if key != "reward"}
    bank = start_bank(model, tail, seed=config.score_seed)
    return subsample_states(bank, config.score_starts, torch.Generator().manual_seed(config.score_seed))


def _disagreement(model: WorldModel, states: State, actions: Tensor) -> Tensor:
    """Per step (B, H): the ensemble members' mean KL from their mean prediction, summed over groups; zero
    without an ensemble whose members were each fitted to the data (``ensemble_fit="independent"``)."""
    B, H = actions.shape[:2]
    if not fitted_independently(model):  # members fitted through their mean disagree everywhere, data or not
        return actions.new_zeros(B, H)
    assert isinstance(model, ResidualWorldModel)  # only an adapted model has several members
    flat = {key: value.flatten(0, 1) for key, value in states.items()}
    logits = model.member_prior_logits(flat, actions.flatten(0, 1))  # (members, B * H, groups, classes)
    members = distributions.log_probs(logits, model.prior_unimix)
    mean = torch.logsumexp(members, 0) - math.log(members.shape[0])  # log of the members' mean probabilities
    return distributions.kl(members, mean.expand_as(members)).mean(0).reshape(B, H)


@torch.no_grad()
def score_policy(
    model: WorldModel, actor_critic: ActorCritic, starts: State, config: SelectionConfig
) -> tuple[float, float]:
    """The deterministic actor's imagined return and ensemble disagreement from ``starts``, both discounted by
    the actor-critic's gamma and weighted by the predicted continuation."""
    generator = torch.Generator(device=model.device()).manual_seed(config.score_seed)
    rollout = imagine(
        model,
        starts,
        lambda features: actor_critic.act(features, sample=False),
        config.score_horizon,
        generator=generator,
        keep_states=True,
    )
    features = rollout["features"]  # (B, H + 1, F)
    B, H1, F = features.shape
    arrived = features[:, 1:].reshape(B * (H1 - 1), F)
    reward = model.reward(arrived).reshape(B, H1 - 1)
    cont = model.continuation(arrived).reshape(B, H1 - 1)
    discount = actor_critic.config.gamma ** torch.arange(H1 - 1, dtype=reward.dtype, device=reward.device)
    # A step counts as much as the chance that the episode is still running when it is reached.
    alive = torch.cumprod(torch.cat([torch.ones_like(cont[:, :1]), cont[:, :-1]], 1), 1)
    weight = discount * alive  # (B, H)
    disagreement = _disagreement(model, rollout["states"], rollout["actions"])
    imagined = (weight * reward).sum(1).mean()
    spread = (weight * disagreement).sum(1).mean()
    imagined, spread = torch.stack([imagined, spread]).tolist()
    if not (math.isfinite(imagined) and math.isfinite(spread)):
        raise ValueError(f"score_policy: non-finite imagined return {imagined} or disagreement {spread}.")
    return imagined, spread


def choose(
    models: Sequence[WorldModel],
    candidates: list[tuple[int, int, int, ActorCritic]],
    sequences: Mapping[str, Tensor],
    config: SelectionConfig,
) -> Selection:
    """Score ``candidates`` (fit, seed, update, actor-critic) in every one of ``models`` (the fits of one corrected
    model, each a candidate's trainer) from the held-out part of ``sequences`` and pick the highest lowest score
    (the first of equals): a policy that exploits one fit's error scores low in the others'. The sequences'
    rewards, if any, are not read."""
    starts = [held_out_starts(model, sequences, config) for model in models]
    scores = []
    for fit, seed, update, actor_critic in candidates:
        by_fit = [score_policy(model, actor_critic, start, config) for model, start in zip(models, starts)]
        totals = [imagined - config.score_penalty * spread for imagined, spread in by_fit]
        worst = min(range(len(totals)), key=totals.__getitem__)
        scores.append(CandidateScore(fit, seed, update, *by_fit[worst], totals[worst], totals))
    chosen = max(range(len(scores)), key=lambda index: scores[index].score)
    return Selection(candidates[chosen][3], chosen, scores, config, [candidate[3] for candidate in candidates])
