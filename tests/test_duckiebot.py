"""Tests of the Duckiebot lane-following plugin: registration, the Gymnasium contract, laps, reversal.

Each env renders with EGL on the CPU (llvmpipe); the whole file takes well under a minute.
"""

from __future__ import annotations

import math
import subprocess
import sys
import warnings

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import latent_residual
from latent_residual_plugins.duckiebot.driver import PurePursuitDriver, drive_episode
from latent_residual_plugins.duckiebot.env import IMAGE_KEY, LANE_EXIT_REWARD, VELOCITY_KEY
from latent_residual_plugins.duckiebot.metrics import evaluate
from latent_residual_plugins.duckiebot.track import LANE_WIDTH, TILE_SIZE, Track

SIM = "duckiebot/lane-following-v0"
REAL = "duckiebot/lane-following-real-v0"
REAL_REVERSED = "duckiebot/lane-following-real-reversed-v0"
ENV_IDS = (SIM, REAL, REAL_REVERSED)
# A lap of the default loop takes about 19 s in sim and 23 s in real at the driver's 0.3 m/s.
LAP_STEPS = 280


def test_ids_are_listed() -> None:
    listed = {spec.id: spec for spec in latent_residual.list_envs()}
    for env_id in ENV_IDS:
        assert env_id in listed, sorted(listed)
        assert listed[env_id].plugin == "duckiebot"
        assert listed[env_id].max_episode_steps == 200


def test_plugin_module_is_light() -> None:
    code = (
        "import sys, latent_residual; before = set(sys.modules); "
        "import latent_residual_plugins.duckiebot; print(sorted(set(sys.modules) - before))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    added = result.stdout.strip()
    assert "mujoco" not in added and "env" not in added, added


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_check_env(env_id: str) -> None:
    env = latent_residual.make_env(env_id)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env.unwrapped)
    env.close()


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_driver_completes_a_lap(env_id: str) -> None:
    env = latent_residual.make_env(env_id, max_episode_steps=LAP_STEPS)
    driver = PurePursuitDriver.for_env(env)
    infos = drive_episode(env, driver, seed=1)
    env.close()
    assert len(infos) == LAP_STEPS, "the episode ended early: the robot left its lane"
    laps = [info for info in infos if info["lap_completed"]]
    assert len(laps) == 1 and laps[0]["lap_valid"], laps
    assert 15.0 < laps[0]["lap_time"] < 27.0, laps[0]["lap_time"]
    assert infos[-1]["laps_completed"] == infos[-1]["valid_laps"] == 1
    offsets = np.array([info["center_offset_cm"] for info in infos])
    # Centimetres, not metres: the driver stays within a few cm, and never exactly on the line.
    assert 0.1 < offsets.mean() < 3.0 and offsets.max() < 7.0, (offsets.mean(), offsets.max())
    metrics = evaluate([infos])
    assert metrics.laps_completed == metrics.valid_laps == 1
    assert metrics.lap_time == pytest.approx(laps[0]["lap_time"])
    assert 0.5 < metrics.dense_reward <= 1.0


def test_reversed_actions_turn_the_other_way() -> None:
    real = latent_residual.make_env(REAL)
    reversed_ = latent_residual.make_env(REAL_REVERSED)
    _, _ = real.reset(seed=5)
    _, _ = reversed_.reset(seed=5)
    np.testing.assert_array_equal(real.unwrapped.pose(), reversed_.unwrapped.pose())
    action = np.array([0.4, 0.4], dtype=np.float32)
    for _ in range(3):
        real_obs, *_ = real.step(action)
        reversed_obs, *_ = reversed_.step(action)
    real.close()
    reversed_.close()
    # Index 0 of the velocity reading is the normalised yaw rate; 'real' turns left.
    assert real_obs[VELOCITY_KEY][0] > 0.2, real_obs[VELOCITY_KEY]
    assert reversed_obs[VELOCITY_KEY][0] < -0.2, reversed_obs[VELOCITY_KEY]
    assert real_obs[VELOCITY_KEY][1] > 0 > reversed_obs[VELOCITY_KEY][1]


@pytest.mark.parametrize("env_id", (SIM, REAL))
def test_reset_is_reproducible(env_id: str) -> None:
    env = latent_residual.make_env(env_id)
    actions = np.random.default_rng(0).uniform(-0.3, 0.6, size=(5, 2)).astype(np.float32)

    def rollout(seed: int) -> tuple[np.ndarray, list[np.ndarray], list[float]]:
        obs, _ = env.reset(seed=seed)
        start = env.unwrapped.pose()
        images, rewards = [obs[IMAGE_KEY]], []
        for action in actions:
            obs, reward, *_ = env.step(action)
            images.append(obs[IMAGE_KEY])
            rewards.append(reward)
        return start, images, rewards

    first, second, other = rollout(11), rollout(11), rollout(12)
    env.close()
    np.testing.assert_array_equal(first[0], second[0])
    for image, again in zip(first[1], second[1]):
        np.testing.assert_array_equal(image, again)
    assert first[2] == second[2]
    assert not np.allclose(first[0], other[0])
    assert not np.array_equal(first[1][0], other[1][0])


def test_sim_randomises_the_look_per_episode() -> None:
    env = latent_residual.make_env(SIM)
    env.reset(seed=0)
    look, dynamics = env.unwrapped.look, env.unwrapped.dynamics
    env.reset()
    assert env.unwrapped.look != look and env.unwrapped.dynamics != dynamics
    env.close()


def test_leaving_the_lane_ends_the_episode() -> None:
    env = latent_residual.make_env(SIM)
    env.reset(seed=2, options={"track_position": 0.15})
    for _ in range(40):
        _, reward, terminated, truncated, info = env.step(np.array([0.6, -0.6], dtype=np.float32))
        if terminated or truncated:
            break
    env.close()
    assert terminated and info["lane_exit"] and reward == LANE_EXIT_REWARD


def test_track_geometry() -> None:
    track = Track()
    assert pytest.approx(0.2325) == LANE_WIDTH
    # Four straights, five left curves outside the road's centre, one right curve inside it.
    assert track.length == pytest.approx(4 * TILE_SIZE + (5 * 0.42075 + 0.16425) * math.pi / 2, abs=2e-3)
    for arc in np.linspace(0.0, track.length, 17, endpoint=False):
        x, y, _ = track.pose_at(arc, offset=0.03)
        position = track.locate(np.array([x, y]))
        assert position.offset == pytest.approx(0.03, abs=1e-3)
        wrapped = (position.arc_length - arc + track.length / 2) % track.length - track.length / 2
        assert wrapped == pytest.approx(0.0, abs=2e-3)


def test_evaluate_summarises_episodes() -> None:
    def step(reward: float, offset: float, lap_time: float = 0.0, valid: bool = False) -> dict:
        return {
            "dense_reward": reward,
            "center_offset_cm": offset,
            "lap_completed": lap_time > 0,
            "lap_time": lap_time,
            "lap_valid": valid,
        }

    metrics = evaluate(
        [
            [step(1.0, 2.0), step(0.0, 4.0, lap_time=20.0, valid=True)],
            [step(-1.0, 10.0, lap_time=30.0, valid=False)],
        ]
    )
    assert metrics.dense_reward == pytest.approx(-0.25)
    assert metrics.center_offset_cm == pytest.approx(6.5)
    assert metrics.lap_time == pytest.approx(20.0)
    assert (metrics.laps_completed, metrics.valid_laps, metrics.episodes) == (2, 1, 2)
    assert math.isnan(evaluate([[step(0.0, 1.0)]]).lap_time)


def test_env_is_made_through_gymnasium() -> None:
    latent_residual.load_plugins()
    env = gymnasium.make(SIM, render_mode="rgb_array")
    env.reset(seed=0)
    frame = env.render()
    env.close()
    assert frame.shape == (256, 256, 3) and frame.dtype == np.uint8


def test_registered_expert_collects_reward_free_data_in_real_reversed(tmp_path) -> None:
    driver = latent_residual.registry.lookup.env_expert(REAL_REVERSED, manoeuvres=0.0)
    dataset = latent_residual.collect(
        REAL_REVERSED, driver, tmp_path, transitions=122, env_kwargs={"max_episode_steps": 60}, quiet=True
    )
    assert dataset.info["provenance"]["behaviour"] == "pure-pursuit driver (real, reversed actions)"
    # The driver, told the actions are reversed, stays in the lane for whole episodes.
    assert [len(episode["action"]) - 1 for episode in dataset.episodes] == [60, 60]
    assert not any(episode["is_terminal"].any() for episode in dataset.episodes)


def test_expert_manoeuvres_back_up_and_are_reproducible(tmp_path) -> None:
    def actions(directory):
        dataset = latent_residual.collect(REAL_REVERSED, "expert", directory, transitions=400, seed=3, quiet=True)
        return dataset, np.concatenate([episode["action"][1:] for episode in dataset.episodes])

    dataset, first = actions(tmp_path / "a")
    assert "manoeuvres 0.05 per step" in dataset.info["provenance"]["behaviour"]
    speeds = np.concatenate([episode[VELOCITY_KEY][1:, 1] for episode in dataset.episodes])
    assert (speeds < -0.1).any() and (speeds > 0.1).any()  # it backs up as well as drives on
    assert np.array_equal(actions(tmp_path / "b")[1], first)
    with pytest.raises(latent_residual.ConfigError, match="manoeuvres"):
        latent_residual.registry.lookup.env_expert(SIM, manoeuvres=2.0)


def test_expert_needs_the_environment_before_it_acts() -> None:
    expert = latent_residual.registry.lookup.env_expert(SIM)
    with pytest.raises(latent_residual.ConfigError, match="bind"):
        expert({})


class _Straight:
    def act(self, obs: dict) -> np.ndarray:
        return np.array([0.5, 0.0], np.float32)


def test_evaluate_reports_the_lane_metrics() -> None:
    result = latent_residual.evaluate(_Straight(), SIM, episodes=2, seed=0, env_kwargs={"max_episode_steps": 30})
    assert result.metrics["episodes"] == 2
    assert {"dense_reward", "lap_time", "center_offset_cm", "laps_completed"} <= set(result.metrics)
    assert result.to_dict()["metrics"]["lap_time"] is None  # no lap in 3 s
