"""ONNX export of a deployable ``Policy``: ``policy.onnx`` plus a readable ``policy.json`` contract.

The graph takes the observation exactly as the environment emits it (one input per key, batch
first, images uint8) and returns ``action`` (batch, A) float32 inside the action space; the
torch-free runner is ``latent_residual.onnx_policy``. See docs/deployment.md.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import io
import json
import logging
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
import torch
from torch import Tensor, nn

from latent_residual.errors import ConfigError, ExportError
from latent_residual.onnx_policy import FILE_FORMAT, FILE_FORMAT_VERSION, ONNX_NAME, POLICY_CONFIG_NAME, OnnxPolicy
from latent_residual.serialization import atomic_write, fingerprint, write_text
from latent_residual.version import __version__
from latent_residual.workflow.policy import Policy

logger = logging.getLogger(__name__)

ACTION_OUTPUT_NAME = "action"
BATCH_AXIS_NAME = "batch"
#: Exporters ``export_policy`` can use; "auto" tries dynamo, then TorchScript.
EXPORTERS = ("auto", "dynamo", "torchscript")
#: The oldest opset the dynamo exporter writes natively; older ones go through a version converter.
DYNAMO_MIN_OPSET = 18
#: Opset the TorchScript exporter uses when none is requested.
TORCHSCRIPT_DEFAULT_OPSET = 17
#: Observation dtypes an ONNX input may have (numpy name -> ONNX TensorProto element type).
_ONNX_ELEMENT_TYPES = {"uint8": 2, "int8": 3, "int16": 5, "int32": 6, "int64": 7, "float16": 10, "float32": 1, "float64": 11}


class ExportablePolicy(nn.Module):
    """A ``Policy`` with one positional input per observation key and actions in the env's bounds.

    The actor's tanh output in [-1, 1] is mapped affinely onto [low, high] when the action space
    is not already [-1, 1], so the exported graph's output can be sent to the environment as is.
    """

    def __init__(self, policy: Policy) -> None:
        super().__init__()
        observation_space, action_space = _check_spaces(policy)
        self.policy = policy
        self.keys = list(policy.keys)
        self.action_shape = tuple(int(size) for size in action_space.shape)
        low = np.asarray(action_space.low, dtype=np.float64).reshape(-1)
        high = np.asarray(action_space.high, dtype=np.float64).reshape(-1)
        self.rescale = not (np.all(low == -1.0) and np.all(high == 1.0))
        # Buffers are float32: the contract's output dtype, whatever the model computes in.
        device = next(policy.parameters()).device
        scale = torch.as_tensor((high - low) / 2, dtype=torch.float32, device=device)
        offset = torch.as_tensor((high + low) / 2, dtype=torch.float32, device=device)
        self.register_buffer("action_scale", scale, persistent=False)
        self.register_buffer("action_offset", offset, persistent=False)

    def forward(self, *observations: Tensor) -> Tensor:
        """Map observations, one (B, *shape) tensor per key in ``self.keys`` order, to (B, *action_shape)."""
        action = self.policy(dict(zip(self.keys, observations))).to(torch.float32)  # (B, A) in [-1, 1]
        if self.rescale:
            action = self.action_offset + self.action_scale * action
        return action.reshape(action.shape[0], *self.action_shape)


def _check_spaces(policy: Policy) -> tuple[gymnasium.spaces.Dict, gymnasium.spaces.Box]:
    """Return the policy's (observation, action) spaces after checking they can be exported."""
    if not isinstance(policy, Policy):
        raise ConfigError(
            f"export_policy needs a latent_residual.Policy, got {type(policy).__name__}; "
            "wrap the world model and actor with Policy(model, actor)."
        )
    observation_space = policy.model.observation_space
    action_space = policy.model.action_space
    if not isinstance(observation_space, gymnasium.spaces.Dict):
        raise ConfigError(
            f"ONNX export needs a gymnasium.spaces.Dict observation space (one graph input per key), "
            f"got {observation_space!r}; wrap a single Box as Dict({{'state': box}}) when building the model."
        )
    for key, sub in observation_space.spaces.items():
        if not isinstance(sub, gymnasium.spaces.Box):
            raise ConfigError(f"Observation {key!r} must be a Box space to be exported, got {sub!r}.")
        if np.dtype(sub.dtype).name not in _ONNX_ELEMENT_TYPES:
            raise ConfigError(
                f"Observation {key!r} has dtype {sub.dtype}; exportable dtypes are {sorted(_ONNX_ELEMENT_TYPES)}."
            )
    if list(policy.keys) != list(observation_space.spaces):
        raise ConfigError(
            f"Policy keys {list(policy.keys)} differ from the observation space's {list(observation_space.spaces)}."
        )
    if not isinstance(action_space, gymnasium.spaces.Box):
        raise ConfigError(f"ONNX export needs a Box action space, got {action_space!r}.")
    if not (np.all(np.isfinite(action_space.low)) and np.all(np.isfinite(action_space.high))):
        raise ConfigError(
            f"The action space must be bounded to map the actor's tanh output onto it; got low="
            f"{action_space.low.tolist()}, high={action_space.high.tolist()}."
        )
    if int(np.prod(action_space.shape)) != policy.model.action_size:
        raise ConfigError(
            f"The action space {action_space.shape} does not hold the model's {policy.model.action_size} actions."
        )
    return observation_space, action_space


def example_observations(space: gymnasium.spaces.Dict, batch_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Return ``batch_size`` observations drawn inside ``space`` (uniform where bounded, else normal).

    Unlike ``space.sample()`` this leaves the space's own random generator untouched.
    """
    rng = np.random.default_rng(seed)
    out = {}
    for key, sub in space.spaces.items():
        shape = (batch_size, *sub.shape)
        low = np.broadcast_to(np.asarray(sub.low, dtype=np.float64), sub.shape)
        high = np.broadcast_to(np.asarray(sub.high, dtype=np.float64), sub.shape)
        bounded = np.isfinite(low) & np.isfinite(high)
        value = np.where(
            bounded,
            rng.uniform(np.where(bounded, low, 0.0), np.where(bounded, high, 1.0), shape),
            np.clip(rng.normal(0.0, 1.0, shape), low, high),
        )
        if np.issubdtype(sub.dtype, np.integer):
            value = np.floor(value)
        out[key] = value.astype(sub.dtype)
    return out


# ----------------------------------------------------------------------------------------------
# Exporting
# ----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporters' advisory warnings and log lines (torchvision ops, deprecations)."""
    names = ("torch.onnx", "torch.onnx._internal.exporter._registration", "torch.export", "torch._dynamo")
    loggers = [logging.getLogger(name) for name in names]
    levels = [item.level for item in loggers]
    try:
        for item in loggers:
            item.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for item, level in zip(loggers, levels):
            item.setLevel(level)


def _export_dynamo(module: ExportablePolicy, example: tuple[Tensor, ...], opset: int | None) -> bytes:
    batch = torch.export.Dim(BATCH_AXIS_NAME)
    kwargs: dict[str, Any] = {} if opset is None else {"opset_version": opset}
    program = torch.onnx.export(
        module,
        example,
        None,
        dynamo=True,
        input_names=module.keys,
        output_names=[ACTION_OUTPUT_NAME],
        # ``forward(*observations)``: the varargs tuple is one entry holding a spec per input.
        dynamic_shapes=(tuple({0: batch} for _ in module.keys),),
        verbose=False,
        **kwargs,
    )
    return program.model_proto.SerializeToString()


def _export_torchscript(module: ExportablePolicy, example: tuple[Tensor, ...], opset: int | None) -> bytes:
    buffer = io.BytesIO()
    names = [*module.keys, ACTION_OUTPUT_NAME]
    torch.onnx.export(
        module,
        example,
        buffer,
        dynamo=False,
        input_names=module.keys,
        output_names=[ACTION_OUTPUT_NAME],
        dynamic_axes={name: {0: BATCH_AXIS_NAME} for name in names},
        opset_version=opset or TORCHSCRIPT_DEFAULT_OPSET,
    )
    return buffer.getvalue()


def _check_onnx(data: bytes, module: ExportablePolicy, space: gymnasium.spaces.Dict) -> Any:
    """Run ``onnx.checker`` and compare the graph's signature with the contract; return the ModelProto."""
    import onnx

    proto = onnx.load_from_string(data)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"The exported graph fails onnx.checker: {exc}") from exc

    def signature(value: Any) -> tuple[str, int, list[int | str]]:
        tensor = value.type.tensor_type
        return value.name, tensor.elem_type, [dim.dim_param or dim.dim_value for dim in tensor.shape.dim]

    inputs = [signature(value) for value in proto.graph.input]
    expected = [
        (key, _ONNX_ELEMENT_TYPES[np.dtype(space[key].dtype).name], list(space[key].shape)) for key in module.keys
    ]
    problems = []
    if [name for name, _, _ in inputs] != [name for name, _, _ in expected]:
        problems.append(f"inputs {[name for name, _, _ in inputs]}, expected {[name for name, _, _ in expected]}")
    else:
        for (name, elem, dims), (_, want_elem, want_shape) in zip(inputs, expected):
            fixed_batch = isinstance(dims[0], int) and dims[0] > 0
            if elem != want_elem or dims[1:] != want_shape or fixed_batch:
                problems.append(f"input {name!r} has type {elem} dims {dims}, expected type {want_elem} dims [batch, *{want_shape}]")
    outputs = [signature(value) for value in proto.graph.output]
    want_output = (ACTION_OUTPUT_NAME, 1, list(module.action_shape))
    if len(outputs) != 1 or outputs[0][0] != ACTION_OUTPUT_NAME or outputs[0][1] != 1 or outputs[0][2][1:] != want_output[2]:
        problems.append(f"outputs {outputs}, expected one float32 {ACTION_OUTPUT_NAME!r} [batch, *{want_output[2]}]")
    if problems:
        raise ExportError("The exported graph breaks the policy contract: " + "; ".join(problems))
    return proto


def _smoke_run(data: bytes, module: ExportablePolicy, space: gymnasium.spaces.Dict) -> None:
    """Run the graph in onnxruntime at two batch sizes; a batch axis fixed by the exporter fails here."""
    import onnxruntime

    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    for batch_size in (1, 3):
        feeds = example_observations(space, batch_size, seed=batch_size)
        try:
            (action,) = session.run([ACTION_OUTPUT_NAME], feeds)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ExportError(f"onnxruntime cannot run the exported graph at batch size {batch_size}: {exc}") from exc
        if action.shape != (batch_size, *module.action_shape) or not np.all(np.isfinite(action)):
            raise ExportError(
                f"At batch size {batch_size} the exported graph returned shape {action.shape} (expected "
                f"{(batch_size, *module.action_shape)}) or non-finite actions."
            )


def _summary(exc: BaseException) -> str:
    """One line for an exporter failure: torch.export's own summary line when it has one."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))  # the exporters colour their messages
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if "## Exception summary" in lines:
        lines = lines[lines.index("## Exception summary") + 1 :]
    line = lines[0] if lines else ""
    return f"{type(exc).__name__}: {line[:400]}"


def _opset_of(proto: Any) -> int:
    return next((item.version for item in proto.opset_import if item.domain in ("", "ai.onnx")), 0)


def _check_arguments(env_id: Any, opset: Any, exporter: str) -> None:
    if exporter not in EXPORTERS:
        raise ConfigError(f"Unknown exporter {exporter!r}; choose one of {list(EXPORTERS)}.")
    if env_id is not None and not isinstance(env_id, str):
        raise ConfigError(f"env_id must be a string naming the policy's environment, got {env_id!r}.")
    if opset is not None and (isinstance(opset, bool) or not isinstance(opset, int) or opset < 7):
        raise ConfigError(f"opset must be an integer >= 7 or None, got {opset!r}.")


def _exporter_order(exporter: str, opset: int | None) -> list[str]:
    if exporter != "auto":
        return [exporter]
    if opset is not None and opset < DYNAMO_MIN_OPSET:
        # Dynamo converts down from its native opset, and the converter can emit invalid graphs
        # (Split's num_outputs at opset 17 in torch 2.13); TorchScript writes old opsets natively.
        return ["torchscript", "dynamo"]
    return ["dynamo", "torchscript"]


def _export_graph(module: ExportablePolicy, space: gymnasium.spaces.Dict, opset: int | None, order: list[str]) -> tuple[bytes, Any, str]:
    """Try each exporter in ``order`` until one writes a graph that passes the checks; return
    (bytes, ModelProto, exporter used)."""
    attempts = {"dynamo": _export_dynamo, "torchscript": _export_torchscript}
    device = next(module.parameters()).device
    example = tuple(torch.as_tensor(value).to(device) for value in example_observations(space, 2).values())
    failures: list[str] = []
    for name in order:
        try:
            with torch.no_grad(), _quiet_exporter():
                data = attempts[name](module, example, opset)
            proto = _check_onnx(data, module, space)
            _smoke_run(data, module, space)
        except Exception as exc:  # any exporter failure moves on to the next exporter
            failures.append(f"{name}: {_summary(exc)}")
            logger.warning("ONNX export with the %s exporter failed: %s", name, failures[-1])
            logger.debug("Full %s exporter failure", name, exc_info=True)
            continue
        if failures:
            logger.warning("Exported with the %s exporter after: %s", name, " | ".join(failures))
        return data, proto, name
    raise ExportError("Could not export the policy to ONNX. " + " | ".join(failures))


def _description(
    module: ExportablePolicy, data: bytes, proto: Any, used: str, env_id: str | None, action_space: gymnasium.spaces.Box
) -> str:
    """``policy.json``: the graph's inputs and output, the action bounds and where the policy came from."""
    model = module.policy.model
    observation_space = model.observation_space
    description = {
        "format": FILE_FORMAT,
        "format_version": FILE_FORMAT_VERSION,
        "onnx_file": ONNX_NAME,
        "onnx_sha256": hashlib.sha256(data).hexdigest(),
        "inputs": [
            {"name": key, "dtype": np.dtype(observation_space[key].dtype).name, "shape": list(observation_space[key].shape)}
            for key in module.keys
        ],
        "output": {"name": ACTION_OUTPUT_NAME, "dtype": "float32", "shape": list(module.action_shape)},
        "batch_axis": {"index": 0, "name": BATCH_AXIS_NAME},
        "action_low": np.asarray(action_space.low, dtype=np.float64).reshape(-1).tolist(),
        "action_high": np.asarray(action_space.high, dtype=np.float64).reshape(-1).tolist(),
        "env_id": env_id,
        "backbone_id": model.backbone_id,
        "backbone_kwargs": dict(model.backbone_kwargs),
        # An adapted model keeps the fingerprint of its frozen base; the policy does not use the residual.
        "base_fingerprint": getattr(model, "base_fingerprint", None) or fingerprint(model),
        "library_version": __version__,
        "torch_version": torch.__version__,
        "exporter": used,
        "opset": _opset_of(proto),
        "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        return json.dumps(description, indent=2, sort_keys=True) + "\n"
    except TypeError as exc:
        raise ExportError(f"backbone_kwargs {model.backbone_kwargs!r} are not JSON-serialisable: {exc}") from exc


def export_policy(
    policy: Policy,
    directory: str | Path,
    *,
    env_id: str | None = None,
    opset: int | None = None,
    exporter: str = "auto",
) -> Path:
    """Export ``policy`` to ``directory/policy.onnx`` and describe it in ``directory/policy.json``.

    The graph has one input per observation key, named like the key, with the space's dtype and
    shape behind a dynamic batch axis, and one output ``action`` (batch, A) float32 inside the
    action space. It is checked with ``onnx.checker`` and run in onnxruntime at two batch sizes
    before anything is written; both files are written atomically (the JSON, written last,
    records the ONNX file's SHA-256 so a mismatched pair is detected on load).

    :param policy: The memoryless policy (encoder -> posterior mode -> actor mean).
    :param directory: Where to write; created if missing. Existing exports are replaced.
    :param env_id: The environment the policy is for, recorded in ``policy.json``.
    :param opset: ONNX opset; ``None`` takes the exporter's default (dynamo: 20, IR 10, onnxruntime
        >= 1.17; TorchScript: 17, IR 8). Older onboard runtimes want ``opset=17``.
    :param exporter: ``"auto"`` (dynamo, falling back to TorchScript; TorchScript first for an
        opset below 18), ``"dynamo"`` or ``"torchscript"``. ``policy.json`` records which one ran.
    :returns: The path of ``policy.onnx``.
    """
    _check_arguments(env_id, opset, exporter)
    module = ExportablePolicy(policy)
    observation_space, action_space = _check_spaces(policy)
    was_training = policy.training
    policy.eval()
    try:
        data, proto, used = _export_graph(module, observation_space, opset, _exporter_order(exporter, opset))
    finally:
        policy.train(was_training)
    text = _description(module, data, proto, used, env_id, action_space)
    directory = Path(directory)
    onnx_path = directory / ONNX_NAME
    atomic_write(onnx_path, lambda tmp: tmp.write_bytes(data))
    write_text(directory / POLICY_CONFIG_NAME, text)
    logger.info("Exported %s with the %s exporter (opset %s).", onnx_path, used, _opset_of(proto))
    return onnx_path


# ----------------------------------------------------------------------------------------------
# Verifying
# ----------------------------------------------------------------------------------------------


def _as_batch(observations: Mapping[str, Any] | Sequence[Mapping[str, Any]], keys: list[str]) -> dict[str, np.ndarray]:
    if isinstance(observations, Mapping):
        return {key: np.asarray(observations[key]) for key in keys if key in observations}
    if isinstance(observations, Sequence) and observations and all(isinstance(item, Mapping) for item in observations):
        missing = sorted({key for item in observations for key in keys if key not in item})
        if missing:
            raise ConfigError(f"Observations lack keys {missing}; each needs {keys}.")
        return {key: np.stack([np.asarray(item[key]) for item in observations]) for key in keys}
    raise ConfigError(
        "observations must be a dict of batched arrays (B, *shape) or a non-empty list of observation dicts, "
        f"got {type(observations).__name__}."
    )


def verify_export(
    directory: str | Path,
    policy: Policy,
    observations: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    *,
    providers: Sequence[str] | None = None,
) -> float:
    """Run the exported graph in onnxruntime and return its max absolute action difference from ``policy``.

    Both sides see the same observations and return actions in the action space's units (the
    torch side goes through the same rescaling as the graph). A few 1e-7 is typical; more than
    1e-4 means the export is not faithful.

    :param directory: The export directory (or the ``policy.onnx`` path).
    :param policy: The torch policy that was exported.
    :param observations: A dict of batched arrays (B, *shape), or a list of unbatched observation dicts.
    :param providers: onnxruntime execution providers; the CPU one by default.
    """
    runner = OnnxPolicy(directory, providers=list(providers) if providers else ["CPUExecutionProvider"])
    module = ExportablePolicy(policy)
    batch = _as_batch(observations, module.keys)
    onnx_action = runner.act_batch(batch)  # validates keys, dtypes and shapes
    device = next(policy.parameters()).device
    was_training = policy.training
    policy.eval()
    try:
        with torch.no_grad():
            torch_action = module(*(torch.as_tensor(batch[key], device=device) for key in module.keys)).cpu().numpy()
    finally:
        policy.train(was_training)
    if torch_action.shape != onnx_action.shape:
        raise ExportError(f"Torch returns actions {torch_action.shape} but the ONNX graph {onnx_action.shape}.")
    return float(np.max(np.abs(torch_action.astype(np.float64) - onnx_action.astype(np.float64))))
