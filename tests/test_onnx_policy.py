"""OnnxPolicy at load: policy.json's fields checked one by one and against the graph's own inputs and
outputs, onnxruntime's load errors wrapped; every refusal is one PolicyFileError line naming the file (and the key)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from fault_injection import export_lane_policy, tampered_export

from latent_residual.onnx_policy import ONNX_NAME, POLICY_CONFIG_NAME, OnnxPolicy, PolicyFileError


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """A memoryless lane policy and one with the coverage alarm (recurrent state, surprise output)."""
    root = tmp_path_factory.mktemp("policies")
    return {
        "plain": export_lane_policy(root / "plain"),
        "alarm": export_lane_policy(root / "alarm", surprise=True, surprise_threshold=1.0),
    }


def refusal(directory: Path) -> str:
    with pytest.raises(PolicyFileError) as error:
        OnnxPolicy(directory, providers=["CPUExecutionProvider"])
    message = str(error.value)
    assert "\n" not in message, message
    return message


def _set(*path, value):
    def change(description: dict) -> None:
        target = description
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return change


def _drop(*path):
    def change(description: dict) -> None:
        target = description
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]

    return change


@pytest.mark.parametrize(
    "export, change, key",
    [
        ("plain", _set("format_version", value="2"), 'format_version is "2"'),
        ("plain", _drop("inputs"), "inputs is missing"),
        ("plain", _set("inputs", value=[]), "inputs is []"),
        ("plain", _set("inputs", 0, value="image"), 'inputs[0] is "image"'),
        ("plain", _drop("inputs", 1, "name"), "inputs[1].name is missing"),
        ("plain", _set("inputs", 1, "name", value="image"), 'inputs[1].name is "image"'),
        ("plain", _set("inputs", 0, "dtype", value="pixels"), 'inputs[0].dtype is "pixels"'),
        ("plain", _set("inputs", 0, "shape", value="64x64x3"), 'inputs[0].shape is "64x64x3"'),
        ("plain", _set("inputs", 0, "shape", value=[64, -64, 3]), "inputs[0].shape is [64, -64, 3]"),
        ("plain", _set("output", value=None), "output is null"),
        ("plain", _set("output", "name", value=""), 'output.name is ""'),
        ("plain", _set("output", "dtype", value="uint8"), 'output.dtype is "uint8"'),
        ("plain", _set("output", "shape", value=[2.5]), "output.shape is [2.5]"),
        ("plain", _set("action_low", value=[-1.0]), "action_low is [-1.0], expected a list of 2 finite numbers"),
        ("plain", _set("action_high", value=[1.0, "1"]), 'action_high is [1.0, "1"]'),
        ("plain", _set("action_high", value=[-2.0, 1.0]), "action_high is [-2.0, 1.0], expected bounds no lower"),
        ("plain", _set("env_id", value=7), "env_id is 7"),
        ("plain", _set("recurrent", value=[1]), "recurrent is [1]"),
        ("alarm", _set("recurrent", "state", 0, "input", value=3), "recurrent.state[0].input is 3"),
        ("alarm", _set("recurrent", "state", 1, "shape", value=None), "recurrent.state[1].shape is null"),
        ("alarm", _set("surprise", "threshold", value="high"), 'surprise.threshold is "high"'),
        ("alarm", _set("surprise", "threshold", value=-1.0), "surprise.threshold is -1.0"),
        ("alarm", _drop("surprise", "output"), "surprise.output is missing"),
    ],
)
def test_each_malformed_field_is_one_line_naming_the_file_and_key(exports, tmp_path, export, change, key):
    directory = tampered_export(exports[export], tmp_path / "copy", change)
    message = refusal(directory)
    assert message.startswith(f"{directory / POLICY_CONFIG_NAME}: malformed policy description: {key}"), message


def test_a_malformed_hash_is_named(exports, tmp_path):
    shutil.copytree(exports["plain"], tmp_path / "copy")
    config_path = tmp_path / "copy" / POLICY_CONFIG_NAME
    description = json.loads(config_path.read_text())
    description["onnx_sha256"] = 12
    config_path.write_text(json.dumps(description))
    assert refusal(tmp_path / "copy").startswith(f"{config_path}: malformed policy description: onnx_sha256 is 12")


@pytest.mark.parametrize(
    "export, change, named",
    [
        (
            "plain",
            _set("inputs", 0, "shape", value=[32, 32, 3]),
            "'image' is uint8[batch, 64, 64, 3] in the graph but policy.json's inputs[0] says uint8[32, 32, 3]",
        ),
        (
            "plain",
            _set("inputs", 0, "shape", value=[64, 64]),
            "'image' is uint8[batch, 64, 64, 3] in the graph but policy.json's inputs[0] says uint8[64, 64]",
        ),
        (
            "plain",
            _set("inputs", 1, "dtype", value="float64"),
            "'velocity' is float32[batch, 2] in the graph but policy.json's inputs[1] says float64[2]",
        ),
        (
            "plain",
            _set("inputs", 0, "dtype", value="float32"),
            "'image' is uint8[batch, 64, 64, 3] in the graph but policy.json's inputs[0] says float32",
        ),
        (
            "plain",
            lambda description: description.update(
                output={**description["output"], "shape": [3]}, action_low=[-1] * 3, action_high=[1] * 3
            ),
            "'action' is float32[batch, 2] in the graph but policy.json's output says float32[3]",
        ),
        (
            "alarm",
            _set("recurrent", "state", 0, "shape", value=[8, 5]),
            "'state_belief' is float32[batch, 8, 4] in the graph but policy.json's recurrent.state[0] says "
            "float32[8, 5]",
        ),
        (
            "plain",
            _set("inputs", 1, "name", value="speed"),
            "has inputs ['image', 'velocity'] but policy.json lists ['image', 'speed']",
        ),
    ],
)
def test_a_description_that_disagrees_with_the_graph_is_refused_at_load(exports, tmp_path, export, change, named):
    directory = tampered_export(exports[export], tmp_path / "copy", change)
    message = refusal(directory)
    assert message.startswith(str(directory / ONNX_NAME)) and named in message, message
    assert message.endswith("copy both files from the same export."), message


@pytest.mark.parametrize("corrupt", [lambda data: data[: len(data) // 2], lambda data: b"\x00" * 64 + data[64:]])
def test_a_corrupt_graph_with_a_matching_hash_is_one_line_naming_the_file(exports, tmp_path, corrupt):
    directory = tampered_export(exports["plain"], tmp_path / "copy", lambda description: None, onnx=corrupt)
    message = refusal(directory)
    assert message.startswith(f"{directory / ONNX_NAME}: onnxruntime cannot load it ("), message


def test_the_checks_pass_real_exports(exports):
    for directory in exports.values():
        policy = OnnxPolicy(directory, providers=["CPUExecutionProvider"])
        assert policy.observation_keys == ["image", "velocity"] and policy.action_shape == (2,)
    assert OnnxPolicy(exports["alarm"], providers=["CPUExecutionProvider"]).surprise_threshold == 1.0
