"""The pretrained defaults that plugins ship: found for their source, loadable, and working policies."""

from __future__ import annotations

import json

import numpy as np
import pytest

import latent_residual as lr
from latent_residual.actor_critic import load_actor_critic
from latent_residual.registry.lookup import env_pretrained
from latent_residual.workflow.training.pretraining import ACTOR_CRITIC_NAME

SHIPPED = ("dmc/pendulum-swingup-v0", "dmc/cup-catch-v0", "duckiebot/lane-following-v0")


def _policy(directory):
    model = lr.load_world_model(directory / "world_model")
    return lr.Policy(model, load_actor_critic(directory / ACTOR_CRITIC_NAME).actor)


@pytest.mark.parametrize("source", SHIPPED)
def test_shipped_default_loads_and_records_how_it_was_made(registry, source):
    directory = env_pretrained(source)
    assert directory is not None
    provenance = json.loads((directory / "provenance.json").read_text())
    # By an example script, or by the library's own command and the plugin's recipe.
    assert provenance["command"].startswith(("MUJOCO_GL=egl python examples/pretrain_", "latent-residual build-source"))
    env = lr.make_env(source)
    obs, _ = env.reset(seed=0)
    action = _policy(directory).act(obs)
    env.close()
    assert env.action_space.contains(np.asarray(action, np.float32))


def test_no_default_for_an_environment_whose_plugin_ships_none(registry):
    assert env_pretrained("dmc/finger-turn-hard-v0") is None


def test_shipped_duckiebot_policy_follows_the_lane_in_sim(registry):
    policy = _policy(env_pretrained("duckiebot/lane-following-v0"))
    result = lr.evaluate(
        policy, "duckiebot/lane-following-v0", episodes=1, seed=10_000, env_kwargs={"max_episode_steps": 50}
    )
    assert result.lengths == [50]  # no lane exit
    assert result.metrics["dense_reward"] > 0.5


def test_shipped_cup_policy_catches_the_ball(registry):
    # Built with policy rounds from random actions alone (provenance.json: 928.3, every episode above 800).
    result = lr.evaluate(_policy(env_pretrained("dmc/cup-catch-v0")), "dmc/cup-catch-v0", episodes=1, seed=10_000)
    assert result.returns[0] > 500
