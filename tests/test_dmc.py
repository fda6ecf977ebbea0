"""Tests of the DMC plugin: registration, the targets' physics, observations, seeding, rendering.

Episodes are kept to a few steps so the file runs in well under a minute and a half on two cores.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import latent_residual
from latent_residual.errors import ConfigError
from latent_residual_plugins.dmc.env import DMCEnv
from latent_residual_plugins.dmc.vector import make_vector_env

SOURCES_AND_TARGETS = {
    "dmc/pendulum-swingup-v0": "dmc/pendulum-swingup-reversed-v0",
    "dmc/cup-catch-v0": "dmc/cup-catch-windy-v0",
    "dmc/finger-turn-hard-v0": "dmc/finger-turn-hard-torque-v0",
    "dmc/reacher-easy-v0": "dmc/reacher-easy-reversed-v0",
}
ALL_IDS = [*SOURCES_AND_TARGETS, *SOURCES_AND_TARGETS.values()]


def make(env_id: str, **kwargs) -> DMCEnv:
    return latent_residual.make_env(env_id, **kwargs).unwrapped


def run(env: DMCEnv, actions: list[np.ndarray], seed: int) -> list[dict[str, np.ndarray]]:
    observations = [env.reset(seed=seed)[0]]
    observations += [env.step(action)[0] for action in actions]
    return observations


def assert_same(first: dict[str, np.ndarray], second: dict[str, np.ndarray]) -> None:
    assert first.keys() == second.keys()
    for key in first:
        np.testing.assert_array_equal(first[key], second[key], err_msg=key)


def differs(first: dict[str, np.ndarray], second: dict[str, np.ndarray]) -> bool:
    return any(not np.array_equal(first[key], second[key]) for key in first)


def constant_actions(env: DMCEnv, value: float, steps: int) -> list[np.ndarray]:
    return [np.full(env.action_space.shape, value, np.float32)] * steps


# --- registration ----------------------------------------------------------------------------


def test_ids_are_listed_and_made():
    listed = {spec.id: spec for spec in latent_residual.list_envs()}
    for env_id in ALL_IDS:
        assert env_id in listed
        assert listed[env_id].plugin == "dmc"
        assert listed[env_id].max_episode_steps == 500
    env = latent_residual.make_env("dmc/cup-catch-windy-v0")
    assert isinstance(env.unwrapped, DMCEnv)
    assert gymnasium.make("dmc/cup-catch-windy-v0").spec.kwargs["target"] == "windy"


def test_every_suite_task_is_registered_under_its_gymnasium_name():
    from dm_control import suite

    from latent_residual_plugins.dmc import SUITE_TASKS

    assert tuple(suite.ALL_TASKS) == SUITE_TASKS  # the written-out list follows the installed suite
    listed = {spec.id: spec for spec in latent_residual.list_envs()}
    for domain, task in SUITE_TASKS:
        spec = listed[f"dmc/{domain}-{task}-v0"]
        assert spec.kwargs == {"domain": domain, "task": task, "target": None} and spec.plugin == "dmc"
    # The paper's ids keep their registration (and the cup's and finger's paper names stay beside the suite's).
    assert listed["dmc/pendulum-swingup-v0"].target == "dmc/pendulum-swingup-reversed-v0"
    assert listed["dmc/ball_in_cup-catch-v0"].target is None and listed["dmc/cup-catch-v0"].target is not None


@pytest.mark.parametrize(("action_repeat", "steps"), [(1, 1000), (4, 250)])
def test_the_action_repeat_is_a_keyword_and_episodes_keep_dm_controls_length(action_repeat, steps):
    env = latent_residual.make_env("dmc/cartpole-swingup-v0", action_repeat=action_repeat)
    env.reset(seed=0)
    action = np.zeros(env.action_space.shape, np.float32)
    for step in range(1, steps + 1):
        _, _, terminated, truncated, _ = env.step(action)
        assert not terminated and truncated == (step == steps)
    env.close()


def test_tasks_with_other_action_bounds_get_actions_rescaled_into_them():
    env = make("dmc/quadruped-walk-v0")  # actuator bounds from [-1, 1] to [-0.8, 0.8] and [-1, 1.1]
    spec = env._env.action_spec()
    assert env.action_space.low.tolist() == [-1.0] * 12 and env.action_space.high.tolist() == [1.0] * 12
    env.reset(seed=0)
    for value, bound in ((1.0, spec.maximum), (-1.0, spec.minimum), (0.0, (spec.minimum + spec.maximum) / 2)):
        env.step(np.full(12, value, np.float32))
        np.testing.assert_allclose(env.physics.data.ctrl, bound, rtol=0, atol=1e-12)
    env.close()


def test_plugin_module_is_light_and_env_defaults_to_egl():
    # Importing the plugin before latent_residual must still register its ids.
    code = (
        "import sys, os\n"
        "import latent_residual_plugins.dmc\n"
        "assert not {'dm_control', 'mujoco', 'torch'} & set(sys.modules), sorted(sys.modules)\n"
        "import latent_residual_plugins.dmc.env\n"
        "import latent_residual\n"
        "latent_residual.make_env('dmc/cup-catch-v0')\n"
        "print(os.environ['MUJOCO_GL'])\n"
    )
    environ = {key: value for key, value in os.environ.items() if key != "MUJOCO_GL"}
    result = subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "egl"


# --- Gymnasium API ---------------------------------------------------------------------------


def check_env_strictly(env: gymnasium.Env) -> None:
    """check_env, failing on any warning except those about DMC's unbounded observations."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env)
    others = [str(w.message) for w in caught if "infinity" not in str(w.message)]
    assert not others, others


@pytest.mark.parametrize("env_id", ALL_IDS)
def test_check_env_state_mode(env_id):
    env = make(env_id)
    check_env_strictly(env)
    assert isinstance(env.observation_space, gymnasium.spaces.Dict)
    assert all(space.dtype == np.float32 for space in env.observation_space.values())
    assert env.action_space == gymnasium.spaces.Box(-1.0, 1.0, env.action_space.shape, np.float32)


def test_check_env_pixel_mode():
    check_env_strictly(make("dmc/finger-turn-hard-torque-v0", pixels=True))


def test_state_keys_are_dm_controls():
    from dm_control import suite

    env = make("dmc/finger-turn-hard-v0")
    expected = suite.load("finger", "turn_hard").observation_spec()
    assert {key: space.shape for key, space in env.observation_space.items()} == {
        key: spec.shape for key, spec in expected.items()
    }


def test_episode_is_truncated_once_at_500_steps():
    env = latent_residual.make_env("dmc/pendulum-swingup-v0")
    env.reset(seed=0)
    action = np.zeros(1, np.float32)
    for step in range(1, 501):
        _, _, terminated, truncated, _ = env.step(action)
        assert terminated is False
        assert truncated is (step == 500)
    with pytest.raises(gymnasium.error.ResetNeeded):
        env.unwrapped.step(action)


def test_reward_is_the_sum_of_substeps():
    # cartpole swingup has a dense reward, so both substeps contribute.
    repeated, single = DMCEnv("cartpole", "swingup"), DMCEnv("cartpole", "swingup", action_repeat=1)
    action = np.full(1, 0.3, np.float32)
    repeated.reset(seed=5)
    single.reset(seed=5)
    _, reward, _, _, info = repeated.step(action)
    substep_rewards = [single.step(action)[1] for _ in range(2)]
    assert substep_rewards[1] > 0
    assert reward == pytest.approx(sum(substep_rewards))
    assert info["last_substep_reward"] == pytest.approx(substep_rewards[1])


# --- targets, checked through the physics ----------------------------------------------------


@pytest.mark.parametrize("source_id", ["dmc/pendulum-swingup-v0", "dmc/reacher-easy-v0"])
def test_reversed_target_driven_by_a_equals_source_driven_by_minus_a(source_id):
    source, target = make(source_id), make(SOURCES_AND_TARGETS[source_id])
    rng = np.random.default_rng(0)
    actions = [rng.uniform(-1, 1, source.action_space.shape).astype(np.float32) for _ in range(8)]
    target_run = run(target, actions, seed=3)
    for mirrored, observation in zip(run(source, [-a for a in actions], seed=3), target_run):
        assert_same(mirrored, observation)
    assert differs(run(source, actions, seed=3)[-1], target_run[-1])


@pytest.mark.parametrize(
    ("source_id", "body", "wrench"),
    [
        ("dmc/cup-catch-v0", "ball", [-2.0, 0.0, 0.0, 0.0, 0.0, 0.0]),
        ("dmc/finger-turn-hard-v0", "spinner", [0.0, 0.0, 0.0, 0.0, 4.0, 0.0]),
    ],
)
def test_pushed_target_sets_the_wrench_on_its_body_and_leaves_the_source(source_id, body, wrench):
    source, target = make(source_id), make(SOURCES_AND_TARGETS[source_id])
    actions = constant_actions(source, 0.0, 10)
    source_run, target_run = run(source, actions, seed=1), run(target, actions, seed=1)

    xfrc = target.physics.named.data.xfrc_applied
    np.testing.assert_array_equal(xfrc[body], wrench)
    others = [name for name in xfrc.axes.row.names if name != body]
    assert not np.any(xfrc[others])
    assert not np.any(source.physics.data.xfrc_applied)

    assert_same(source_run[0], target_run[0])
    assert differs(source_run[-1], target_run[-1])


@pytest.mark.parametrize("source_id", list(SOURCES_AND_TARGETS))
def test_source_and_target_start_from_the_same_state(source_id):
    source, target = make(source_id), make(SOURCES_AND_TARGETS[source_id])
    for seed in (0, 11):
        assert_same(source.reset(seed=seed)[0], target.reset(seed=seed)[0])
        np.testing.assert_array_equal(source.physics.get_state(), target.physics.get_state())


def test_target_errors_name_the_problem():
    with pytest.raises(ConfigError, match="windy"):
        DMCEnv("pendulum", "swingup", target="windi")
    with pytest.raises(ConfigError, match="'ball'"):
        DMCEnv("pendulum", "swingup", target="windy")
    with pytest.raises(ConfigError, match="pendulum/swingup"):
        DMCEnv("pendulum", "swingupp")


# --- seeding ---------------------------------------------------------------------------------


def test_reset_is_reproducible():
    env = make("dmc/reacher-easy-v0")
    first, again, other = (env.reset(seed=seed)[0] for seed in (42, 42, 43))
    assert_same(first, again)
    assert differs(first, other)

    env.reset(seed=42)
    after_first = env.reset()[0]
    env.reset(seed=42)
    assert_same(after_first, env.reset()[0])


# --- pixels and rendering --------------------------------------------------------------------


def test_pixel_observations():
    env = make("dmc/cup-catch-windy-v0", pixels=True)
    assert set(env.observation_space) == {"image", "velocity"}
    observation, _ = env.reset(seed=0)
    assert observation["image"].shape == (64, 64, 3)
    assert observation["image"].dtype == np.uint8
    assert observation["velocity"].dtype == np.float32
    np.testing.assert_array_equal(observation["velocity"], env.physics.velocity().astype(np.float32))
    assert len(np.unique(observation["image"].reshape(-1, 3), axis=0)) > 10
    assert observation["image"].std() > 5
    moved = observation
    for action in constant_actions(env, 1.0, 5):
        moved = env.step(action)[0]
    assert not np.array_equal(moved["image"], observation["image"])


def test_pixel_options_and_source_target_start():
    source = make("dmc/cup-catch-v0", pixels=True, image_size=32, include_state=True)
    target = make("dmc/cup-catch-windy-v0", pixels=True, image_size=32, include_state=True)
    assert set(source.observation_space) == {"image", "velocity", "state_position", "state_velocity"}
    observation = source.reset(seed=2)[0]
    assert observation["image"].shape == (32, 32, 3)
    assert observation in source.observation_space
    assert_same(observation, target.reset(seed=2)[0])


def test_render_matches_the_observation_frame():
    env = make("dmc/reacher-easy-v0", pixels=True, render_mode="rgb_array")
    observation, _ = env.reset(seed=0)
    np.testing.assert_array_equal(env.render(), observation["image"])
    big = make("dmc/reacher-easy-v0", render_mode="rgb_array", render_size=96)
    big.reset(seed=0)
    assert big.render().shape == (96, 96, 3)
    assert make("dmc/reacher-easy-v0").render() is None


# --- vectorised collection -------------------------------------------------------------------


def test_vector_env_steps_copies_in_parallel():
    envs = make_vector_env("dmc/pendulum-swingup-reversed-v0", 2, pixels=True, image_size=16)
    try:
        observations, _ = envs.reset(seed=0)
        assert observations["image"].shape == (2, 16, 16, 3)
        assert differs(*({key: value[i] for key, value in observations.items()} for i in (0, 1)))
        actions = np.ones((2, 1), np.float32)
        observations, rewards, terminated, truncated, _ = envs.step(actions)
        assert observations["velocity"].shape == (2, 1)
        assert rewards.shape == (2,)
        assert not terminated.any() and not truncated.any()
    finally:
        envs.close()
