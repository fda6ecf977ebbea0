"""The coverage alarm: per-step surprise (how badly the corrected prior predicted the new observation), its
threshold calibrated on held-out target data, and which episodes of a dataset leave the model's coverage.

The same score runs onboard in the exported ONNX graph (``export.py``, ``surprise=True``); the report is in
``diagnose.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from latent_residual import distributions
from latent_residual.adapters import ResidualWorldModel, ensemble_members
from latent_residual.contract import WorldModel
from latent_residual.errors import ConfigError
from latent_residual.rollout import CHUNK, embed_sequences, observation_keys, observe, prev_actions

#: Default quantile of held-out surprise the threshold sits at.
DEFAULT_QUANTILE = 0.99
#: Default consecutive steps over the threshold before the alarm fires (offline, and the controller's default).
DEFAULT_CONSECUTIVE = 3


def step_surprise(model: WorldModel, prior_logits: Tensor, post_logits: Tensor, is_first: Tensor) -> Tensor:
    """KL(posterior of the new observation || prior predicted from the previous step), summed over
    groups: (...) from logits (..., G, C); 0 where ``is_first`` (the prior there knows nothing)."""
    post_log = distributions.log_probs(post_logits, model.posterior_unimix)
    prior_log = distributions.log_probs(prior_logits, model.prior_unimix)
    return torch.where(
        is_first, torch.zeros_like(is_first, dtype=post_log.dtype), distributions.kl(post_log, prior_log)
    )


def _filtered_chunks(
    model: WorldModel, sequences: Mapping[str, Tensor]
) -> Iterator[tuple[Tensor, Tensor, dict[str, Any]]]:
    """Posterior-mode filtering of (N, T) sequences chunk by chunk, as the deployed policy filters:
    per chunk the previous actions (B, T, A), ``is_first`` (B, T) bool and ``observe``'s output.
    Callers iterate it under ``torch.no_grad()`` (a generator cannot hold the grad mode across its yields)."""
    embed = embed_sequences(model, sequences)  # (N, T, E)
    device = model.device()
    for start in range(0, embed.shape[0], CHUNK):
        action = prev_actions(sequences["action"][start : start + CHUNK].to(device).float())  # (B, T, A)
        is_first = sequences["is_first"][start : start + CHUNK].to(device).bool()
        yield action, is_first, observe(model, action, is_first, embed=embed[start : start + CHUNK], sample=False)


def surprise(model: WorldModel, sequences: Mapping[str, Tensor]) -> Tensor:
    """Per-step surprise (N, T) of (N, T) sequences, filtered with posterior modes as the deployed policy
    filters (so the ONNX graph's ``surprise`` output reproduces it); 0 at episode starts."""
    with torch.no_grad():
        out = [
            step_surprise(model, filtered["prior_logits"], filtered["post_logits"], is_first)
            for _, is_first, filtered in _filtered_chunks(model, sequences)
        ]
    return torch.cat(out).cpu()


def disagreement(model: WorldModel, sequences: Mapping[str, Tensor]) -> Tensor:
    """Per-step disagreement (N, T) of a residual ensemble: the mean over members of KL(member's corrected
    prior || the ensemble's prior), filtered as :func:`surprise` filters; 0 at episode starts.

    Members agree where their fit data pinned them down, so it rises where the data left them free.
    """
    if ensemble_members(model) < 2:
        raise ConfigError("disagreement needs a ResidualWorldModel whose active adapter has 2 or more members.")
    assert isinstance(model, ResidualWorldModel)  # only an adapted model has several members
    device = model.device()
    out = []
    with torch.no_grad():
        for action, is_first, filtered in _filtered_chunks(model, sequences):
            states = filtered["states"]  # each (B, T, ...): the state after each step
            B, T = is_first.shape
            previous = {key: value[:, :-1].flatten(0, 1) for key, value in states.items()}  # state at t - 1
            offsets = model.corrections(previous, action[:, 1:].flatten(0, 1))  # (M, B * (T - 1), G, C)
            ensemble = filtered["prior_logits"][:, 1:].flatten(0, 1)  # the prior with the members' mean offset
            members = ensemble + offsets - offsets.mean(0)  # (M, B * (T - 1), G, C)
            unimix = model.prior_unimix
            kl = distributions.kl(distributions.log_probs(members, unimix), distributions.log_probs(ensemble, unimix))
            score = torch.cat([torch.zeros(B, 1, device=device), kl.mean(0).reshape(B, T - 1)], 1)
            out.append(torch.where(is_first, torch.zeros_like(score), score))
    return torch.cat(out).cpu()


def episode_surprise(model: WorldModel, episodes: Sequence[Mapping[str, np.ndarray]]) -> list[np.ndarray]:
    """Per-step surprise of whole episodes (each a dict of (T, ...) arrays, as ``Dataset.episodes``).

    One (T,) array each.
    """
    return per_episode(surprise, model, episodes)


def per_episode(
    score: Callable[[WorldModel, Mapping[str, Tensor]], Tensor],
    model: WorldModel,
    episodes: Sequence[Mapping[str, np.ndarray]],
) -> list[np.ndarray]:
    """A per-step ``score`` (:func:`surprise` or :func:`disagreement`) of whole episodes, one (T,) array each."""
    if not episodes:
        raise ConfigError("Scoring episodes needs at least one episode.")
    keys = [*observation_keys(episodes[0]), "action", "is_first"]
    by_length: dict[int, list[int]] = {}
    for index, episode in enumerate(episodes):
        by_length.setdefault(len(episode["is_first"]), []).append(index)
    scores: dict[int, np.ndarray] = {}
    for indices in by_length.values():  # equal lengths batch together
        batch = {key: torch.from_numpy(np.stack([episodes[i][key] for i in indices])) for key in keys}
        batch["is_first"] = batch["is_first"].bool()
        batch["is_first"][:, 0] = True
        for i, row in zip(indices, score(model, batch).numpy()):
            scores[i] = row
    return [scores[index] for index in range(len(episodes))]


def calibrate_threshold(scores: Sequence[np.ndarray], quantile: float = DEFAULT_QUANTILE) -> float:
    """The ``quantile`` of the surprise of every non-start step in ``scores`` (held-out target episodes)."""
    if not 0.0 < quantile < 1.0:
        raise ConfigError(f"quantile must be in (0, 1), got {quantile!r}.")
    steps = np.concatenate([score[1:] for score in scores])
    if steps.size == 0 or not np.all(np.isfinite(steps)):
        raise ConfigError("calibrate_threshold needs finite surprise scores of episodes longer than one step.")
    return float(np.quantile(steps, quantile))


def alarm(score: np.ndarray, threshold: float, consecutive: int = DEFAULT_CONSECUTIVE) -> np.ndarray:
    """(T,) bool: true from the step where ``score`` has exceeded ``threshold`` ``consecutive`` steps in
    a row, for as long as it stays above (what the onboard controller does)."""
    if consecutive < 1:
        raise ConfigError(f"consecutive must be >= 1, got {consecutive!r}.")
    over = score > threshold
    run = np.zeros(len(score), dtype=int)
    count = 0
    for t, above in enumerate(over):
        count = count + 1 if above else 0
        run[t] = count
    return run >= consecutive


@dataclass
class EpisodeCoverage:
    """One episode against the threshold: the share of steps above it and where the alarm fires first."""

    index: int
    steps: int
    over_rate: float
    alarm_rate: float
    first_alarm: int | None

    @property
    def flagged(self) -> bool:
        return self.first_alarm is not None


def coverage(
    scores: Sequence[np.ndarray], threshold: float, consecutive: int = DEFAULT_CONSECUTIVE
) -> tuple[list[EpisodeCoverage], dict[str, float]]:
    """Each episode's coverage and the totals: ``over_rate`` (share of non-start steps above the
    threshold), ``alarm_rate`` (share of steps with the alarm on) and ``flagged`` (share of episodes)."""
    if not math.isfinite(threshold):
        raise ConfigError(f"threshold must be finite, got {threshold!r}.")
    rows, over, alarmed, steps = [], 0, 0, 0
    for index, score in enumerate(scores):
        fired = alarm(score, threshold, consecutive)
        above = int((score[1:] > threshold).sum())
        where = np.flatnonzero(fired)
        rows.append(
            EpisodeCoverage(
                index,
                len(score),
                above / max(len(score) - 1, 1),
                float(fired.mean()),
                int(where[0]) if where.size else None,
            )
        )
        over, alarmed, steps = over + above, alarmed + int(fired.sum()), steps + len(score)
    totals = {
        "over_rate": over / max(steps - len(rows), 1),
        "alarm_rate": alarmed / max(steps, 1),
        "flagged": sum(row.flagged for row in rows) / max(len(rows), 1),
    }
    return rows, totals
