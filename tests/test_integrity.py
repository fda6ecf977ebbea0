"""Fault injection: corrupt weights, NaN inputs, bad data, a fit that cannot beat the base, CLI misuse and
killed writers. Each fault must be refused where it enters, with one clear message naming what is wrong.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_no_temp_files, drift_sequences
from gymnasium import spaces
from safetensors.torch import load_file, save_file

from latent_residual import (
    AdapterFileError,
    CheckpointError,
    DatasetError,
    FitConfig,
    FitError,
    ResidualConfig,
    attach_residual,
    fingerprint,
    fit_residual,
    load_adapter,
    make_backbone,
    read_adapter_info,
)
from latent_residual import onnx_policy as runner
from latent_residual.actor_critic import Actor, ActorCritic, ActorCriticConfig, load_actor_critic, save_actor_critic
from latent_residual.adapters import ADAPTER_WEIGHTS_NAME
from latent_residual.checkpoints import MODEL_WEIGHTS_NAME, read_world_model, save_world_model
from latent_residual.errors import ExportError, NonFiniteObservationError
from latent_residual.fitting import finetune_dynamics
from latent_residual.onnx_policy import ONNX_NAME, POLICY_CONFIG_NAME, OnnxPolicy, PolicyFileError
from latent_residual.serialization import atomic_write_directory, clean_orphans, write_text
from latent_residual.workflow import paths
from latent_residual.workflow.cli.main import main
from latent_residual.workflow.data.collection import collect
from latent_residual.workflow.data.datasets import EPISODES_DIR_NAME, DatasetWriter, episode_file_name, load_dataset
from latent_residual.workflow.deployment.export import export_policy
from latent_residual.workflow.deployment.loading import load_world_model
from latent_residual.workflow.deployment.policy import Policy

DRIFT_ENV = "testplug/drift-v0"
ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "plugins").glob("*/pretrained/*/world_model"))


def dead_pid() -> int:
    """The id of a process that has exited (and been reaped): what a killed writer leaves in its names."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def flip_byte(path: Path, offset_from_end: int = 3) -> None:
    """Flip the low bit of one byte in the data section (the tensors are at the end of a safetensors file)."""
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= 0x01
    path.write_bytes(bytes(data))


def rewrite(path: Path, change) -> None:
    """Rewrite a safetensors file with ``change(tensors, metadata)`` applied (a tampered or old file)."""
    tensors = load_file(str(path))
    with path.open("rb") as handle:
        header_len = int.from_bytes(handle.read(8), "little")
        metadata = json.loads(handle.read(header_len)).get("__metadata__", {})
    change(tensors, metadata)
    save_file(tensors, str(path), metadata=metadata)


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


# ----------------------------------------------------------------------------------------------
# Weights checked on load
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("directory", SHIPPED, ids=[path.parent.name for path in SHIPPED])
def test_shipped_checkpoints_carry_the_fingerprint_of_their_weights(registry, directory):
    config, _ = read_world_model(directory)  # verifies the fingerprint
    assert config["fingerprint"] == fingerprint(load_world_model(directory))


def test_a_flipped_byte_in_model_safetensors_is_refused_naming_both_fingerprints(gru_model, tmp_path):
    save_world_model(gru_model, tmp_path)
    recorded = fingerprint(gru_model)
    flip_byte(tmp_path / MODEL_WEIGHTS_NAME)
    with pytest.raises(CheckpointError) as error:
        load_world_model(tmp_path)
    message = str(error.value)
    assert str(tmp_path / MODEL_WEIGHTS_NAME) in message and recorded in message
    assert message.count("sha256:") == 2


def test_a_checkpoint_written_before_fingerprints_still_loads(gru_model, tmp_path):
    save_world_model(gru_model, tmp_path)
    rewrite(tmp_path / MODEL_WEIGHTS_NAME, lambda tensors, metadata: metadata.pop("fingerprint"))
    assert fingerprint(load_world_model(tmp_path)) == fingerprint(gru_model)


def test_nan_weights_are_refused(gru_model, tmp_path):
    broken = make_backbone("gru-v0", gru_model.observation_space, gru_model.action_space)
    broken.load_state_dict(gru_model.state_dict())
    name, parameter = next(iter(broken.named_parameters()))
    with torch.no_grad():
        parameter.view(-1)[0] = float("nan")
    save_world_model(broken, tmp_path)  # its fingerprint matches: only the values are wrong
    with pytest.raises(CheckpointError, match=rf"tensor '{name}' holds non-finite values \(1 NaN, 0 infinite\)"):
        load_world_model(tmp_path)


def test_adapter_files_record_and_verify_their_fingerprint(gru_model, tmp_path):
    adapted = attach_residual(gru_model, ResidualConfig(hidden=8))
    adapted.save_pretrained(tmp_path / "adapter")
    path = tmp_path / "adapter" / ADAPTER_WEIGHTS_NAME
    stored = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["fingerprint"]
    assert stored == fingerprint(adapted.residuals["default"])
    flip_byte(path)
    with pytest.raises(AdapterFileError, match="fingerprint") as error:
        load_adapter(gru_model, tmp_path / "adapter", trainable=False)
    assert stored in str(error.value) and str(path) in str(error.value)


def test_an_adapter_written_before_fingerprints_still_loads(gru_model, tmp_path):
    adapted = attach_residual(gru_model, ResidualConfig(hidden=8))
    adapted.save_pretrained(tmp_path)
    rewrite(tmp_path / ADAPTER_WEIGHTS_NAME, lambda tensors, metadata: metadata.pop("fingerprint"))
    loaded = load_adapter(gru_model, tmp_path, trainable=False)
    assert fingerprint(loaded.residuals["default"]) == fingerprint(adapted.residuals["default"])


@pytest.mark.parametrize("dtype", [torch.int32, torch.bool, torch.float64])
@pytest.mark.parametrize("keep_fingerprint", [True, False])
def test_adapter_tensors_of_another_dtype_are_refused_not_cast(gru_model, tmp_path, dtype, keep_fingerprint):
    adapted = attach_residual(gru_model, ResidualConfig(hidden=8))
    adapted.save_pretrained(tmp_path)

    def cast(tensors, metadata):
        key = sorted(tensors)[0]
        tensors[key] = tensors[key].to(dtype)
        if not keep_fingerprint:
            metadata.pop("fingerprint")

    rewrite(tmp_path / ADAPTER_WEIGHTS_NAME, cast)
    with pytest.raises(AdapterFileError, match=rf"dtype mismatch .*: file {str(dtype)[6:]} vs float32"):
        load_adapter(gru_model, tmp_path, trainable=False)


def test_nan_adapter_weights_are_refused_and_nothing_is_attached(gru_model, tmp_path):
    adapted = attach_residual(gru_model, ResidualConfig(hidden=8))
    with torch.no_grad():
        next(adapted.residuals["default"].parameters()).view(-1)[0] = float("inf")
    adapted.save_pretrained(tmp_path)
    model = attach_residual(gru_model, adapter_name="other")
    with pytest.raises(AdapterFileError, match="non-finite values"):
        model.load_adapter(tmp_path, trainable=False)
    assert model.adapters == ["other"]


def test_actor_critic_files_record_and_verify_their_fingerprint(tmp_path):
    actor_critic = ActorCritic(6, 2, ActorCriticConfig(hidden=16, layers=1))
    save_actor_critic(actor_critic, tmp_path / "ac.safetensors")
    assert fingerprint(load_actor_critic(tmp_path / "ac.safetensors")) == fingerprint(actor_critic)
    rewrite(tmp_path / "ac.safetensors", lambda tensors, metadata: tensors["net.actor.net.body.0.bias"].mul_(2))
    with pytest.raises(CheckpointError, match="fingerprint"):
        load_actor_critic(tmp_path / "ac.safetensors")


def test_malformed_adapter_metadata_names_the_file_and_key(gru_model, tmp_path):
    attach_residual(gru_model, ResidualConfig(hidden=8)).save_pretrained(tmp_path)
    rewrite(tmp_path / ADAPTER_WEIGHTS_NAME, lambda tensors, metadata: metadata.update(latent_spec="{not json"))
    with pytest.raises(AdapterFileError, match=r"adapter.safetensors: metadata key 'latent_spec' is not valid JSON"):
        load_adapter(gru_model, tmp_path, trainable=False)


BOX = {"type": "Box", "shape": [2], "dtype": "float32", "low": -1.0, "high": 1.0}


def one_line_naming(error: pytest.ExceptionInfo, path: Path, key: str) -> str:
    message = str(error.value)
    assert str(path) in message and f"'{key}'" in message and "\n" not in message, message
    return message


@pytest.mark.parametrize(
    "key, value, pattern",
    [
        # Each malformed space used to leak a bare KeyError, AttributeError or TypeError from Gymnasium.
        ("observation_space", {"type": "Dict"}, r"key 'observation_space' is a Dict whose 'spaces' is None"),
        ("observation_space", 3, r"key 'observation_space' is 3, expected a JSON object"),
        (
            "observation_space",
            {"type": "Dict", "spaces": {"position": {**BOX, "dtype": "nonsense"}}},
            r"key 'observation_space'\['position'\] is not a valid Box: data type 'nonsense' not understood",
        ),
        (
            "observation_space",
            {"type": "Dict", "spaces": {"position": {**BOX, "shape": "2"}}},
            r"key 'observation_space'\['position'\] has shape '2', expected a list of integers",
        ),
        (
            "observation_space",
            {"type": "Dict", "spaces": {"position": {**BOX, "shape": [3]}}},
            r"weights do not fit .* built from keys .*'observation_space'",
        ),
        ("observation_space", {"type": "Discrete", "n": 3}, r"key 'observation_space' is type 'Discrete'"),
        (
            "action_space",
            {k: v for k, v in BOX.items() if k != "dtype"},
            r"key 'action_space' is a Box without 'dtype'",
        ),
        ("action_space", {**BOX, "low": "a"}, r"key 'action_space' is not a valid Box: could not convert"),
        ("action_space", {**BOX, "low": 2.0}, r"key 'action_space' is not a valid Box: .*low values must be less"),
        ("backbone_id", None, r"key 'backbone_id' is None, expected a string"),
        ("backbone_id", "nosuch-v0", r"key 'backbone_id': No backbone registered as 'nosuch-v0'"),
        ("backbone_kwargs", [1], r"key 'backbone_kwargs' is \[1\], expected a JSON object"),
        ("backbone_kwargs", {"bogus": 1}, r"keys 'backbone_kwargs', .* do not build backbone 'gru-v0': .*bogus"),
        ("backbone_kwargs", {"groups": -1}, r"keys 'backbone_kwargs', .* do not build backbone 'gru-v0': .*groups"),
        ("extra", [1], r"key 'extra' is \[1\], expected a JSON object"),
        ("fingerprint", "sha256:00", r"key 'fingerprint' is 'sha256:00', expected 'sha256:' and 64 hex digits"),
    ],
)
def test_malformed_world_model_metadata_names_the_file_and_key(gru_model, tmp_path, key, value, pattern):
    save_world_model(gru_model, tmp_path)
    path = tmp_path / MODEL_WEIGHTS_NAME
    rewrite(path, lambda tensors, metadata: metadata.update({key: json.dumps(value)}))
    with pytest.raises(CheckpointError, match=pattern) as error:
        load_world_model(tmp_path)
    one_line_naming(error, path, key)


@pytest.mark.parametrize("key", ["backbone_id", "backbone_kwargs", "observation_space", "extra"])
def test_inspect_names_a_world_model_key_of_the_wrong_type(gru_model, tmp_path, capsys, key):
    save_world_model(gru_model, tmp_path)
    rewrite(tmp_path / MODEL_WEIGHTS_NAME, lambda tensors, metadata: metadata.update({key: "[1]"}))
    assert main(["inspect", str(tmp_path)]) == 1
    line = one_line_error(capsys)
    assert str(tmp_path / MODEL_WEIGHTS_NAME) in line and f"key {key!r} is [1]" in line


def test_a_checkpoint_value_that_is_not_json_names_its_key(gru_model, tmp_path):
    save_world_model(gru_model, tmp_path)
    rewrite(tmp_path / MODEL_WEIGHTS_NAME, lambda tensors, metadata: metadata.update(backbone_kwargs="{not json"))
    with pytest.raises(CheckpointError, match=r"metadata key 'backbone_kwargs' is not valid JSON") as error:
        read_world_model(tmp_path)
    one_line_naming(error, tmp_path / MODEL_WEIGHTS_NAME, "backbone_kwargs")


@pytest.mark.parametrize(
    "key, value, pattern",
    [
        ("adapter_name", "", r"key 'adapter_name' is ''; an adapter name must be non-empty"),
        ("adapter_name", "a/b", r"key 'adapter_name' is 'a/b'"),
        ("config", "[1]", r"key 'config' is \[1\], expected a JSON object"),
        ("config", '{"hidden": -1}', r"key 'config': cannot build ResidualConfig: ResidualConfig.hidden must be"),
        ("config", '{"hidden": 8, "extra_inputs": 3}', r"key 'config': cannot build ResidualConfig"),
        ("latent_spec", "3", r"key 'latent_spec' is 3, expected a JSON object"),
        (
            "latent_spec",
            '{"groups": 4}',
            r"key 'latent_spec' is \{'groups': 4\}: expected the keys 'groups' and 'classes'",
        ),
        ("latent_spec", '{"groups": 4, "classes": 0}', r"key 'latent_spec' .*LatentSpec.classes must be"),
        ("base_fingerprint", "abc", r"key 'base_fingerprint' is 'abc', expected 'sha256:'"),
        ("fingerprint", "3", r"key 'fingerprint' is '3', expected 'sha256:'"),
        ("adapter_type", "lora", r"key 'adapter_type' is 'lora' but key 'config' says"),
        ("data_summary", "[1]", r"key 'data_summary' is \[1\], expected a JSON object"),
        ("backbone_kwargs", "3", r"key 'backbone_kwargs' is 3, expected a JSON object"),
    ],
)
def test_malformed_adapter_metadata_is_refused_by_load_and_inspect(gru_model, tmp_path, capsys, key, value, pattern):
    attach_residual(gru_model, ResidualConfig(hidden=8)).save_pretrained(tmp_path)
    path = tmp_path / ADAPTER_WEIGHTS_NAME
    rewrite(path, lambda tensors, metadata: metadata.update({key: value}))
    with pytest.raises(AdapterFileError, match=pattern) as error:
        load_adapter(gru_model, tmp_path, trainable=False)
    one_line_naming(error, path, key)
    with pytest.raises(AdapterFileError, match=pattern):
        read_adapter_info(tmp_path)
    assert main(["inspect", str(tmp_path)]) == 1
    assert f"{path}: " in one_line_error(capsys)


def test_an_adapter_config_naming_inputs_its_base_lacks_names_the_key(gru_model, tmp_path):
    attach_residual(gru_model, ResidualConfig(hidden=8)).save_pretrained(tmp_path)
    path = tmp_path / ADAPTER_WEIGHTS_NAME
    rewrite(
        path,
        lambda tensors, metadata: metadata.update(
            config=json.dumps({**json.loads(metadata["config"]), "extra_inputs": ["nope"]})
        ),
    )
    with pytest.raises(
        AdapterFileError, match=r"key 'config' names extra_inputs \['nope'\], not in the state"
    ) as error:
        load_adapter(gru_model, tmp_path, trainable=False)
    one_line_naming(error, path, "config")


def test_an_adapter_config_that_builds_another_network_names_the_key(gru_model, tmp_path):
    attach_residual(gru_model, ResidualConfig(hidden=8)).save_pretrained(tmp_path)
    path = tmp_path / ADAPTER_WEIGHTS_NAME
    rewrite(
        path,
        lambda tensors, metadata: metadata.update(config=json.dumps({**json.loads(metadata["config"]), "hidden": 16})),
    )
    with pytest.raises(AdapterFileError, match=r"weights do not fit ResidualNet: .* built from key 'config'") as error:
        load_adapter(gru_model, tmp_path, trainable=False)
    one_line_naming(error, path, "config")


# ----------------------------------------------------------------------------------------------
# Observations checked where they enter a policy
# ----------------------------------------------------------------------------------------------

STATE_SPACE = spaces.Dict({"state": spaces.Box(-1, 1, (4,), np.float32)})


@pytest.fixture(scope="module")
def state_policy(registry, tmp_path_factory):
    torch.manual_seed(0)
    model = make_backbone("draw-v0", STATE_SPACE, spaces.Box(-1, 1, (1,), np.float32), preset="tiny")
    policy = Policy(model, Actor(model.feature_size, model.action_size, ActorCriticConfig(hidden=16, layers=1))).eval()
    directory = tmp_path_factory.mktemp("integrity") / "export"
    export_policy(policy, directory, exporter="torchscript")
    return policy, directory


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_policy_and_runner_refuse_non_finite_observations_naming_the_key(state_policy, bad):
    policy, directory = state_policy
    obs = {"state": np.array([0.1, bad, 0.0, 0.2], np.float32)}
    with pytest.raises(NonFiniteObservationError, match="Observation 'state' holds non-finite values"):
        policy.act(obs)
    with pytest.raises(ValueError, match="'state'"):  # the runner's class is a ValueError too
        policy.act({"state": torch.as_tensor(obs["state"])})
    onnx = OnnxPolicy(directory, providers=["CPUExecutionProvider"])
    for call in (
        lambda: onnx.act(obs),
        lambda: onnx.act_batch({"state": obs["state"][None]}),
        lambda: onnx.step_batch({"state": obs["state"][None]}, {}, np.zeros((1, 1), np.float32), np.array([True])),
    ):
        with pytest.raises(
            runner.NonFiniteObservationError, match="Observation 'state' holds non-finite values"
        ) as error:
            call()
        assert isinstance(error.value, ValueError) and "\n" not in str(error.value)
    finite = {"state": np.array([0.1, 0.5, 0.0, 0.2], np.float32)}
    np.testing.assert_allclose(onnx.act(finite), policy.act(finite), atol=1e-4)


@pytest.mark.parametrize(
    "text, message",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"format": "latent-residual-onnx-policy", "format_version": 2}', "malformed policy description"),
    ],
)
def test_a_malformed_policy_json_is_named(state_policy, tmp_path, text, message):
    _, directory = state_policy
    shutil.copytree(directory, tmp_path / "copy")
    (tmp_path / "copy" / POLICY_CONFIG_NAME).write_text(text)
    with pytest.raises(PolicyFileError, match=message) as error:
        OnnxPolicy(tmp_path / "copy")
    assert str(tmp_path / "copy" / POLICY_CONFIG_NAME) in str(error.value)


# ----------------------------------------------------------------------------------------------
# Datasets: values checked when written and when loaded
# ----------------------------------------------------------------------------------------------


def drift_writer(directory: Path, drift_spaces, **kwargs) -> DatasetWriter:
    observation_space, action_space = drift_spaces
    return DatasetWriter(
        directory, env_id=DRIFT_ENV, observation_space=observation_space, action_space=action_space, **kwargs
    )


def drift_episode(steps: int = 6, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    action = rng.uniform(-1, 1, (steps, 2)).astype(np.float32)
    action[-1] = 0.0
    return {
        "position": rng.normal(size=(steps, 2)).astype(np.float32),
        "action": action,
        "reward": rng.normal(size=steps).astype(np.float32),
        "is_first": np.arange(steps) == 0,
        "is_last": np.arange(steps) == steps - 1,
        "is_terminal": np.zeros(steps, bool),
    }


@pytest.mark.parametrize(
    "key, index, value, message",
    [
        ("position", (3, 1), np.nan, r"key 'position' holds a non-finite value at step 3 \(nan\)"),
        ("action", (2, 0), np.inf, r"key 'action' holds a non-finite value at step 2 \(inf\)"),
        (
            "action",
            (5, 0),
            -np.inf,
            r"key 'action' holds a non-finite value at step 5 \(-inf\)",
        ),  # even the final, unsent one
        ("reward", (4,), np.nan, r"key 'reward' holds a non-finite value at step 4"),
        ("action", (1, 1), 1.5, r"key 'action' at step 1 is \[.*1.5\], outside the action space \[-1.0, 1.0\]"),
        ("action", (4, 0), -1.0001, r"key 'action' at step 4 is .*outside the action space"),
    ],
)
def test_the_writer_refuses_bad_values_naming_file_key_and_step(tmp_path, drift_spaces, key, index, value, message):
    writer = drift_writer(tmp_path, drift_spaces)
    episode = drift_episode()
    episode[key][index] = value
    with pytest.raises(DatasetError, match=message) as error:
        writer.add_episode(episode)
    assert str(tmp_path / EPISODES_DIR_NAME / episode_file_name(0)) in str(error.value)
    assert not (tmp_path / EPISODES_DIR_NAME).exists() and writer.episodes == 0
    writer.add_episode(drift_episode())  # the writer is still usable


def test_the_writer_clips_actions_only_when_asked(tmp_path, drift_spaces):
    episode = drift_episode()
    episode["action"][1] = [1.5, -3.0]
    writer = drift_writer(tmp_path, drift_spaces, clip_actions=True)
    writer.add_episode(episode)
    assert episode["action"][1].tolist() == [1.5, -3.0]  # the caller's arrays are not modified
    stored = load_dataset(tmp_path).episodes[0]["action"]
    assert stored[1].tolist() == [1.0, -1.0]
    np.testing.assert_array_equal(stored[2:], episode["action"][2:])
    episode["position"][0, 0] = np.nan  # clipping never hides a NaN
    with pytest.raises(DatasetError, match="non-finite"):
        writer.add_episode(episode)


def test_the_final_unsent_action_only_has_to_be_finite(tmp_path):
    # An action space without 0: the final step's zero action was never sent to the environment.
    observation_space = spaces.Dict({"position": spaces.Box(-np.inf, np.inf, (2,), np.float32)})
    writer = DatasetWriter(
        tmp_path,
        env_id=DRIFT_ENV,
        observation_space=observation_space,
        action_space=spaces.Box(0.5, 1.0, (2,), np.float32),
    )
    episode = drift_episode()
    episode["action"][:-1] = 0.75
    writer.add_episode(episode)
    assert len(load_dataset(tmp_path).episodes) == 1


def test_collected_data_passes_the_checks(registry, tmp_path):
    dataset = collect(
        DRIFT_ENV, "random", tmp_path, transitions=50, noise=2.0, quiet=True
    )  # noise pushes past the bounds, collect clips
    assert np.abs(dataset.episodes[0]["action"]).max() <= 1.0


@pytest.mark.parametrize(
    "key, index, value, message",
    [
        ("position", (2, 0), np.nan, r"key 'position' holds a non-finite value at step 2"),
        ("action", (3, 1), np.inf, r"key 'action' holds a non-finite value at step 3"),
        ("action", (1, 0), np.nan, r"key 'action' holds a non-finite value at step 1"),
        (
            "action",
            (4, 1),
            2.0,
            r"key 'action' at step 4 is .*outside the action space.*load_dataset\(\.\.\., clip_actions=True\)",
        ),
    ],
)
def test_loading_refuses_bad_values_naming_file_key_and_step(tmp_path, drift_spaces, key, index, value, message):
    writer = drift_writer(tmp_path, drift_spaces)
    writer.add_episode(drift_episode(seed=1))
    writer.add_episode(drift_episode(seed=2))
    path = tmp_path / EPISODES_DIR_NAME / episode_file_name(1)

    def corrupt(tensors, metadata):
        tensors[key][index] = value

    rewrite(path, corrupt)
    with pytest.raises(DatasetError, match=message) as error:
        load_dataset(tmp_path)
    assert str(path) in str(error.value)


def test_loading_clips_out_of_range_actions_when_asked(tmp_path, drift_spaces):
    drift_writer(tmp_path, drift_spaces).add_episode(drift_episode())
    path = tmp_path / EPISODES_DIR_NAME / episode_file_name(0)
    rewrite(path, lambda tensors, metadata: tensors["action"][2].copy_(torch.tensor([7.0, -7.0])))
    assert load_dataset(tmp_path, clip_actions=True).episodes[0]["action"][2].tolist() == [1.0, -1.0]
    assert load_file(str(path))["action"][2].tolist() == [7.0, -7.0]  # the file itself is left as it is


def test_a_malformed_dataset_json_is_named(tmp_path, drift_spaces):
    drift_writer(tmp_path, drift_spaces).add_episode(drift_episode())
    (tmp_path / "dataset.json").write_text('{"format": "latent-residual-dataset",')
    with pytest.raises(DatasetError, match=r"dataset.json: not JSON") as error:
        load_dataset(tmp_path)
    assert str(tmp_path / "dataset.json") in str(error.value)


@pytest.mark.parametrize(
    "key, value, pattern",
    [
        ("observation_space", {"type": "Dict"}, r"key 'observation_space' is a Dict whose 'spaces' is None"),
        ("action_space", {"type": "Box"}, r"key 'action_space' is a Box without 'shape'"),
        ("env_id", 3, r"key 'env_id' is 3, expected a string"),
        ("env_kwargs", [], r"key 'env_kwargs' is \[\], expected a JSON object"),
        ("provenance", "x", r"key 'provenance' is 'x', expected a JSON object"),
        ("resumes", 3, r"key 'resumes' is 3, expected a JSON list"),  # the writer's append used to fail on it
        ("episodes", 2, r"key 'episodes' is 2 but .*episode-000001.safetensors does not exist"),
    ],
)
def test_a_malformed_dataset_json_key_is_named_by_loader_and_writer(tmp_path, drift_spaces, key, value, pattern):
    drift_writer(tmp_path, drift_spaces).add_episode(drift_episode())
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), key: value}))
    with pytest.raises(DatasetError, match=pattern) as error:
        load_dataset(tmp_path)
    one_line_naming(error, path, key)
    with pytest.raises(DatasetError, match=pattern):
        drift_writer(tmp_path, drift_spaces).add_episode(drift_episode())


@pytest.mark.parametrize("transitions", [0, 7])
def test_a_writer_continuing_a_dataset_checks_its_counts_against_the_files(tmp_path, drift_spaces, transitions):
    drift_writer(tmp_path, drift_spaces).add_episode(drift_episode())
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "transitions": transitions}))
    # Appending to a count that no file holds would carry the error into every later load.
    with pytest.raises(DatasetError, match=rf"key 'transitions' is {transitions} but the episode files hold 6 steps"):
        drift_writer(tmp_path, drift_spaces)


# ----------------------------------------------------------------------------------------------
# Fits: non-finite sequences refused up front, a residual worse than the base never kept
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["position", "action"])
def test_non_finite_sequences_are_refused_before_fitting(gru_model, key):
    sequences = drift_sequences(-0.1, seed=5)
    sequences[key][3, 7, 0] = float("nan")
    adapted = attach_residual(gru_model, ResidualConfig(hidden=8))
    with pytest.raises(
        DatasetError, match=rf"sequences\['{key}'\] holds non-finite values \(the first at sequence 3, step 7"
    ):
        fit_residual(adapted, sequences, FitConfig(steps=2, eval_every=1), quiet=True)
    with pytest.raises(DatasetError, match=rf"sequences\['{key}'\]"):
        finetune_dynamics(gru_model, sequences, FitConfig(steps=2, eval_every=1), quiet=True)


def test_a_fit_that_cannot_beat_the_base_raises_and_keeps_no_residual(gru_model):
    # A replacement prior starts near uniform, far worse than the trained prior, and a learning rate
    # of 1e-7 cannot fix that in two steps: every candidate, the starting weights included, is worse.
    torch.manual_seed(0)
    adapted = attach_residual(gru_model, ResidualConfig(hidden=8, mode="replacement"))
    adapted.add_adapter("kept", ResidualConfig(hidden=8, zero_init=True))
    adapted.set_adapter("default")
    with pytest.raises(
        FitError, match=r"adapter 'default' never beat the base model: its best held-out KL is .* against the base's"
    ):
        fit_residual(adapted, drift_sequences(-0.1, seed=5), FitConfig(steps=2, eval_every=1, lr=1e-7), quiet=True)
    assert adapted.adapters == ["kept"] and adapted.active_adapter is None


def test_the_starting_weights_count_as_a_candidate(gru_model):
    # Starting equal to the base, the fit keeps the starting weights if no step improves on them.
    adapted = attach_residual(gru_model, ResidualConfig(hidden=8, zero_init=True, prior_unimix=gru_model.prior_unimix))
    result = fit_residual(adapted, drift_sequences(-0.1, seed=5), FitConfig(steps=2, eval_every=1, lr=10.0), quiet=True)
    assert result.held_out_kl_best <= result.held_out_kl_base
    if result.best_step == 0:
        assert all(torch.count_nonzero(p) == 0 for p in adapted.residuals["default"].members[0][-1].parameters())


# ----------------------------------------------------------------------------------------------
# The CLI fails before the work, in one line
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def drift_files(registry, gru_model, tmp_path_factory):
    """A checkpoint of the test GRU and a drift dataset (one 200-step episode)."""
    root = tmp_path_factory.mktemp("cli")
    save_world_model(gru_model, root / "world_model")
    collect(DRIFT_ENV, "random", root / "data", transitions=200, seed=5, quiet=True)
    return root


def test_evaluate_takes_the_environment_kwargs_as_collect_does(drift_files, gru_model, tmp_path, capsys):
    # compare evaluates on --episode-steps; evaluate reproduces its figures through --env-kwargs.
    save_actor_critic(ActorCritic(gru_model.feature_size, 2, ActorCriticConfig(hidden=16, layers=1)), tmp_path / "ac")
    args = ["evaluate", DRIFT_ENV, "--world-model", str(drift_files / "world_model"), "--policy", str(tmp_path / "ac")]
    seven = ["--env-kwargs", '{"max_episode_steps": 7}']
    assert main([*args, "--episodes", "2", *seven, "--out", str(tmp_path / "r")]) == 0
    assert json.loads((tmp_path / "r").read_text())["lengths"] == [7, 7]
    capsys.readouterr()
    assert main([*args, "--env-kwargs", "[7]"]) == 2
    assert "--env-kwargs" in one_line_error(capsys)


def test_zero_and_negative_counts_are_usage_errors(capsys, tmp_path):
    assert main(["evaluate", DRIFT_ENV, "--onnx", str(tmp_path), "--episodes", "0"]) == 2
    assert "--episodes" in one_line_error(capsys)
    assert main(["collect", DRIFT_ENV, "--out", str(tmp_path / "d"), "--transitions", "0"]) == 2
    assert "--transitions" in one_line_error(capsys)
    assert main(["collect", DRIFT_ENV, "--out", str(tmp_path / "d"), "--transitions", "5", "--noise", "-1"]) == 2
    assert "--noise" in one_line_error(capsys)
    args = ["adapt", "--world-model", str(tmp_path), "--data", str(tmp_path), "--out", str(tmp_path / "a")]
    assert main([*args, "--sequence-length", "0"]) == 2
    assert "--sequence-length" in one_line_error(capsys)
    assert not (tmp_path / "d").exists() and not (tmp_path / "a").exists()


def test_output_paths_are_checked_before_any_work(capsys, tmp_path, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("the command started working before checking its output path")

    monkeypatch.setattr("latent_residual.workflow.deployment.loading.load_world_model", no_work)
    monkeypatch.setattr("latent_residual.workflow.deployment.loading.load_policy", no_work)
    monkeypatch.setattr("latent_residual.workflow.experiments.evaluation.evaluate", no_work)
    (tmp_path / "a_directory").mkdir()
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / ADAPTER_WEIGHTS_NAME).write_text("x")
    model = ["--world-model", str(tmp_path / "wm")]
    data = ["--data", str(tmp_path / "data")]
    cases = [
        (["train-policy", *model, *data, "--out", str(tmp_path / "a_directory")], "is a directory"),
        (["train-policy", *model, *data, "--out", str(tmp_path / "a_file")], "already exists"),
        (["train-policy", *model, *data, "--out", str(tmp_path / "a_file" / "ac.safetensors")], "is a file, so"),
        (["evaluate", DRIFT_ENV, "--onnx", str(tmp_path), "--out", str(tmp_path / "a_directory")], "is a directory"),
        (["adapt", *model, *data, "--out", str(tmp_path / "a_file")], "is a file; a directory is written here"),
        (["adapt", *model, *data, "--out", str(tmp_path / "done")], "already holds adapter.safetensors"),
        (["finetune", *model, *data, "--out", str(tmp_path / "a_file" / "sub")], "is a file, so"),
        (["export", *model, "--policy", str(tmp_path / "p"), "--out", str(tmp_path / "a_file")], "is a file"),
        (["pretrain", "--out", str(tmp_path / "a_file")], "is a file"),
        (["collect", DRIFT_ENV, "--transitions", "5", "--out", str(tmp_path / "a_file")], "is a file"),
        (
            ["collect", DRIFT_ENV, "--transitions", "5", "--out", str(tmp_path / "d"), "--env-kwargs", "{gain: 1"],
            "--env-kwargs",
        ),
        (
            ["collect", DRIFT_ENV, "--transitions", "5", "--out", str(tmp_path / "d"), "--env-kwargs", "[1]"],
            "JSON object",
        ),
        # A config's dict option is checked the same way, before any work.
        (
            ["pretrain", "--out", str(tmp_path / "p"), "--backbone-kwargs", "[1]"],
            "--backbone-kwargs: expected a JSON object",
        ),
        (
            ["pretrain", "--out", str(tmp_path / "p"), "--env-kwargs", "{gain: 1"],
            "--env-kwargs: expected a JSON object",
        ),
    ]
    for args, message in cases:
        assert main(args) == 2, args
        line = one_line_error(capsys)
        assert message in line, (args, line)
    monkeypatch.setattr(paths.os, "access", lambda path, mode: False)
    assert main(["adapt", *model, *data, "--out", str(tmp_path / "new" / "adapter")]) == 2
    assert "is not writable" in one_line_error(capsys)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a_directory", "a_file", "done"]


def test_overwrite_lets_a_finished_artefact_be_replaced(capsys, tmp_path):
    (tmp_path / "ac.safetensors").write_text("x")
    args = [
        "train-policy",
        "--world-model",
        str(tmp_path / "missing"),
        "--data",
        str(tmp_path),
        "--out",
        str(tmp_path / "ac.safetensors"),
    ]
    assert main(args) == 2
    capsys.readouterr()
    assert main([*args, "--overwrite"]) == 1  # past the output check, to the missing checkpoint
    assert "missing: expected a world_model directory holding model.safetensors; it does not exist" in one_line_error(
        capsys
    )


def test_a_directory_of_the_wrong_kind_says_what_was_expected_and_what_it_looks_like(drift_files, capsys, tmp_path):
    model, data = drift_files / "world_model", drift_files / "data"
    out = ["--out", str(tmp_path / "adapter")]
    cases = [
        (
            ["--world-model", str(data), "--data", str(data)],
            f"{data}: expected a world_model directory holding "
            "model.safetensors; this looks like a dataset directory (it holds dataset.json)",
        ),
        (
            ["--world-model", str(drift_files), "--data", str(data)],
            f"{drift_files}: expected a world_model directory "
            "holding model.safetensors; it holds data/ (a dataset directory), world_model/ (a world_model directory); "
            "name that directory instead",
        ),
        (
            ["--world-model", str(model), "--data", str(model)],
            f"{model}: expected a dataset directory holding "
            "dataset.json; this looks like a world_model directory (it holds model.safetensors)",
        ),
    ]
    for args, message in cases:
        assert main(["adapt", *args, *out]) == 1
        assert message in one_line_error(capsys)
    policy = ["--out", str(tmp_path / "ac.safetensors")]
    assert (
        main(["train-policy", "--world-model", str(model), "--adapter", str(model), "--data", str(data), *policy]) == 1
    )
    assert (
        f"{model}: expected an adapter directory holding adapter.safetensors (written by save_pretrained()); "
        "this looks like a world_model directory (it holds model.safetensors)"
    ) in one_line_error(capsys)


def test_an_adapt_that_cannot_beat_the_base_writes_nothing(drift_files, capsys, tmp_path):
    torch.manual_seed(0)
    args = [
        "adapt",
        "--world-model",
        str(drift_files / "world_model"),
        "--data",
        str(drift_files / "data"),
        "--sequence-length",
        "20",
        "--hidden",
        "8",
        "--mode",
        "replacement",
        "--fit-steps",
        "2",
        "--fit-eval-every",
        "1",
        "--fit-lr",
        "1e-7",
    ]
    assert main([*args, "--out", str(tmp_path / "adapter")]) == 1
    err = capsys.readouterr().err.strip().splitlines()  # the fit's progress lines, then the error
    assert [line for line in err if line.startswith("latent-residual:")] == err[-1:]
    assert "never beat the base model" in err[-1]
    assert not (tmp_path / "adapter").exists()
    (tmp_path / "existing").mkdir()
    assert main([*args, "--out", str(tmp_path / "existing")]) == 1
    assert list((tmp_path / "existing").iterdir()) == []


def test_every_error_is_one_line_and_debug_shows_the_traceback(state_policy, capsys, tmp_path, monkeypatch):
    _, directory = state_policy
    shutil.copytree(directory, tmp_path / "export")
    (tmp_path / "export" / POLICY_CONFIG_NAME).write_text("{not json")
    assert main(["evaluate", DRIFT_ENV, "--onnx", str(tmp_path / "export")]) == 1
    assert f"{tmp_path / 'export' / POLICY_CONFIG_NAME}: not valid JSON" in one_line_error(capsys)
    assert main(["evaluate", DRIFT_ENV, "--onnx", str(tmp_path / "nowhere")]) == 1
    assert "no such export directory" in one_line_error(capsys)

    def bug(*args, **kwargs):
        raise RuntimeError("an internal bug\nwith two lines")

    monkeypatch.setattr("latent_residual.adapters.read_adapter_info", bug)
    assert main(["inspect", str(tmp_path)]) == 1
    line = one_line_error(capsys)
    assert "RuntimeError: an internal bug with two lines" in line and "--debug" in line
    assert main(["--debug", "inspect", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "RuntimeError: an internal bug" in err


# ----------------------------------------------------------------------------------------------
# Atomic artefacts and the leftovers of killed writers
# ----------------------------------------------------------------------------------------------


def test_a_kill_between_the_two_export_files_leaves_the_old_export(state_policy, tmp_path):
    policy, _ = state_policy
    target = tmp_path / "export"
    export_policy(policy, target, exporter="torchscript")
    before = {name: (target / name).read_bytes() for name in (ONNX_NAME, POLICY_CONFIG_NAME)}
    # What a process killed after writing the new policy.onnx, before policy.json, leaves behind:
    orphan = tmp_path / f".export.tmp-{dead_pid()}"
    orphan.mkdir()
    (orphan / ONNX_NAME).write_bytes(b"half a new export")
    assert {name: (target / name).read_bytes() for name in before} == before
    OnnxPolicy(target)  # the old pair still loads and matches
    export_policy(policy, target, exporter="torchscript", opset=18)
    assert not orphan.exists()
    assert json.loads((target / POLICY_CONFIG_NAME).read_text())["opset"] == 18
    assert sorted(path.name for path in tmp_path.iterdir()) == ["export"]
    assert sorted(path.name for path in target.iterdir()) == sorted([ONNX_NAME, POLICY_CONFIG_NAME])
    assert_no_temp_files(tmp_path)


def test_a_kill_between_the_renames_of_the_fallback_swap_restores_the_old_directory(tmp_path, monkeypatch):
    monkeypatch.setattr("latent_residual.serialization._exchange", lambda first, second: False)
    target = tmp_path / "export"
    atomic_write_directory(target, lambda tmp: (tmp / "a").write_text("old"))
    atomic_write_directory(target, lambda tmp: (tmp / "a").write_text("new"))
    assert (target / "a").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["export"]
    # Killed after moving the old directory aside, before moving the new one in:
    pid = dead_pid()
    target.rename(tmp_path / f".export.old-{pid}")
    (tmp_path / f".export.tmp-{pid}").mkdir()
    clean_orphans(tmp_path)
    assert (target / "a").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_a_failed_write_keeps_the_old_directory(tmp_path):
    atomic_write_directory(tmp_path / "export", lambda tmp: (tmp / "a").write_text("old"))

    def fail(tmp):
        (tmp / "a").write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write_directory(tmp_path / "export", fail)
    assert (tmp_path / "export" / "a").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_an_export_directory_holding_other_files_is_refused_before_exporting(state_policy, tmp_path):
    policy, _ = state_policy
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="holds notes.txt besides an export"):
        export_policy(policy, tmp_path, exporter="torchscript")
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
    with pytest.raises(ExportError, match="is a file"):
        export_policy(policy, tmp_path / "notes.txt", exporter="torchscript")


def test_temporary_files_of_killed_writers_are_cleaned_by_the_next_write(gru_model, tmp_path):
    tmp_path.mkdir(exist_ok=True)
    dead = tmp_path / f".{MODEL_WEIGHTS_NAME}.tmp-{dead_pid()}"
    dead.write_bytes(b"partial")
    live = tmp_path / f".{MODEL_WEIGHTS_NAME}.tmp-{os.getppid()}"  # a writer still running
    live.write_bytes(b"in progress")
    save_world_model(gru_model, tmp_path)
    assert not dead.exists() and live.exists()
    live.unlink()
    write_text(tmp_path / "notes.txt", "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([MODEL_WEIGHTS_NAME, "model_config.json", "notes.txt"])
