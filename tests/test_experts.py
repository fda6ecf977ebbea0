"""Scripted experts registered by environment plugins, and collecting or pretraining with them."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import TINY_AC, tiny_pretrain_config

import latent_residual as lr
from latent_residual.registry.lookup import env_expert
from latent_residual.workflow.data.collection import begin_episode


def _episode_return(env_id: str, expert, seed: int = 10_000) -> float:
    env = lr.make_env(env_id)
    obs, _ = env.reset(seed=seed)
    begin_episode(expert, env, seed)  # an expert that plans with the physics binds to it, as collect binds it
    total, done = 0.0, False
    while not done:
        obs, reward, terminated, truncated, _ = env.step(expert(obs))
        total += reward
        done = terminated or truncated
    return total


def test_pendulum_expert_swings_up_in_source_and_in_reversed_target(registry):
    source = _episode_return("dmc/pendulum-swingup-v0", env_expert("dmc/pendulum-swingup-v0"))
    target = _episode_return("dmc/pendulum-swingup-reversed-v0", env_expert("dmc/pendulum-swingup-reversed-v0"))
    assert source > 600 and target > 600
    # The source's expert is no expert in the reversed target.
    assert _episode_return("dmc/pendulum-swingup-reversed-v0", env_expert("dmc/pendulum-swingup-v0")) < 100


def test_reacher_expert_reaches_in_source_and_in_reversed_target(registry):
    for seed in (10_000, 10_002):  # 10_002 starts with the arm stretched, where Jacobian-transpose reaching stalls
        source = _episode_return("dmc/reacher-easy-v0", env_expert("dmc/reacher-easy-v0"), seed)
        target = _episode_return("dmc/reacher-easy-reversed-v0", env_expert("dmc/reacher-easy-reversed-v0"), seed)
        assert source > 900 and target > 900
    assert _episode_return("dmc/reacher-easy-reversed-v0", env_expert("dmc/reacher-easy-v0")) < 100


def test_finger_planner_turns_the_spinner_in_source_and_in_torque_target(registry):
    source = _episode_return("dmc/finger-turn-hard-v0", env_expert("dmc/finger-turn-hard-v0"), 10_001)
    target = _episode_return("dmc/finger-turn-hard-torque-v0", env_expert("dmc/finger-turn-hard-torque-v0"), 10_000)
    # 950 and 664 on this machine; random actions average 52.8 and 71.4 over episodes 10000-10009.
    assert source > 800 and target > 400


def test_finger_planner_is_reproducible_and_refuses_to_plan_unbound(registry, tmp_path):
    runs = [
        lr.collect("dmc/finger-turn-hard-v0", "expert", tmp_path / str(run), transitions=20, seed=3) for run in (0, 1)
    ]
    actions = [run.episodes[0]["action"] for run in runs]
    np.testing.assert_array_equal(*actions)
    assert np.abs(actions[0]).max() > 0.1
    env = lr.make_env("dmc/finger-turn-hard-v0")
    obs, _ = env.reset(seed=0)
    with pytest.raises(lr.ConfigError, match="bind"):
        env_expert("dmc/finger-turn-hard-v0")(obs)


def test_environment_without_expert_says_which_have_one(registry):
    with pytest.raises(lr.NameNotFound, match="dmc/pendulum-swingup-v0"):
        env_expert("dmc/cup-catch-v0")


def test_collect_with_the_expert_records_it(registry, tmp_path):
    dataset = lr.collect(
        "dmc/pendulum-swingup-reversed-v0", "expert", tmp_path, transitions=120, env_kwargs={"max_episode_steps": 59}
    )
    assert dataset.info["provenance"]["behaviour"] == "scripted pendulum swing-up expert (reversed actions)"
    assert dataset.transitions == 120


def test_pretraining_starts_with_expert_steps(registry, tmp_path):
    config = tiny_pretrain_config(env_steps=120, prefill=60, expert_steps=60, exploration="reward")
    lr.pretrain(config, tmp_path, ac_config=TINY_AC, quiet=True)
    first = lr.load_dataset(tmp_path / "replay").episodes[0]
    expert = env_expert("dmc/pendulum-swingup-v0")
    expected = np.stack([expert({k: first[k][t] for k in ("orientation", "velocity")}) for t in range(10)])
    # The recorded actions are the expert's plus noise of std 0.3: close to it, not equal.
    assert np.abs(first["action"][:10] - expected).mean() < 0.5


def test_pretraining_binds_an_expert_that_needs_the_environment(registry, tmp_path):
    # The Duckiebot's expert reads the true pose, so pretraining must bind it as collect does.
    config = tiny_pretrain_config(
        env_id="duckiebot/lane-following-v0",
        env_kwargs={"max_episode_steps": 20},
        env_steps=40,
        prefill=40,
        expert_steps=40,
        expert_noise=0.0,
        exploration="random",
    )
    lr.pretrain(config, tmp_path, ac_config=TINY_AC, quiet=True)
    first = lr.load_dataset(tmp_path / "replay").episodes[0]
    # The driver's first command: 0.3 m/s of the robot's 0.5 (a random action would rarely be that).
    assert first["action"][1, 0] == pytest.approx(0.6)
