"""Fitting a residual adapter on target sequences: the ReDRAW loss, a held-out split, early stopping.

Sequences come from ``datasets.py`` (or any dict of (N, T, ...) tensors); the adapter is in ``adapters.py``.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from latent_residual import latent
from latent_residual.adapters import ResidualWorldModel
from latent_residual.errors import ConfigError, DatasetError
from latent_residual.metrics import RunLogger
from latent_residual.rollout import observe, prev_actions


@dataclass
class FitConfig:
    """Settings for fitting a residual. Defaults follow the ReDRAW paper where it gives them."""

    steps: int = field(default=2000, metadata={"help": "Maximum optimiser steps."})
    lr: float = field(default=1e-2, metadata={"help": "Adam learning rate (paper: 1e-2)."})
    batch_size: int = field(default=16, metadata={"help": "Sequences per batch (paper: 16)."})
    holdout: float = field(default=0.1, metadata={"help": "Fraction of sequences held out (the last ones)."})
    eval_every: int = field(default=50, metadata={"help": "Steps between held-out evaluations."})
    patience: int = field(
        default=8, metadata={"help": "Evaluations without improvement before stopping early; 0 never stops."}
    )
    seed: int = field(default=0, metadata={"help": "Seed for batching and latent samples."})

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "eval_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"FitConfig.{name} must be an integer >= 1, got {value!r}.")
        if not 0.0 < self.holdout < 1.0:
            raise ConfigError(f"FitConfig.holdout must be in (0, 1), got {self.holdout!r}.")
        if self.lr <= 0:
            raise ConfigError(f"FitConfig.lr must be > 0, got {self.lr!r}.")
        if self.patience < 0:
            raise ConfigError(f"FitConfig.patience must be >= 0, got {self.patience!r}.")


@dataclass
class FitResult:
    """What a fit achieved; KLs are nats per step, averaged over non-start steps of held-out data."""

    held_out_kl_base: float
    held_out_kl_best: float
    best_step: int
    steps: int
    seconds: float
    history: list[dict[str, float]]


def _check_sequences(sequences: Mapping[str, Tensor], obs_keys: list[str]) -> tuple[int, int]:
    for key in ("action", "is_first", *obs_keys):
        if key not in sequences:
            raise DatasetError(f"sequences lack key {key!r}; they have {sorted(sequences)}.")
    N, T = sequences["is_first"].shape[:2]
    for key in ("action", *obs_keys):
        if tuple(sequences[key].shape[:2]) != (N, T):
            raise DatasetError(
                f"sequences[{key!r}] has leading shape {tuple(sequences[key].shape[:2])}, expected ({N}, {T})."
            )
    return N, T


def _embed_all(model: ResidualWorldModel, sequences: Mapping[str, Tensor], obs_keys: list[str]) -> Tensor:
    """Embed every sequence once (the encoder is frozen), in chunks to bound memory."""
    device = model.base.device()
    chunks = []
    N = sequences["is_first"].shape[0]
    for start in range(0, N, 64):
        obs = {key: sequences[key][start : start + 64].to(device) for key in obs_keys}
        chunks.append(model.embed(obs))
    return torch.cat(chunks)  # (N, T, E)


def _kl(model: ResidualWorldModel, cached: Tensor, prev_action: Tensor, is_first: Tensor, generator) -> Tensor:
    """Mean KL(sg(posterior) || corrected prior) over non-start steps (the ReDRAW loss)."""
    key = "embed" if model.posterior_uses_deter else "post_logits"
    out = observe(model, prev_action, is_first, generator=generator, **{key: cached})
    post_log = latent.log_probs(out["post_logits"], model.posterior_unimix).detach()
    prior_log = latent.log_probs(out["prior_logits"], model.prior_unimix)
    return latent.masked_mean(latent.kl(post_log, prior_log), ~is_first.bool())


def fit_residual(
    model: ResidualWorldModel,
    sequences: Mapping[str, Tensor],
    config: FitConfig | None = None,
    *,
    log_dir: str | Path | None = None,
    quiet: bool = False,
    data_summary: dict[str, Any] | None = None,
) -> FitResult:
    """Train the active adapter of ``model`` on target sequences; restore the best held-out weights.

    :param sequences: (N, T, ...) tensors: each observation key, ``action`` (the action taken
        at each step) and ``is_first``. Rewards are not needed. The last ``holdout`` fraction of
        sequences is held out for early stopping.
    :param data_summary: Provenance recorded in the adapter file (dataset path, env id, ...).
    """
    config = config or FitConfig()
    if model.active_adapter is None:
        raise ConfigError("fit_residual() needs an active adapter; attach_residual() first.")
    params = model.trainable_parameters()
    if not params:
        raise ConfigError(
            f"Adapter {model.active_adapter!r} is frozen; load it with trainable=True to fit it further."
        )
    obs_keys = [key for key in sequences if key not in ("action", "is_first", "is_last", "is_terminal", "reward")]
    N, T = _check_sequences(sequences, obs_keys)
    n_held = max(1, int(round(N * config.holdout)))
    if N - n_held < 1:
        raise DatasetError(f"{N} sequences are too few to hold out {config.holdout:.0%}; collect more data.")
    device = model.base.device()
    with torch.no_grad():
        cached = _embed_all(model, sequences, obs_keys)
        if not model.posterior_uses_deter:
            cached = model.posterior({}, cached.flatten(0, 1)).reshape(N, T, model.latent.groups, model.latent.classes)
    prev_action = prev_actions(sequences["action"].to(device).float())
    is_first = sequences["is_first"].to(device).bool()
    train_idx = torch.arange(N - n_held, device=device)
    held_idx = torch.arange(N - n_held, N, device=device)

    def held_out_kl() -> float:
        generator = torch.Generator(device=device).manual_seed(config.seed + 1)
        total, weight = 0.0, 0.0
        with torch.no_grad():
            for start in range(0, len(held_idx), 64):
                idx = held_idx[start : start + 64]
                steps = (~is_first[idx]).sum().item()
                total += _kl(model, cached[idx], prev_action[idx], is_first[idx], generator).item() * steps
                weight += steps
        return total / max(weight, 1.0)

    with model.disable_adapters():
        base_kl = held_out_kl()
    optimiser = torch.optim.Adam(params, lr=config.lr, eps=1e-8)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    best_kl, best_step, best_state = held_out_kl(), 0, copy.deepcopy(model.residuals[model.active_adapter].state_dict())
    history = [{"step": 0, "held_out_kl": best_kl}]
    stale = 0
    start = time.monotonic()
    model.train()
    with RunLogger(log_dir, config.steps, f"fit residual {model.active_adapter}", quiet=quiet) as run:
        run.log(0, held_out_kl=best_kl, held_out_kl_base=base_kl)
        step = 0
        for step in range(1, config.steps + 1):
            pick = train_idx[torch.randint(len(train_idx), (config.batch_size,), generator=generator, device=device)]
            loss = _kl(model, cached[pick], prev_action[pick], is_first[pick], generator)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            run.advance()
            if step % config.eval_every == 0 or step == config.steps:
                kl_now = held_out_kl()
                history.append({"step": step, "train_kl": loss.item(), "held_out_kl": kl_now})
                run.log(step, train_kl=loss.item(), held_out_kl=kl_now)
                if kl_now < best_kl:
                    best_kl, best_step, stale = kl_now, step, 0
                    best_state = copy.deepcopy(model.residuals[model.active_adapter].state_dict())
                else:
                    stale += 1
                    if config.patience and stale >= config.patience:
                        break
    model.eval()
    model.residuals[model.active_adapter].load_state_dict(best_state)
    seconds = time.monotonic() - start
    model.data_summaries[model.active_adapter] = {
        **(data_summary or {}),
        "sequences": N,
        "sequence_length": T,
        "transitions": N * T,
        "held_out_sequences": n_held,
        "held_out_kl_base": base_kl,
        "held_out_kl_best": best_kl,
        "best_step": best_step,
    }
    return FitResult(base_kl, best_kl, best_step, step, seconds, history)
