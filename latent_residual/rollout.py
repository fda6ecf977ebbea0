"""Generic rollouts over the world-model contract: ``observe`` filters data, ``imagine`` dreams ahead,
``posterior_states`` filters whole datasets in chunks.

They work for any ``WorldModel``, adapted or not; training losses are in ``fitting.py`` and the backbones.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from latent_residual import distributions
from latent_residual.contract import State, WorldModel

#: Keys of a batch of sequences that are not observations.
NON_OBSERVATION_KEYS = ("action", "is_first", "is_last", "is_terminal", "reward")
#: Sequences per chunk when a whole dataset goes through the model (bounds the memory used).
CHUNK = 64


def observation_keys(batch: Mapping[str, Tensor]) -> list[str]:
    """The keys of ``batch`` that hold observations, in order."""
    return [key for key in batch if key not in NON_OBSERVATION_KEYS]


def _reset_where(is_first: Tensor, initial: State, state: State) -> State:
    """Replace each batch row of ``state`` by ``initial`` where ``is_first`` (B,) is true."""
    reset = {}
    for key, value in state.items():
        mask = is_first.reshape(-1, *([1] * (value.dim() - 1)))
        reset[key] = torch.where(mask, initial[key].to(value.dtype), value)
    return reset


def step(
    model: WorldModel,
    state: State,
    action: Tensor,
    is_first: Tensor,
    initial: State,
) -> tuple[Tensor, State]:
    """One dynamics step with episode resets: returns raw prior logits and the deterministic part."""
    state = _reset_where(is_first, initial, state)
    action = torch.where(is_first.unsqueeze(-1), torch.zeros_like(action), action)
    return model.dynamics(state, action, is_first)


def _batched_posterior(
    model: WorldModel, embed: Tensor | None, post_logits: Tensor | None, B: int, T: int
) -> Tensor | None:
    """Every posterior's logits (B, T, G, C) at once when the posterior ignores the deterministic
    state; None when it reads it (``observe`` then computes them step by step)."""
    if post_logits is None:
        if embed is None:
            raise ValueError("observe() needs embed or post_logits.")
        if model.posterior_uses_deter:
            return None
        return model.posterior({}, embed.reshape(B * T, -1)).reshape(B, T, model.latent.groups, model.latent.classes)
    if model.posterior_uses_deter:
        raise ValueError(
            f"{type(model).__name__}'s posterior depends on its deterministic state, so "
            "posterior logits cannot be precomputed; pass embed instead."
        )
    return post_logits


def observe(
    model: WorldModel,
    prev_action: Tensor,
    is_first: Tensor,
    *,
    embed: Tensor | None = None,
    post_logits: Tensor | None = None,
    state: State | None = None,
    sample: bool = True,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor | State]:
    """Filter a batch of sequences: posterior states with the priors that predicted them.

    :param prev_action: (B, T, A) the action taken before each step (ignored at episode starts).
    :param is_first: (B, T) bool, true at episode starts.
    :param embed: (B, T, E) observation embeddings from ``model.embed``.
    :param post_logits: (B, T, G, C) precomputed posterior logits; allowed only for models
        whose posterior ignores the deterministic state (``posterior_uses_deter`` false).
    :param state: State before the first step; the initial state when omitted.
    :param sample: Sample z from the posterior (True) or take its mode.
    :returns: ``prior_logits`` and ``post_logits`` (B, T, G, C), ``stoch`` (B, T, G, C),
        ``features`` (B, T, F), ``states`` (every state tensor stacked to (B, T, ...)), and
        ``last`` (the final state, to continue from).
    """
    B, T = is_first.shape
    post_logits = _batched_posterior(model, embed, post_logits, B, T)
    initial = model.initial_state(B)
    state = initial if state is None else state
    is_first = is_first.bool()

    def pick(post: Tensor) -> Tensor:
        prob = distributions.probs(post, model.posterior_unimix)
        return distributions.sample_one_hot(prob, generator) if sample else distributions.mode_one_hot(prob)

    # With history-free posteriors every sample can be drawn at once, outside the time loop.
    stochs = pick(post_logits) if post_logits is not None else None  # (B, T, G, C)
    # Steps where no sequence starts an episode skip the resets (one host copy for all T steps);
    # a compiled graph resets at every step instead, as a host copy would break it.
    any_first = [True] * T if torch.compiler.is_compiling() else is_first.any(0).tolist()
    priors, posts, states = [], [], []
    for t in range(T):
        if any_first[t]:
            prior, deter = step(model, state, prev_action[:, t], is_first[:, t], initial)
        else:
            prior, deter = model.dynamics(state, prev_action[:, t], is_first[:, t])
        if stochs is not None:
            post, stoch = post_logits[:, t], stochs[:, t]
        else:
            post = model.posterior(deter, embed[:, t])
            stoch = pick(post)
        state = model.next_state(deter, prior, stoch)
        priors.append(prior)
        posts.append(post)
        states.append(state)
    stacked = {key: torch.stack([s[key] for s in states], 1) for key in states[0]}
    features = torch.stack([model.features(s) for s in states], 1)
    return {
        "prior_logits": torch.stack(priors, 1),
        "post_logits": torch.stack(posts, 1),
        "stoch": stacked["stoch"],
        "features": features,
        "states": stacked,
        "last": state,
    }


def imagine(
    model: WorldModel,
    start: State,
    policy: Callable[[Tensor], Tensor],
    horizon: int,
    *,
    generator: torch.Generator | None = None,
    keep_states: bool = False,
) -> dict[str, Tensor]:
    """Roll the prior forward from ``start`` for ``horizon`` steps, acting with ``policy``.

    :param start: State with batch B (for example posterior states of training data, flattened).
    :param policy: Maps features (B, F) to actions (B, A).
    :returns: ``features`` (B, horizon + 1, F) starting with the start state's, ``actions``
        (B, horizon, A) with ``actions[:, t]`` taken at ``features[:, t]``, and ``prior_logits``
        (B, horizon, G, C); with ``keep_states``, also ``states``, each state tensor (B, horizon, ...)
        of the states the actions were taken in.
    """
    B = start["stoch"].shape[0]
    no_reset = torch.zeros(B, dtype=torch.bool, device=start["stoch"].device)
    state = start
    features = [model.features(state)]
    actions, priors, states = [], [], []
    for _ in range(horizon):
        if keep_states:
            states.append(state)
        action = policy(features[-1])
        prior, deter = model.dynamics(state, action, no_reset)
        prob = distributions.probs(prior, model.prior_unimix)
        state = model.next_state(deter, prior, distributions.sample_one_hot(prob, generator))
        features.append(model.features(state))
        actions.append(action)
        priors.append(prior)
    rollout = {
        "features": torch.stack(features, 1),
        "actions": torch.stack(actions, 1),
        "prior_logits": torch.stack(priors, 1),
    }
    if keep_states:
        rollout["states"] = {key: torch.stack([s[key] for s in states], 1) for key in start}
    return rollout


def prev_actions(action: Tensor) -> Tensor:
    """Shift stored actions one step right: (B, T, A) actions taken at each step become the
    actions taken before it, with zeros before the first step."""
    return torch.cat([torch.zeros_like(action[:, :1]), action[:, :-1]], 1)


def embed_sequences(model: WorldModel, sequences: Mapping[str, Tensor]) -> Tensor:
    """Embed the observations of (N, T) sequences chunk by chunk without gradients: (N, T, E)."""
    keys = observation_keys(sequences)
    device = model.device()
    N = sequences["is_first"].shape[0]
    with torch.no_grad():
        return torch.cat(
            [
                model.embed({key: sequences[key][start : start + CHUNK].to(device) for key in keys})
                for start in range(0, N, CHUNK)
            ]
        )


def posterior_states(
    model: WorldModel, sequences: Mapping[str, Tensor], *, generator: torch.Generator | None = None
) -> dict[str, Tensor | State]:
    """Filter (N, T) sequences chunk by chunk without gradients, sampling the posterior.

    :returns: ``embed`` (N, T, E), ``features`` (N, T, F) and ``states`` (every state tensor
        (N, T, ...)), concatenated over chunks.
    """
    embed = embed_sequences(model, sequences)
    device = model.device()
    outs = []
    with torch.no_grad():
        for start in range(0, embed.shape[0], CHUNK):
            action = sequences["action"][start : start + CHUNK].to(device).float()
            is_first = sequences["is_first"][start : start + CHUNK].to(device).bool()
            outs.append(
                observe(model, prev_actions(action), is_first, embed=embed[start : start + CHUNK], generator=generator)
            )
    return {
        "embed": embed,
        "features": torch.cat([out["features"] for out in outs]),
        "states": {key: torch.cat([out["states"][key] for out in outs]) for key in outs[0]["states"]},
    }


def subsample_states(states: State, count: int, generator: torch.Generator) -> State:
    """``count`` states drawn without replacement from a flat (N, ...) batch; all of them if ``count``
    is 0 or at least N."""
    total = states["stoch"].shape[0]
    if count <= 0 or count >= total:
        return states
    index = torch.randperm(total, generator=generator)[:count].to(states["stoch"].device)
    return {key: value[index] for key, value in states.items()}


def start_bank(model: WorldModel, sequences: Mapping[str, Tensor], *, seed: int = 0) -> State:
    """Posterior states of every step of ``sequences`` under ``model`` (adapted or not), flattened to (N * T, ...):
    where imagination starts."""
    generator = torch.Generator(device=model.device()).manual_seed(seed)
    states = posterior_states(model, sequences, generator=generator)["states"]
    return {key: value.flatten(0, 1) for key, value in states.items()}
