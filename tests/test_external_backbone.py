"""A backbone written outside the library (tests/external_rssm.py), taken through the whole line.

Registered at run time (``latent_residual.registry.plugins.register``), built with ``make_backbone`` for
``dmc/pendulum-swingup-v0`` (state), checked with ``check_world_model``, adapted on reward-free
data from ``dmc/pendulum-swingup-reversed-v0``, exported to ONNX and run with ``OnnxPolicy``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from external_rssm import ExternalRSSM

import latent_residual as lr
from latent_residual import hookimpl
from latent_residual.registry import plugins

BACKBONE_ID = "external-rssm-v0"
PLUGIN_NAME = "external-rssm-test"
SOURCE = "dmc/pendulum-swingup-v0"
TARGET = "dmc/pendulum-swingup-reversed-v0"
EPISODE_STEPS = 50  # short episodes through env kwargs (Gymnasium's max_episode_steps)
SIZES = {"deter": 32, "hidden": 32, "units": 32, "stoch": 4, "classes": 4}


class ExternalPlugin:
    """A plugin object, as a notebook or a test would register one."""

    @hookimpl
    def register_backbones(self, register):
        register(
            BACKBONE_ID,
            ExternalRSSM,
            description="DreamerV3 RSSM written outside the library",
            kwargs=dict(SIZES),
            presets={"cpu": {"deter": 128, "hidden": 128, "units": 128}},
        )


def backbone_ids() -> list[str]:
    return sorted(spec.id for spec in lr.registry.lookup.list_backbones())


@pytest.fixture(scope="module")
def external(registry):
    """Register the plugin for this module; put the registry back as it was afterwards."""
    before = backbone_ids()
    assert BACKBONE_ID not in before
    plugins.register(ExternalPlugin(), PLUGIN_NAME)
    yield
    plugins.unload_plugins()  # forget every registration, ours included ...
    plugins.load_plugins()  # ... and load the installed plugins again, as the `registry` fixture did
    assert backbone_ids() == before


@pytest.fixture(scope="module")
def spaces(external):
    env = lr.make_env(SOURCE)
    try:
        return env.observation_space, env.action_space
    finally:
        env.close()


def build(spaces) -> ExternalRSSM:
    torch.manual_seed(0)
    return lr.make_backbone(BACKBONE_ID, *spaces)


@pytest.fixture(scope="module")
def target_sequences(external, tmp_path_factory):
    """Reward-free target data: 1,020 random-action transitions from the reversed pendulum."""
    from latent_residual.workflow.data.collection import collect

    directory = tmp_path_factory.mktemp("target-data")
    collect(
        TARGET,
        "random",
        directory,
        transitions=1020,
        seed=0,
        env_kwargs={"max_episode_steps": EPISODE_STEPS},
        quiet=True,
    )
    sequences = lr.load_dataset(directory).sequences(16)
    sequences.pop("reward", None)
    return sequences


def test_registered_at_run_time(external, spaces):
    spec = lr.registry.lookup.backbone_spec(BACKBONE_ID)
    assert spec.kwargs == SIZES
    assert spec.presets == {"cpu": {"deter": 128, "hidden": 128, "units": 128}}
    model = build(spaces)
    assert isinstance(model, ExternalRSSM)
    assert model.initial_deter.shape == (SIZES["deter"],)
    assert model.feature_size == SIZES["deter"] + SIZES["stoch"] * SIZES["classes"]
    assert model.backbone_kwargs == SIZES  # the registered defaults, as JSON: checkpoints rebuild from them
    json.dumps(model.backbone_kwargs)
    again = lr.make_backbone(BACKBONE_ID, *spaces, **model.backbone_kwargs)
    assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}


def test_check_world_model(spaces):
    from latent_residual.testing import check_world_model

    check_world_model(build(spaces))


def test_loss_trains_with_and_without_reward(spaces, target_sequences):
    model = build(spaces)
    batch = {key: value[:8] for key, value in target_sequences.items()}
    _, metrics = model.loss(batch)
    assert "reward" not in metrics  # reward-free data: no reward term
    batch_with_reward = dict(batch, reward=torch.zeros(batch["is_first"].shape))
    assert "reward" in model.loss(batch_with_reward)[1]

    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss, _ = model.loss(batch)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]


def test_adapt_export_and_run(spaces, target_sequences, tmp_path):
    from latent_residual.actor_critic import ActorCritic, ActorCriticConfig
    from latent_residual.onnx_policy import OnnxPolicy, run_episode
    from latent_residual.workflow.deployment.export import verify_episodes

    base = build(spaces)
    state_before = {key: value.detach().clone() for key, value in base.state_dict().items()}
    grads_before = {name: p.requires_grad for name, p in base.named_parameters()}
    mode_before = base.training

    # -- adapt: a residual on the frozen prior's logits, fitted on reward-free target data
    adapted = lr.attach_residual(base, lr.ResidualConfig(hidden=32))
    assert "reward" not in target_sequences
    result = lr.fit_residual(adapted, target_sequences, lr.FitConfig(steps=40, eval_every=20))
    assert np.isfinite(result.held_out_kl_base) and np.isfinite(result.held_out_kl_best)
    assert result.held_out_kl_best <= result.held_out_kl_base

    def assert_base_unchanged():
        state_after = base.state_dict()
        assert state_after.keys() == state_before.keys()
        for key, value in state_before.items():
            assert state_after[key].dtype == value.dtype, key
            assert torch.equal(state_after[key], value), key
        assert {name: p.requires_grad for name, p in base.named_parameters()} == grads_before
        assert base.training == mode_before

    assert_base_unchanged()

    # -- a stateful policy: the adapted model and a fresh actor
    torch.manual_seed(1)
    actor = ActorCritic(base.feature_size, base.action_size, ActorCriticConfig(hidden=16, layers=1)).actor
    policy = lr.Policy(adapted, actor)

    # -- export: a format-2 (recurrent) graph that carries (h, z)
    directory = tmp_path / "onnx"
    lr.export_policy(policy, directory, env_id=TARGET)
    description = json.loads((directory / "policy.json").read_text())
    assert description["format_version"] == 2
    assert description["backbone_id"] == BACKBONE_ID
    assert description["base_fingerprint"] == lr.fingerprint(base)
    assert sorted(item["key"] for item in description["recurrent"]["state"]) == ["deter", "stoch"]
    assert_base_unchanged()

    # -- torch against ONNX Runtime at every step of whole episodes (>= 200 steps in all)
    difference = verify_episodes(
        directory, policy, TARGET, steps=200, seed=0, env_kwargs={"max_episode_steps": EPISODE_STEPS}
    )
    assert difference < 1e-4, difference

    # -- the same by hand over one episode: both sides carry their own state through act()
    onnx_policy = OnnxPolicy(directory, threads=1)
    assert onnx_policy.recurrent
    env = lr.make_env(TARGET, max_episode_steps=EPISODE_STEPS)
    obs, _ = env.reset(seed=123)
    policy.reset()
    onnx_policy.reset()
    steps, done = 0, False
    while not done:
        with torch.no_grad():
            torch_action = np.asarray(policy.act(obs), dtype=np.float32)
        onnx_action = onnx_policy.act(obs)
        assert onnx_action.shape == torch_action.shape == env.action_space.shape
        assert np.abs(onnx_action - torch_action).max() < 1e-4, steps
        obs, _, terminated, truncated, _ = env.step(onnx_action)
        steps, done = steps + 1, terminated or truncated
    assert steps == EPISODE_STEPS

    # -- deployment: run_episode with the ONNX policy alone
    episode = run_episode(env, onnx_policy, seed=0)
    env.close()
    assert episode["length"] == EPISODE_STEPS
    assert episode["truncated"] and not episode["terminated"]
    assert np.isfinite(episode["return"])
    assert_base_unchanged()
