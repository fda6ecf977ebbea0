"""The exported graph's rewrites and reduced-precision variants (issue 24): the optimised export keeps the torch parity
and the unoptimised graph's outputs; fp16 and int8 say so in policy.json and run; OnnxPolicy.act's fast path refuses
what validate refuses."""

from __future__ import annotations

import json
from collections import Counter, UserDict
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from gymnasium import spaces

from latent_residual import make_backbone
from latent_residual.actor_critic import Actor, ActorCriticConfig
from latent_residual.errors import ConfigError
from latent_residual.onnx_policy import (
    ONNX_NAME,
    POLICY_CONFIG_NAME,
    NonFiniteObservationError,
    OnnxPolicy,
    PolicyFileError,
)
from latent_residual.workflow.deployment import export as export_module
from latent_residual.workflow.deployment import onnx_graph
from latent_residual.workflow.deployment.export import (
    ExportablePolicy,
    example_observations,
    export_policy,
    verify_export,
)
from latent_residual.workflow.deployment.policy import Policy

PIXEL_SPACE = spaces.Dict(
    {"image": spaces.Box(0, 255, (64, 64, 3), np.uint8), "velocity": spaces.Box(-1, 1, (2,), np.float32)}
)
ACTION_SPACE = spaces.Box(-1, 1, (2,), np.float32)
#: The parity issue 24 holds the optimised float32 graph to (export's PARITY_TOLERANCE is 1e-4).
PARITY = 1e-5


def _policy(seed: int = 0) -> Policy:
    torch.manual_seed(seed)
    model = make_backbone("draw-v0", PIXEL_SPACE, ACTION_SPACE, preset="tiny")
    actor = Actor(model.feature_size, model.action_size, ActorCriticConfig(hidden=32, layers=1))
    return Policy(model, actor).eval()


def _description(directory) -> dict:
    return json.loads((directory / POLICY_CONFIG_NAME).read_text())


def _ops(directory) -> Counter:
    return Counter(node.op_type for node in onnx.load(directory / ONNX_NAME).graph.node)


def _outputs(directory, feeds: dict[str, np.ndarray], names: list[str]) -> list[np.ndarray]:
    session = onnxruntime.InferenceSession(str(directory / ONNX_NAME), providers=["CPUExecutionProvider"])
    return session.run(names, feeds)


@pytest.fixture(scope="module")
def pixel_exports(tmp_path_factory):
    """A tiny pixel DRAW policy exported with the dynamo exporter as it comes and with the graph rewrites."""
    policy = _policy()
    root = tmp_path_factory.mktemp("graphs")
    export_policy(policy, root / "plain", exporter="dynamo", optimise=False)
    export_policy(policy, root / "optimised", exporter="dynamo")
    return policy, root / "plain", root / "optimised"


def test_the_optimised_export_keeps_the_parity_and_the_plain_graphs_actions(pixel_exports):
    policy, plain, optimised = pixel_exports
    observations = example_observations(PIXEL_SPACE, 32, seed=4)
    assert verify_export(plain, policy, observations) <= PARITY
    assert verify_export(optimised, policy, observations) <= PARITY
    (before,) = _outputs(plain, observations, ["action"])
    (after,) = _outputs(optimised, observations, ["action"])
    assert np.abs(before - after).max() <= PARITY
    assert _description(plain)["graph_rewrites"] == {}
    assert _description(plain)["precision"] == _description(optimised)["precision"] == "fp32"
    assert _description(optimised)["graph_rewrites"] == {"silu_before_transpose": 4, "one_hot_matmul_as_gather": 1}
    # The one-hot no longer reaches a Gemm: the actor's first layer gathers its rows.
    assert _ops(optimised)["Gemm"] == _ops(plain)["Gemm"] - 1
    assert _ops(optimised)["Gather"] == _ops(plain)["Gather"] + 1
    runner = OnnxPolicy(optimised, providers=["CPUExecutionProvider"])
    assert runner.precision == "fp32"
    single = {key: value[0] for key, value in observations.items()}
    np.testing.assert_allclose(runner.act(single), policy.act(single), atol=PARITY)


def test_the_rewrites_keep_a_stateful_graphs_other_outputs(tmp_path):
    """With the coverage alarm the one-hot is also the next state: that output must stay as it was."""
    policy = _policy(seed=1)
    options = {"exporter": "dynamo", "surprise": True, "surprise_threshold": 1.0}
    export_policy(policy, tmp_path / "plain", optimise=False, **options)
    export_policy(policy, tmp_path / "optimised", **options)
    assert _description(tmp_path / "optimised")["graph_rewrites"]["one_hot_matmul_as_gather"] == 1
    module = ExportablePolicy(policy, surprise=True)
    feeds, names = module.example_inputs(6, seed=2), [name for name, _, _ in module.outputs]
    for before, after in zip(
        _outputs(tmp_path / "plain", feeds, names), _outputs(tmp_path / "optimised", feeds, names)
    ):
        assert np.abs(before - after).max() <= PARITY
    assert verify_export(tmp_path / "optimised", policy, example_observations(PIXEL_SPACE, 8, seed=3)) <= PARITY


def test_optimise_graph_leaves_a_graph_without_the_patterns_alone():
    """A graph with no channel norm and no one-hot comes back as it went in."""
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Tanh", ["x"], ["y"])],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 2])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 2])],
    )
    data = onnx.helper.make_model(graph).SerializeToString()
    assert onnx_graph.optimise_graph(data) == (data, {})


def test_a_failing_rewrite_keeps_the_exported_graph(tmp_path, monkeypatch, caplog):
    def broken(data, precision):
        raise RuntimeError("rewrite bug")

    monkeypatch.setattr(onnx_graph, "optimise_graph", broken)
    policy = _policy(seed=2)
    export_policy(policy, tmp_path / "export", exporter="torchscript")
    assert _description(tmp_path / "export")["graph_rewrites"] == {}
    assert "graph rewrites failed" in caplog.text
    assert verify_export(tmp_path / "export", policy, example_observations(PIXEL_SPACE, 4)) <= PARITY


@pytest.mark.parametrize("precision", ["int8", "fp16"])
def test_a_reduced_precision_is_recorded_and_runs(tmp_path, precision):
    policy = _policy(seed=3)
    seen = []

    def check(written):  # the parity check sees the float32 graph the reduced one is made from
        seen.append((_description(written)["precision"], verify_export(written, policy, observations)))

    observations = example_observations(PIXEL_SPACE, 16, seed=5)
    export_policy(policy, tmp_path / "export", exporter="dynamo", precision=precision, check=check)
    assert seen and seen[0][0] == "fp32" and seen[0][1] <= PARITY
    description = _description(tmp_path / "export")
    assert description["precision"] == precision
    # The gather of the one-hot's rows would cost an int8 graph more than the quantised matrix it replaces.
    assert ("one_hot_matmul_as_gather" in description["graph_rewrites"]) == (precision == "fp16")
    difference = description["precision_max_abs_diff"]
    assert 0.0 < difference < 0.5  # no longer the float32 graph, but close to it
    ops = _ops(tmp_path / "export")
    if precision == "int8":
        assert ops["MatMulInteger"] > 0 and ops["DynamicQuantizeLinear"] > 0
    else:
        elements = {item.data_type for item in onnx.load(tmp_path / "export" / ONNX_NAME).graph.initializer}
        assert onnx.TensorProto.FLOAT16 in elements
    runner = OnnxPolicy(tmp_path / "export", providers=["CPUExecutionProvider"])
    assert runner.precision == precision
    action = runner.act({key: value[0] for key, value in observations.items()})
    assert action.dtype == np.float32 and action.shape == (2,) and np.all(np.abs(action) <= 1)
    assert verify_export(tmp_path / "export", policy, observations) < 0.5


def test_an_unknown_precision_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="precision 'int4'"):
        export_policy(_policy(), tmp_path / "export", precision="int4")
    assert not (tmp_path / "export").exists()


def test_the_runner_reads_the_precision_and_takes_older_exports_without_it(pixel_exports, tmp_path):
    _, plain, _ = pixel_exports
    for value, expected in ((None, "fp32"), ("bf16", "bf16")):
        target = tmp_path / f"export-{value}"
        target.mkdir()
        (target / ONNX_NAME).write_bytes((plain / ONNX_NAME).read_bytes())
        description = _description(plain)
        description.pop("precision")
        if value is not None:
            description["precision"] = value
        (target / POLICY_CONFIG_NAME).write_text(json.dumps(description))
        assert OnnxPolicy(target, providers=["CPUExecutionProvider"]).precision == expected
    description["precision"] = 8
    (target / POLICY_CONFIG_NAME).write_text(json.dumps(description))
    with pytest.raises(PolicyFileError, match="precision is 8"):
        OnnxPolicy(target, providers=["CPUExecutionProvider"])


def test_act_takes_the_fast_path_only_for_what_validate_would_pass(pixel_exports):
    _, _, optimised = pixel_exports
    runner = OnnxPolicy(optimised, providers=["CPUExecutionProvider"], threads=1)
    batch = example_observations(PIXEL_SPACE, 3, seed=6)
    obs = {key: value[1] for key, value in batch.items()}
    expected = runner.act_batch(batch)[1]
    np.testing.assert_array_equal(runner.act(obs), expected)
    # Other mappings, extra keys, a non-contiguous image: the same action by the slow path or the fast one.
    np.testing.assert_array_equal(runner.act(UserDict(obs)), expected)
    np.testing.assert_array_equal(runner.act({**obs, "unused": np.zeros(3)}), expected)
    strided = np.asfortranarray(obs["image"])
    assert not strided.flags.c_contiguous
    np.testing.assert_array_equal(runner.act({**obs, "image": strided}), expected)
    for bad, error in (
        (np.array([np.nan, 0.0], np.float32), NonFiniteObservationError),
        (np.array([np.inf, 0.0], np.float32), NonFiniteObservationError),
        (np.array([0.1, 0.0], np.float64), TypeError),
        (np.array([0.1, 0.0, 0.0], np.float32), ValueError),
        ([0.1, 0.0], TypeError),
    ):
        with pytest.raises(error, match="'velocity'"):
            runner.act({**obs, "velocity": bad})
    with pytest.raises(KeyError, match="velocity"):
        runner.act({"image": obs["image"]})
    # Finite values whose sum would overflow are finite: the fast path must not refuse them.
    big = {**obs, "velocity": np.array([3e38, 3e38], np.float32)}
    assert np.all(np.isfinite(runner.act(big)))


def test_export_module_names_its_precisions():
    assert set(onnx_graph.PRECISIONS) == {"fp32", "fp16", "int8"}
    with pytest.raises(ValueError, match="Unknown precision"):
        onnx_graph.reduce_precision(b"", "int4")
    assert export_module.onnx_graph is onnx_graph


def test_the_export_command_takes_a_precision(tmp_path, capsys):
    """`latent-residual export --precision int8` on the shipped pendulum policy: checked in float32, then int8."""
    from latent_residual.workflow.cli.main import main

    pretrained = Path(__file__).resolve().parents[1] / "plugins" / "dmc" / "pretrained" / "pendulum-swingup"
    command = ["export", "--world-model", str(pretrained / "world_model"), "--policy"]
    command += [str(pretrained / "actor_critic.safetensors"), "--out", str(tmp_path / "int8"), "--precision", "int8"]
    assert main(command) == 0
    printed = capsys.readouterr().out
    assert "checked the export: max |onnx - torch| = " in printed
    assert "the int8 graph: max |onnx - torch| = " in printed and "(int8)" in printed
    assert _description(tmp_path / "int8")["precision"] == "int8"
    assert OnnxPolicy(tmp_path / "int8", providers=["CPUExecutionProvider"]).precision == "int8"
