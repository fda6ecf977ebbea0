"""``check_world_model``: a conformance check for backbones, as Gymnasium's ``check_env`` is for environments.

It drives every contract method, then the library's own uses of them (adapters, fitting, files, ONNX
export); what backbones are is in ``contract.py``, how the library uses them in the kernel and workflow.
"""

from __future__ import annotations

import copy
import math
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import gymnasium
import torch
from torch import Tensor

from latent_residual import rollout
from latent_residual.actor_critic import Actor, ActorCriticConfig
from latent_residual.adapters import attach_residual
from latent_residual.checkpoints import load_weights, read_world_model, save_world_model
from latent_residual.contract import LatentSpec, WorldModel
from latent_residual.errors import ExportError, LatentResidualError
from latent_residual.fitting import FitConfig, fit_residual
from latent_residual.residual import ResidualConfig
from latent_residual.serialization import fingerprint
from latent_residual.workflow.deployment.export import (
    PARITY_TOLERANCE,
    example_observations,
    export_policy,
    verify_export,
)
from latent_residual.workflow.deployment.policy import Policy


class ContractError(LatentResidualError, AssertionError):
    """A world model breaks the contract; the message names the method and what was expected."""


def _require(condition: bool, method: str, expected: str, got: Any) -> None:
    if not condition:
        raise ContractError(f"{method}: expected {expected}, got {got}.")


def _describe(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return f"{type(value).__name__} {value!r}"[:200]


def _check_tensor(method: str, value: Any, shape: tuple[int, ...], *, what: str = "") -> None:
    expected = f"{what or 'a floating-point tensor'} of shape {shape}"
    _require(isinstance(value, Tensor) and value.is_floating_point(), method, expected, _describe(value))
    _require(tuple(value.shape) == shape, method, expected, _describe(value))
    _require(bool(torch.isfinite(value).all()), method, "finite values", "NaN or inf")


def _check_raw_logits(method: str, logits: Tensor) -> None:
    """Raw logits, not probabilities or log-probabilities already normalised over the classes."""
    probabilities = bool(((logits >= 0) & (logits <= 1)).all()) and torch.allclose(
        logits.sum(-1), torch.ones(()), atol=1e-4
    )
    normalised = torch.allclose(torch.logsumexp(logits, -1), torch.zeros(()), atol=1e-4)
    _require(
        not probabilities,
        method,
        "raw logits (before softmax and unimix; the residual adds to them)",
        "values that are probabilities (each group sums to 1): return the logits before the softmax",
    )
    _require(
        not normalised,
        method,
        "raw logits (before softmax and unimix; the residual adds to them)",
        "normalised log-probabilities (each group's logsumexp is 0): return the logits before log_softmax",
    )


def _check_state(method: str, state: Any, reference: Mapping[str, Tensor], batch_size: int) -> None:
    _require(isinstance(state, Mapping), method, "a dict of tensors (the state)", _describe(state))
    _require(set(state) == set(reference), method, f"the keys {sorted(reference)}", sorted(state))
    for key, value in state.items():
        _check_tensor(f"{method}[{key!r}]", value, (batch_size, *reference[key].shape[1:]))


def _check_attributes(model: WorldModel) -> None:
    _require(isinstance(model.latent, LatentSpec), "latent", "a LatentSpec", _describe(model.latent))
    for name in ("action_size", "feature_size"):
        value = getattr(model, name)
        _require(isinstance(value, int) and value >= 1, name, "an integer >= 1", _describe(value))
    _require(0.0 <= model.unimix < 1.0, "unimix", "a number in [0, 1)", model.unimix)
    _require(model.backbone_id is not None, "backbone_id", "a model built with latent_residual.make_backbone()", None)
    _require(
        isinstance(model.observation_space, gymnasium.spaces.Dict),
        "observation_space",
        "a gymnasium Dict",
        model.observation_space,
    )
    space = model.action_space
    _require(
        isinstance(space, gymnasium.spaces.Box) and math.prod(space.shape) == model.action_size,
        "action_space",
        f"a Box holding action_size={model.action_size} actions",
        space,
    )


def _sequences(model: WorldModel, batch_size: int, length: int, seed: int) -> dict[str, Tensor]:
    """(B, T) sequences of observations inside the space and random actions, each starting an episode."""
    observations = example_observations(model.observation_space, batch_size * length, seed)
    batch = {
        key: torch.as_tensor(value).reshape(batch_size, length, *value.shape[1:]) for key, value in observations.items()
    }
    generator = torch.Generator().manual_seed(seed)
    batch["action"] = torch.rand(batch_size, length, model.action_size, generator=generator) * 2 - 1
    batch["is_first"] = torch.zeros(batch_size, length, dtype=torch.bool)
    batch["is_first"][:, 0] = True
    return {key: value.to(model.device()) for key, value in batch.items()}


def _check_step(model: WorldModel, batch: Mapping[str, Tensor]) -> None:
    """Drive one step of every contract method on a batch."""
    G, C = model.latent.groups, model.latent.classes
    B, T = batch["is_first"].shape
    initial = model.initial_state(B)
    _require(
        isinstance(initial, Mapping) and "stoch" in initial,
        "initial_state",
        "a dict with a 'stoch' tensor",
        _describe(initial),
    )
    _check_tensor("initial_state['stoch']", initial["stoch"], (B, G, C))
    _check_state("initial_state", initial, initial, B)
    embed = model.embed({key: batch[key] for key in rollout.observation_keys(batch)})
    _require(
        isinstance(embed, Tensor) and embed.dim() == 3 and tuple(embed.shape[:2]) == (B, T),
        "embed",
        "(B, T, E) embeddings",
        _describe(embed),
    )
    first = torch.ones(B, dtype=torch.bool, device=embed.device)
    logits, deter = rollout.step(model, initial, batch["action"][:, 0], first, initial)
    state = model.next_state(deter, logits, initial["stoch"])
    later = torch.zeros_like(first)
    logits, deter = model.dynamics(state, batch["action"][:, 1], later)
    _check_tensor("dynamics (the prior logits)", logits, (B, G, C))
    _check_raw_logits("dynamics", logits)
    _require(isinstance(deter, Mapping), "dynamics", "(logits, a dict of the deterministic state)", _describe(deter))
    post = model.posterior(deter if model.posterior_uses_deter else {}, embed[:, 1])
    _check_tensor("posterior", post, (B, G, C))
    _check_raw_logits("posterior", post)
    state = model.next_state(deter, logits, initial["stoch"])
    _check_state("next_state", state, initial, B)
    features = model.features(state)
    _check_tensor("features", features, (B, model.feature_size))
    _check_tensor("reward", model.reward(features), (B,))
    continuation = model.continuation(features)
    _check_tensor("continuation", continuation, (B,))
    _require(
        bool(((continuation >= 0) & (continuation <= 1)).all()), "continuation", "probabilities in [0, 1]", continuation
    )


def _filtered(model: WorldModel, batch: Mapping[str, Tensor], seed: int) -> Tensor:
    """The (B, T, F) features of filtering ``batch`` with posterior samples drawn under ``seed``."""
    embed = model.embed({key: batch[key] for key in rollout.observation_keys(batch)})
    generator = torch.Generator(device=embed.device).manual_seed(seed)
    out = rollout.observe(
        model, rollout.prev_actions(batch["action"]), batch["is_first"], embed=embed, generator=generator
    )
    return out["features"]


def _check_determinism(model: WorldModel, batch: Mapping[str, Tensor], seed: int) -> None:
    first, second = _filtered(model, batch, seed), _filtered(model, batch, seed)
    _require(torch.equal(first, second), "observe", "the same features from the same inputs and seed", "different ones")


def _check_checkpoint(model: WorldModel, batch: Mapping[str, Tensor], directory: Path, seed: int) -> None:
    save_world_model(model, directory / "world_model")
    config, tensors = read_world_model(directory / "world_model")
    _require(
        config["backbone_id"] == model.backbone_id,
        "save_world_model",
        f"backbone_id {model.backbone_id!r}",
        config["backbone_id"],
    )
    copied = load_weights(copy.deepcopy(model), tensors, directory / "world_model")
    _require(
        fingerprint(copied) == fingerprint(model),
        "state_dict",
        "the same weights after a checkpoint round trip",
        "others",
    )
    same = torch.equal(_filtered(copied, batch, seed), _filtered(model, batch, seed))
    _require(same, "state_dict", "the same predictions after a checkpoint round trip", "different ones")


def _check_adapter(model: WorldModel, batch: Mapping[str, Tensor], seed: int) -> None:
    before = fingerprint(model)
    # Starting equal to the base (zero output layer, the base's unimix), so three steps can never
    # leave it worse than the base, which fit_residual refuses.
    adapted = attach_residual(model, ResidualConfig(hidden=16, zero_init=True, prior_unimix=model.prior_unimix))
    sequences = {key: value.cpu() for key, value in batch.items()}
    fit_residual(
        adapted, sequences, FitConfig(steps=3, eval_every=1, batch_size=2, holdout=0.34, seed=seed), quiet=True
    )
    _require(
        fingerprint(model) == before, "attach_residual + fit_residual", "the base bitwise unchanged", "changed weights"
    )


def _check_export(model: WorldModel, batch: Mapping[str, Tensor], directory: Path) -> None:
    actor = Actor(model.feature_size, model.action_size, ActorCriticConfig(hidden=16, layers=1)).to(model.device())
    policy = Policy(model, actor).eval()
    export_policy(policy, directory / "onnx")
    keys = rollout.observation_keys(batch)
    steps = [{key: batch[key][0, t].cpu().numpy() for key in keys} for t in range(batch["is_first"].shape[1])]
    try:
        difference: float | str = verify_export(directory / "onnx", policy, steps)
    except ExportError as exc:  # a non-finite action: the contract's failure, reported as one
        difference = str(exc)
    _require(
        isinstance(difference, float) and difference <= PARITY_TOLERANCE,
        "export_policy",
        f"ONNX Runtime within {PARITY_TOLERANCE} of torch",
        difference,
    )


def check_world_model(model: WorldModel, *, seed: int = 0, export: bool = True) -> None:
    """Check that ``model`` fulfils the world-model contract and works with the whole library.

    It checks the attributes; every method's return types, shapes and finiteness; that
    ``dynamics`` and ``posterior`` return raw logits (not probabilities or normalised
    log-probabilities); determinism of filtering under a seed; a round trip through the
    checkpoint format; that attaching and fitting a residual leaves the base bitwise unchanged;
    and (``export=True``) that its policy exports to ONNX and matches torch in ONNX Runtime
    step by step. Run it on a backbone built with ``make_backbone`` in its test suite.

    :raises ContractError: naming the method and what was expected (also an ``AssertionError``).
    """
    _check_attributes(model)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            batch = _sequences(model, batch_size=3, length=6, seed=seed)
            _check_step(model, batch)
            _check_determinism(model, batch, seed)
        with tempfile.TemporaryDirectory() as tmp:
            with torch.no_grad():
                _check_checkpoint(model, batch, Path(tmp), seed)
            _check_adapter(model, batch, seed)
            if export:
                _check_export(model, batch, Path(tmp))
    finally:
        model.train(was_training)
