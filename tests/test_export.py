"""ONNX export of policies: the graph's contract, fidelity to torch, the torch-free runner, the Duckiebot node's
pure parts."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import gymnasium
import numpy as np
import onnx
import pytest
import torch
from conftest import assert_no_temp_files
from gymnasium import spaces

import latent_residual
from latent_residual import ConfigError, attach_residual, fingerprint, make_backbone
from latent_residual import onnx_policy as onnxruntime_policy
from latent_residual.actor_critic import Actor, ActorCriticConfig
from latent_residual.errors import ExportError
from latent_residual.onnx_policy import ONNX_NAME, POLICY_CONFIG_NAME, OnnxPolicy, run_episode
from latent_residual.workflow.deployment.export import (
    example_observations,
    export_policy,
    verify_episodes,
    verify_export,
)
from latent_residual.workflow.deployment.policy import Policy

STATE_ENV = "dmc/pendulum-swingup-v0"
TOLERANCE = 1e-4
ONNX_FLOAT, ONNX_UINT8 = 1, 2


def _policy(observation_space, action_space, seed=0, preset="tiny"):
    torch.manual_seed(seed)
    model = make_backbone("draw-v0", observation_space, action_space, preset=preset)
    actor = Actor(model.feature_size, model.action_size, ActorCriticConfig(hidden=32, layers=1))
    return Policy(model, actor)


def _rollout(env, steps, seed):
    """``steps`` observations of ``env`` under seeded random actions, as a dict of batched arrays."""
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    frames = []
    for _ in range(steps):
        frames.append(obs)
        action = rng.uniform(env.action_space.low, env.action_space.high).astype(env.action_space.dtype)
        obs, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            obs, _ = env.reset()
    return {key: np.stack([frame[key] for frame in frames]) for key in frames[0]}


def _take(batch, index):
    return {key: value[index] for key, value in batch.items()}


@pytest.fixture(scope="module")
def state_export(tmp_path_factory):
    """A tiny DRAW policy for pendulum's float32 vector observations, exported with the default exporter."""
    env = latent_residual.make_env(STATE_ENV)
    policy = _policy(env.observation_space, env.action_space)
    observations = _rollout(env, 12, seed=3)
    env.close()
    directory = tmp_path_factory.mktemp("state") / "export"
    export_policy(policy, directory, env_id=STATE_ENV)
    return policy, directory, observations


@pytest.fixture(scope="module")
def pixel_export(tmp_path_factory):
    """A tiny DRAW policy for pendulum's pixels (uint8 64x64x3 image + float32 velocity), exported."""
    env = latent_residual.make_env(STATE_ENV, pixels=True)
    policy = _policy(env.observation_space, env.action_space, seed=1)
    observations = _rollout(env, 8, seed=4)
    env.close()
    directory = tmp_path_factory.mktemp("pixels") / "export"
    export_policy(policy, directory, env_id=STATE_ENV)
    return policy, directory, observations


@pytest.fixture(params=["state", "pixels"])
def exported(request, state_export, pixel_export):
    return state_export if request.param == "state" else pixel_export


# ----------------------------------------------------------------------------------------------
# The exported files
# ----------------------------------------------------------------------------------------------


def test_export_writes_exactly_the_two_files_and_describes_them(state_export):
    policy, directory, _ = state_export
    assert sorted(path.name for path in directory.iterdir()) == sorted([ONNX_NAME, POLICY_CONFIG_NAME])
    assert_no_temp_files(directory)
    config = json.loads((directory / POLICY_CONFIG_NAME).read_text())
    assert config["onnx_sha256"] == hashlib.sha256((directory / ONNX_NAME).read_bytes()).hexdigest()
    assert config["env_id"] == STATE_ENV
    assert config["backbone_id"] == "draw-v0"
    assert config["backbone_kwargs"] == {"preset": "tiny"}
    assert config["base_fingerprint"] == fingerprint(policy.model)
    assert config["library_version"] == latent_residual.__version__
    assert config["exporter"] == "dynamo"
    assert isinstance(config["opset"], int) and config["opset"] >= 17
    assert config["exported_at"].startswith("20")
    assert config["inputs"] == [
        {"name": "orientation", "dtype": "float32", "shape": [2]},
        {"name": "velocity", "dtype": "float32", "shape": [1]},
    ]
    assert config["output"] == {"name": "action", "dtype": "float32", "shape": [1]}
    assert (config["action_low"], config["action_high"]) == ([-1.0], [1.0])


def test_graph_passes_checker_and_has_the_environments_signature(exported):
    policy, directory, _ = exported
    proto = onnx.load(str(directory / ONNX_NAME))
    onnx.checker.check_model(proto, full_check=True)
    space = policy.model.observation_space
    inputs = {
        value.name: (
            value.type.tensor_type.elem_type,
            [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim],
        )
        for value in proto.graph.input
    }
    assert list(inputs) == list(space.spaces)
    for key, sub in space.spaces.items():
        elem, dims = inputs[key]
        assert elem == (ONNX_UINT8 if sub.dtype == np.uint8 else ONNX_FLOAT), key
        assert isinstance(dims[0], str) and dims[1:] == list(sub.shape), (key, dims)
    (output,) = proto.graph.output
    dims = [d.dim_param or d.dim_value for d in output.type.tensor_type.shape.dim]
    assert output.name == "action" and output.type.tensor_type.elem_type == ONNX_FLOAT
    assert isinstance(dims[0], str) and dims[1:] == [policy.model.action_size]


@pytest.mark.parametrize("batch_size", [1, 5])
def test_onnx_matches_torch_on_environment_observations(exported, batch_size):
    policy, directory, observations = exported
    batch = {key: value[:batch_size] for key, value in observations.items()}
    assert verify_export(directory, policy, batch) <= TOLERANCE
    actions = OnnxPolicy(directory).act_batch(batch)
    assert actions.shape == (batch_size, policy.model.action_size) and actions.dtype == np.float32


def test_single_observation_act_matches_policy_act(exported):
    policy, directory, observations = exported
    runner = OnnxPolicy(directory)
    for index in range(3):
        obs = _take(observations, index)
        expected = np.asarray(policy.act(obs))
        np.testing.assert_allclose(runner.act(obs), expected, atol=TOLERANCE)
        assert runner(obs).shape == (policy.model.action_size,)
    # A list of unbatched observation dicts is accepted too.
    assert verify_export(directory, policy, [_take(observations, i) for i in range(4)]) <= TOLERANCE


def test_actions_are_rescaled_into_a_non_unit_action_space(tmp_path):
    observation_space = spaces.Dict({"state": spaces.Box(-np.inf, np.inf, (3,), np.float32)})
    action_space = spaces.Box(np.array([-2.0, 0.0], np.float32), np.array([2.0, 1.0], np.float32))
    policy = _policy(observation_space, action_space)
    export_policy(policy, tmp_path, opset=17)  # "auto" goes to TorchScript for opsets below 18
    observations = example_observations(observation_space, 64, seed=7)
    observations["state"] *= 3
    assert verify_export(tmp_path, policy, observations) <= TOLERANCE
    actions = OnnxPolicy(tmp_path).act_batch(observations)
    with torch.no_grad():
        unit = policy({key: torch.as_tensor(value) for key, value in observations.items()}).numpy()
    np.testing.assert_allclose(actions, [0.0, 0.5] + unit * [2.0, 0.5], atol=1e-5)
    assert np.all(actions >= action_space.low) and np.all(actions <= action_space.high)
    config = json.loads((tmp_path / POLICY_CONFIG_NAME).read_text())
    assert config["exporter"] == "torchscript" and config["opset"] == 17
    assert (config["action_low"], config["action_high"]) == ([-2.0, 0.0], [2.0, 1.0])


def test_a_model_that_reads_angles_exports_with_them_in_the_graph(tmp_path):
    observation_space = spaces.Dict({"position": spaces.Box(-np.inf, np.inf, (2,), np.float32)})
    action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
    torch.manual_seed(0)
    model = make_backbone("draw-v0", observation_space, action_space, preset="tiny", angles={"position": [0, 1]})
    policy = Policy(model, Actor(model.feature_size, model.action_size, ActorCriticConfig(hidden=32, layers=1)))
    export_policy(policy, tmp_path)
    observations = example_observations(observation_space, 16, seed=3)
    observations["position"] *= 20  # wound far past one turn
    assert verify_export(tmp_path, policy, observations) <= TOLERANCE
    unwound = {"position": np.remainder(observations["position"] + np.pi, 2 * np.pi) - np.pi}
    runner = OnnxPolicy(tmp_path)
    np.testing.assert_allclose(runner.act_batch(observations), runner.act_batch(unwound), atol=1e-5)


def test_auto_falls_back_to_torchscript_when_dynamo_fails(tmp_path, monkeypatch, caplog):
    from latent_residual.workflow.deployment import export

    def broken(*args, **kwargs):
        raise RuntimeError("simulated dynamo failure")

    monkeypatch.setattr(export, "_export_dynamo", broken)
    space = spaces.Dict({"state": spaces.Box(-1, 1, (4,), np.float32)})
    policy = _policy(space, spaces.Box(-1, 1, (1,), np.float32))
    export_policy(policy, tmp_path)
    assert json.loads((tmp_path / POLICY_CONFIG_NAME).read_text())["exporter"] == "torchscript"
    assert "simulated dynamo failure" in caplog.text
    assert verify_export(tmp_path, policy, example_observations(space, 5)) <= TOLERANCE
    with pytest.raises(ExportError, match="simulated dynamo failure"):
        export_policy(policy, tmp_path / "again", exporter="dynamo")
    assert not (tmp_path / "again" / ONNX_NAME).exists()


def test_adapted_model_exports_with_the_base_fingerprint(tmp_path, state_export):
    policy, _, observations = state_export
    adapted = attach_residual(policy.model)
    adapted_policy = Policy(adapted, policy.actor)
    export_policy(adapted_policy, tmp_path)
    config = json.loads((tmp_path / POLICY_CONFIG_NAME).read_text())
    assert config["base_fingerprint"] == fingerprint(policy.model)
    assert verify_export(tmp_path, adapted_policy, observations) <= TOLERANCE


def test_reexport_replaces_files_atomically(tmp_path, state_export):
    policy, _, observations = state_export
    export_policy(policy, tmp_path, exporter="torchscript")
    first = (tmp_path / ONNX_NAME).read_bytes()
    export_policy(policy, tmp_path, exporter="torchscript", opset=18)
    assert (tmp_path / ONNX_NAME).read_bytes() != first
    assert json.loads((tmp_path / POLICY_CONFIG_NAME).read_text())["opset"] == 18
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted([ONNX_NAME, POLICY_CONFIG_NAME])
    assert_no_temp_files(tmp_path)


# ----------------------------------------------------------------------------------------------
# What cannot be exported
# ----------------------------------------------------------------------------------------------


def test_bad_spaces_and_arguments_are_named(tmp_path):
    space = spaces.Dict({"state": spaces.Box(-1, 1, (2,), np.float32)})
    policy = _policy(space, spaces.Box(-1, 1, (1,), np.float32))
    policy.model.observation_space = spaces.Box(-1, 1, (2,), np.float32)
    with pytest.raises(ConfigError, match="Dict observation space"):
        export_policy(policy, tmp_path)
    policy.model.observation_space = space
    policy.model.action_space = spaces.Box(-np.inf, np.inf, (1,), np.float32)
    with pytest.raises(ConfigError, match="bounded"):
        export_policy(policy, tmp_path)
    policy.model.action_space = spaces.Discrete(3)
    with pytest.raises(ConfigError, match="Box action space"):
        export_policy(policy, tmp_path)
    policy.model.action_space = spaces.Box(-1, 1, (1,), np.float32)
    with pytest.raises(ConfigError, match="exporter"):
        export_policy(policy, tmp_path, exporter="tracing")
    with pytest.raises(ConfigError, match="opset"):
        export_policy(policy, tmp_path, opset="18")
    with pytest.raises(ConfigError, match="Policy"):
        export_policy(policy.model, tmp_path)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------------------------
# OnnxPolicy, the torch-free runner
# ----------------------------------------------------------------------------------------------


def test_onnx_policy_names_the_key_expected_and_received(pixel_export):
    _, directory, observations = pixel_export
    runner = OnnxPolicy(directory / ONNX_NAME)  # the .onnx path works as well as the directory
    obs = _take(observations, 0)
    with pytest.raises(KeyError, match=r"\['velocity'\]"):
        runner.act({"image": obs["image"]})
    with pytest.raises(ValueError, match="velocity"):  # the missing-key error is a ValueError too
        runner.act({"image": obs["image"]})
    with pytest.raises(TypeError, match=r"'velocity' has dtype float64, expected float32"):
        runner.act({**obs, "velocity": obs["velocity"].astype(np.float64)})
    with pytest.raises(TypeError, match=r"'image' has dtype float32, expected uint8"):
        runner.act({**obs, "image": obs["image"].astype(np.float32)})
    with pytest.raises(ValueError, match=r"'image' has shape \(32, 32, 3\), expected \(64, 64, 3\)"):
        runner.act({**obs, "image": obs["image"][:32, :32]})
    with pytest.raises(ValueError, match="use act_batch"):
        runner.act({key: value[:2] for key, value in observations.items()})
    with pytest.raises(ValueError, match="use act\\b"):
        runner.act_batch(obs)
    with pytest.raises(ValueError, match="batch size"):
        runner.act_batch({"image": observations["image"][:2], "velocity": observations["velocity"][:3]})
    # Extra keys are ignored; the result is unchanged, whatever the thread count.
    np.testing.assert_array_equal(runner.act({**obs, "extra": np.zeros(3)}), runner.act(obs))
    np.testing.assert_array_equal(OnnxPolicy(directory, threads=1).act(obs), runner.act(obs))
    with pytest.raises(ValueError, match="threads"):
        OnnxPolicy(directory, threads=0)


def test_onnx_policy_refuses_mismatched_files(tmp_path, state_export, pixel_export):
    shutil.copytree(pixel_export[1], tmp_path / "mixed")
    shutil.copy(state_export[1] / ONNX_NAME, tmp_path / "mixed" / ONNX_NAME)
    with pytest.raises(ValueError, match="same export"):
        OnnxPolicy(tmp_path / "mixed")
    (tmp_path / "lonely").mkdir()
    shutil.copy(state_export[1] / ONNX_NAME, tmp_path / "lonely" / ONNX_NAME)
    with pytest.raises(FileNotFoundError, match=POLICY_CONFIG_NAME):
        OnnxPolicy(tmp_path / "lonely")
    with pytest.raises(FileNotFoundError, match="no such export"):
        OnnxPolicy(tmp_path / "nowhere")


def test_onnx_policy_refuses_a_description_naming_an_output_the_graph_lacks(tmp_path, state_export):
    # A policy.json that promises the coverage alarm beside a graph without it: refused at load, not at the first step.
    shutil.copytree(state_export[1], tmp_path / "promised")
    config_path = tmp_path / "promised" / POLICY_CONFIG_NAME
    description = json.loads(config_path.read_text())
    description["surprise"] = {"output": "surprise", "dtype": "float32", "shape": [], "threshold": 1.0}
    config_path.write_text(json.dumps(description))
    with pytest.raises(ValueError, match=r"also names \['surprise'\]; copy both files from the same export"):
        OnnxPolicy(tmp_path / "promised")


def test_onnx_policy_runs_without_torch(state_export, tmp_path):
    """The runner imports no torch, and its one file works copied onto a robot without the library."""
    import shutil

    from latent_residual import onnx_policy as runner_module

    directory = state_export[1]
    shutil.copy(runner_module.__file__, tmp_path / "onnx_policy.py")
    script = (
        "import sys, numpy as np\n"
        f"sys.path.insert(0, {str(tmp_path)!r})\n"
        "from onnx_policy import OnnxPolicy\n"
        f"policy = OnnxPolicy({str(directory)!r})\n"
        "obs = {key: np.zeros(shape, dtype) for key, (dtype, shape) in policy.inputs.items()}\n"
        "print(policy.act(obs).shape)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "assert 'latent_residual' not in sys.modules, 'the library was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(1,)"
    assert "import torch" not in Path(onnxruntime_policy.__file__).read_text()


def test_run_episode_with_a_bare_gymnasium_env(state_export):
    _, directory, _ = state_export
    env = gymnasium.wrappers.TimeLimit(latent_residual.make_env(STATE_ENV), max_episode_steps=15)
    runner = OnnxPolicy(directory)
    result = run_episode(env, runner, seed=0)
    assert result["length"] == 15 and result["truncated"] and np.isfinite(result["return"])
    assert run_episode(env, runner, seed=0) == result  # deterministic policy, seeded env
    assert run_episode(env, runner, seed=0, max_steps=4)["length"] == 4
    env.close()
    wrong = gymnasium.make("Pendulum-v1")
    with pytest.raises(ValueError, match="Dict observation space"):
        run_episode(wrong, runner, seed=0)


# ----------------------------------------------------------------------------------------------
# The Duckiebot node's pure parts (rospy is not needed)
# ----------------------------------------------------------------------------------------------


def _jpeg(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def test_decode_frame_resizes_camera_jpegs():
    from latent_residual_integrations.safety import decode_frame

    frame = np.zeros((480, 640, 3), np.uint8)
    frame[:, :320] = (200, 30, 30)  # left half red, right half blue
    frame[:, 320:] = (30, 30, 200)
    image = decode_frame(_jpeg(frame))
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert np.abs(image[:, :28].astype(int) - (200, 30, 30)).max() < 12
    assert np.abs(image[:, 36:].astype(int) - (30, 30, 200)).max() < 12
    cropped = decode_frame(_jpeg(frame), 32, crop_square=True)  # the centre 480x480 square
    assert cropped.shape == (32, 32, 3)


def test_action_to_wheels_uses_the_twins_kinematics():
    from latent_residual_integrations.safety import action_to_wheels, wheel_velocity
    from latent_residual_plugins.duckiebot.robot import Calibration

    # Full speed ahead: 0.5 m/s on 0.0318 m wheels is 15.7 rad/s, over k = 27 a duty of 0.582.
    left, right = action_to_wheels([1.0, 0.0])
    assert left == pytest.approx(0.5 / 0.0318 / 27.0) and right == pytest.approx(left)
    # Turn on the spot, counter-clockwise at 5 rad/s: wheels at -/+ 0.25 m/s.
    left, right = action_to_wheels(np.array([0.0, 1.0], np.float32))
    assert right == pytest.approx(0.25 / 0.0318 / 27.0) and left == pytest.approx(-right)
    assert action_to_wheels([5.0, 0.0]) == action_to_wheels([1.0, 0.0])  # clipped to the action space
    trimmed = Calibration(trim=0.1, limit=0.6)
    left, right = action_to_wheels([1.0, 0.0], trimmed)
    assert left == pytest.approx(0.5 / 0.0318 * 0.9 / 27.0) and right == 0.6  # limited
    # Encoder ticks back to the velocity observation [yaw rate / 5, speed / 0.5].
    ticks = 0.25 / (2 * np.pi * 0.0318) * 135  # 0.25 m/s for one second
    np.testing.assert_allclose(wheel_velocity(ticks, ticks, 1.0), [0.0, 0.5], atol=1e-6)
    np.testing.assert_allclose(wheel_velocity(-ticks, ticks, 1.0), [1.0, 0.0], atol=1e-6)  # 5 rad/s


# The node's arguments and its controller, with faults injected, are tested in test_safety.py
# (without ROS) and test_ros2_node.py (over ROS 2).


# ----------------------------------------------------------------------------------------------
# Recurrent policies: the state goes in and out of the graph
# ----------------------------------------------------------------------------------------------

DRIFT_ENV = "testplug/drift-v0"


@pytest.fixture(scope="module")
def recurrent_export(tmp_path_factory, registry, gru_model):
    """The test GRU backbone's policy (its posterior reads the recurrent state), exported."""
    torch.manual_seed(5)
    actor = Actor(gru_model.feature_size, gru_model.action_size, ActorCriticConfig(hidden=32, layers=1))
    policy = Policy(gru_model, actor).eval()
    directory = tmp_path_factory.mktemp("recurrent") / "export"
    export_policy(policy, directory, env_id=DRIFT_ENV)
    return policy, directory


def test_a_recurrent_policy_carries_its_state_and_reset_forgets_it(recurrent_export):
    policy, _ = recurrent_export
    obs = {"position": np.array([0.3, -0.2], np.float32)}
    with pytest.raises(ConfigError, match="not memoryless.*step"):
        policy({"position": torch.zeros(1, 2)})
    policy.reset()
    first = policy.act(obs)
    second = policy.act(obs)
    policy.reset()
    assert np.array_equal(policy.act(obs), first)
    assert not np.allclose(first, second)  # the same observation after another history


def test_a_recurrent_export_takes_and_returns_the_state(recurrent_export):
    policy, directory = recurrent_export
    description = json.loads((directory / POLICY_CONFIG_NAME).read_text())
    assert description["format_version"] == 2
    assert [item["key"] for item in description["recurrent"]["state"]] == sorted(policy.state_shapes)
    graph = onnx.load(directory / ONNX_NAME).graph
    assert [value.name for value in graph.input] == [
        "position",
        "state_deter",
        "state_stoch",
        "prev_action",
        "is_first",
    ]
    assert [value.name for value in graph.output] == ["action", "next_state_deter", "next_state_stoch"]
    runner = OnnxPolicy(directory)
    assert runner.recurrent and "state=" in repr(runner)
    with pytest.raises(ValueError, match="recurrent.*act\\(\\) step by step"):
        runner.act_batch({"position": np.zeros((2, 2), np.float32)})


def test_a_recurrent_export_matches_torch_at_every_step_of_whole_episodes(recurrent_export):
    policy, directory = recurrent_export
    assert verify_episodes(directory, policy, DRIFT_ENV, steps=200, seed=3) <= TOLERANCE  # 5 episodes of 40 steps
    steps = [{"position": np.array([0.1 * t, -0.05 * t], np.float32)} for t in range(12)]
    assert verify_export(directory, policy, steps) <= TOLERANCE


def test_the_runner_batches_recurrent_steps(recurrent_export):
    _, directory = recurrent_export
    runner = OnnxPolicy(directory)
    observations = [{"position": np.array([0.1 * t, 0.2], np.float32)} for t in range(6)]
    runner.reset()
    one_by_one = [runner.act(obs) for obs in observations]
    state, prev_action = runner.blank_state(2)
    for t, obs in enumerate(observations):
        batch = {"position": np.stack([obs["position"]] * 2)}
        prev_action, state = runner.step_batch(batch, state, prev_action, np.array([t == 0, t == 0]))
        assert np.allclose(prev_action, one_by_one[t], atol=1e-6)
    env = latent_residual.make_env(DRIFT_ENV)
    assert run_episode(env, runner, seed=0)["length"] == 40


def test_the_old_runner_module_still_works_with_a_deprecation_warning():
    import importlib

    import latent_residual.onnx_policy as runner

    with pytest.warns(DeprecationWarning, match="latent_residual.onnx_policy"):
        import latent_residual_integrations.onnxruntime_policy as alias

        importlib.reload(alias)
    assert alias.OnnxPolicy is runner.OnnxPolicy and alias.run_episode is runner.run_episode
