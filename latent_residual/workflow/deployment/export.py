"""ONNX export of a deployable ``Policy``: ``policy.onnx`` plus a readable ``policy.json`` contract.

The graph takes the observation exactly as the environment emits it (one input per key, batch
first, images uint8) and returns ``action`` (batch, A) float32 inside the action space; a recurrent
policy's graph also takes the previous state, the previous action and ``is_first``, and returns the
next state. With ``surprise=True`` any policy carries that state and the graph also returns the coverage
alarm's per-step ``surprise`` (``coverage.py``). The torch-free runner is ``latent_residual.onnx_policy``.
See docs/deployment.md and docs/diagnose.md.
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
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
import torch
from torch import Tensor, nn

from latent_residual.contract import State
from latent_residual.errors import ConfigError, ExportError
from latent_residual.onnx_policy import (
    FILE_FORMAT,
    FILE_FORMAT_VERSION,
    IS_FIRST_NAME,
    NEXT_STATE_PREFIX,
    ONNX_NAME,
    POLICY_CONFIG_NAME,
    PREV_ACTION_NAME,
    STATE_PREFIX,
    SURPRISE_NAME,
    OnnxPolicy,
)
from latent_residual.registry.lookup import make_env
from latent_residual.serialization import atomic_write_directory, fingerprint, is_orphan
from latent_residual.version import __version__
from latent_residual.workflow.deployment import onnx_graph
from latent_residual.workflow.deployment.policy import Policy, filter_state_shapes
from latent_residual.workflow.reports.coverage import step_surprise

logger = logging.getLogger(__name__)

ACTION_OUTPUT_NAME = "action"
BATCH_AXIS_NAME = "batch"
#: Exporters ``export_policy`` can use; "auto" tries dynamo, then TorchScript.
EXPORTERS = ("auto", "dynamo", "torchscript")
#: The oldest opset the dynamo exporter writes natively; older ones go through a version converter.
DYNAMO_MIN_OPSET = 18
#: Largest difference between torch and ONNX Runtime (:func:`verify_export`) that counts as a faithful export.
PARITY_TOLERANCE = 1e-4
#: Opset the TorchScript exporter uses when none is requested.
TORCHSCRIPT_DEFAULT_OPSET = 17
#: Observation dtypes an ONNX input may have (numpy name -> ONNX TensorProto element type).
_ONNX_ELEMENT_TYPES = {
    "uint8": 2,
    "int8": 3,
    "int16": 5,
    "int32": 6,
    "int64": 7,
    "float16": 10,
    "float32": 1,
    "float64": 11,
    "bool": 9,
}

Spec = tuple[str, np.dtype, tuple[int, ...]]
"""A graph input or output: (name, dtype, shape without the batch axis)."""


class ExportablePolicy(nn.Module):
    """A ``Policy`` with one positional input per graph input and actions in the env's bounds.

    Inputs are the observation keys in order; a stateful policy's are followed by one
    ``state_<key>`` per state key (sorted), ``prev_action`` and ``is_first``, and its outputs
    ``action`` by one ``next_state_<key>`` each. With ``surprise`` the state is carried whatever
    the backbone (the surprise compares the prior predicted from the previous step with the new
    posterior) and a last output ``surprise`` (batch,) follows. The actor's tanh output in [-1, 1] is mapped
    affinely onto [low, high] when the action space is not already [-1, 1], so the output can be
    sent to the environment as is, and fed back as the next step's ``prev_action``.
    """

    def __init__(self, policy: Policy, *, surprise: bool = False) -> None:
        super().__init__()
        observation_space, action_space = _check_spaces(policy)
        self.policy = policy
        self.keys = list(policy.keys)
        self.surprise = surprise
        #: Whether the graph takes and returns the filter's state (a recurrent policy, or any with surprise).
        self.carries_state = policy.stateful or surprise
        self.state_shapes = filter_state_shapes(policy.model) if self.carries_state else {}
        self.state_keys = list(self.state_shapes)
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
        space = observation_space.spaces
        self.inputs: list[Spec] = [(key, np.dtype(space[key].dtype), tuple(space[key].shape)) for key in self.keys]
        self.outputs: list[Spec] = [(ACTION_OUTPUT_NAME, np.dtype(np.float32), self.action_shape)]
        if self.carries_state:
            float32 = np.dtype(np.float32)
            self.inputs += [(STATE_PREFIX + key, float32, self.state_shapes[key]) for key in self.state_keys]
            self.inputs += [(PREV_ACTION_NAME, float32, self.action_shape), (IS_FIRST_NAME, np.dtype(bool), ())]
            self.outputs += [(NEXT_STATE_PREFIX + key, float32, self.state_shapes[key]) for key in self.state_keys]
        if surprise:
            self.outputs.append((SURPRISE_NAME, np.dtype(np.float32), ()))
        clashing = sorted({name for name, _, _ in self.inputs[len(self.keys) :]} & set(self.keys))
        if clashing:
            raise ConfigError(
                f"Observation keys {clashing} clash with the recurrent policy's graph inputs; rename them."
            )

    def _scaled(self, action: Tensor) -> Tensor:
        action = action.to(torch.float32)  # (B, A) in [-1, 1]
        if self.rescale:
            action = self.action_offset + self.action_scale * action
        return action.reshape(action.shape[0], *self.action_shape)

    def forward(self, *inputs: Tensor) -> Tensor | tuple[Tensor, ...]:
        """Map the graph's inputs (see the class) to ``action`` (B, *action_shape), then the next state and
        the surprise when the graph carries them."""
        K, S = len(self.keys), len(self.state_keys)
        obs = dict(zip(self.keys, inputs[:K]))
        if not self.carries_state:
            return self._scaled(self.policy(obs))
        state = {key: value.to(torch.float32) for key, value in zip(self.state_keys, inputs[K : K + S])}
        prev_action = inputs[K + S].reshape(inputs[K + S].shape[0], -1)  # (B, A) as the environment received it
        is_first = inputs[K + S + 1]
        action, next_state, prior, post = self.policy.filter_step(obs, state, prev_action, is_first)
        B = prev_action.shape[0]
        # The explicit reshape pins the state's shape for TorchScript's shape inference (a one-hot mode
        # otherwise comes out as (batch, groups, batch)).
        outputs = (
            self._scaled(action),
            *(next_state[key].to(torch.float32).reshape(B, *self.state_shapes[key]) for key in self.state_keys),
        )
        if self.surprise:
            outputs += (step_surprise(self.policy.model, prior, post, is_first).to(torch.float32),)  # (B,)
        return outputs

    def blank_state(self, batch_size: int) -> tuple[State, Tensor]:
        """A (state, previous action) pair for an episode's first step; its values are not read there."""
        return self.policy.blank_state(batch_size, self.state_shapes)

    def example_inputs(self, batch_size: int, seed: int = 0) -> dict[str, np.ndarray]:
        """Inputs for ``batch_size`` steps: observations inside the space, zero state and action, and
        ``is_first`` true on even rows (both kinds of step)."""
        feeds = example_observations(self.policy.model.observation_space, batch_size, seed)
        for name, dtype, shape in self.inputs[len(self.keys) :]:
            feeds[name] = (
                (np.arange(batch_size) % 2 == 0) if name == IS_FIRST_NAME else np.zeros((batch_size, *shape), dtype)
            )
        return feeds


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


@contextlib.contextmanager
def _evaluating(policy: Policy) -> Iterator[None]:
    """``policy`` in eval mode for the block, then back in the mode it was in."""
    was_training = policy.training
    policy.eval()
    try:
        yield
    finally:
        policy.train(was_training)


def _names(specs: list[Spec]) -> list[str]:
    return [name for name, _, _ in specs]


def _export_dynamo(module: ExportablePolicy, example: tuple[Tensor, ...], opset: int | None) -> bytes:
    batch = torch.export.Dim(BATCH_AXIS_NAME)
    kwargs: dict[str, Any] = {} if opset is None else {"opset_version": opset}
    program = torch.onnx.export(
        module,
        example,
        None,
        dynamo=True,
        input_names=_names(module.inputs),
        output_names=_names(module.outputs),
        # ``forward(*inputs)``: the varargs tuple is one entry holding a spec per input.
        dynamic_shapes=(tuple({0: batch} for _ in module.inputs),),
        verbose=False,
        **kwargs,
    )
    return program.model_proto.SerializeToString()


def _export_torchscript(module: ExportablePolicy, example: tuple[Tensor, ...], opset: int | None) -> bytes:
    buffer = io.BytesIO()
    names = _names(module.inputs) + _names(module.outputs)
    torch.onnx.export(
        module,
        example,
        buffer,
        dynamo=False,
        input_names=_names(module.inputs),
        output_names=_names(module.outputs),
        dynamic_axes={name: {0: BATCH_AXIS_NAME} for name in names},
        opset_version=opset or TORCHSCRIPT_DEFAULT_OPSET,
    )
    return buffer.getvalue()


def _signature_problems(kind: str, found: list[tuple[str, int, list[int | str]]], expected: list[Spec]) -> list[str]:
    """How the graph's inputs or outputs differ from the contract's: names, element types, shapes, a free batch axis."""
    if [name for name, _, _ in found] != _names(expected):
        return [f"{kind} {[name for name, _, _ in found]}, expected {_names(expected)}"]
    problems = []
    for (name, elem, dims), (_, dtype, shape) in zip(found, expected):
        want = _ONNX_ELEMENT_TYPES[dtype.name]
        fixed_batch = bool(dims) and isinstance(dims[0], int) and dims[0] > 0
        if elem != want or dims[1:] != list(shape) or fixed_batch:
            problems.append(
                f"{kind[:-1]} {name!r} has type {elem} dims {dims}, expected type {want} dims [batch, *{list(shape)}]"
            )
    return problems


def _check_onnx(data: bytes, module: ExportablePolicy) -> Any:
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

    problems = _signature_problems("inputs", [signature(value) for value in proto.graph.input], module.inputs)
    problems += _signature_problems("outputs", [signature(value) for value in proto.graph.output], module.outputs)
    if problems:
        raise ExportError("The exported graph breaks the policy contract: " + "; ".join(problems))
    return proto


def _smoke_run(data: bytes, module: ExportablePolicy) -> None:
    """Run the graph in onnxruntime at two batch sizes; a batch axis fixed by the exporter fails here."""
    import onnxruntime

    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    for batch_size in (1, 3):
        try:
            outputs = session.run(_names(module.outputs), module.example_inputs(batch_size, seed=batch_size))
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ExportError(f"onnxruntime cannot run the exported graph at batch size {batch_size}: {exc}") from exc
        for value, (name, _, shape) in zip(outputs, module.outputs):
            if value.shape != (batch_size, *shape) or not np.all(np.isfinite(value)):
                raise ExportError(
                    f"At batch size {batch_size} the exported graph's {name!r} has shape {value.shape} (expected "
                    f"{(batch_size, *shape)}) or non-finite values."
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


def _export_graph(module: ExportablePolicy, opset: int | None, order: list[str]) -> tuple[bytes, Any, str]:
    """Try each exporter in ``order`` until one writes a graph that passes the checks; return
    (bytes, ModelProto, exporter used)."""
    attempts = {"dynamo": _export_dynamo, "torchscript": _export_torchscript}
    device = next(module.parameters()).device
    example = tuple(torch.as_tensor(value).to(device) for value in module.example_inputs(2).values())
    failures: list[str] = []
    for name in order:
        try:
            with torch.no_grad(), _quiet_exporter():
                data = attempts[name](module, example, opset)
            proto = _check_onnx(data, module)
            _smoke_run(data, module)
        except Exception as exc:  # any exporter failure moves on to the next exporter
            failures.append(f"{name}: {_summary(exc)}")
            logger.warning("ONNX export with the %s exporter failed: %s", name, failures[-1])
            logger.debug("Full %s exporter failure", name, exc_info=True)
            continue
        if failures:
            logger.warning("Exported with the %s exporter after: %s", name, " | ".join(failures))
        return data, proto, name
    raise ExportError("Could not export the policy to ONNX. " + " | ".join(failures))


def _optimised(module: ExportablePolicy, data: bytes, proto: Any, precision: str) -> tuple[bytes, Any, dict[str, int]]:
    """The graph after ``onnx_graph.optimise_graph``'s exact rewrites (those that help ``precision``), checked as the
    export was; the graph as exported (and a warning) if a rewrite fails, since the export itself is sound."""
    try:
        rewritten, applied = onnx_graph.optimise_graph(data, precision)
        if not applied:
            return data, proto, {}
        checked = _check_onnx(rewritten, module)
        _smoke_run(rewritten, module)
    except Exception as exc:  # a rewrite's bug must not cost the export
        logger.warning("Kept the exported ONNX graph as it is: the graph rewrites failed (%s).", _summary(exc))
        return data, proto, {}
    return rewritten, checked, applied


def _reduced(module: ExportablePolicy, data: bytes, precision: str) -> tuple[bytes, Any, float]:
    """The graph at ``precision``, checked as the export was, and its largest action difference from ``data``."""
    try:
        reduced = onnx_graph.reduce_precision(data, precision)
    except Exception as exc:  # onnxruntime.quantization raises what it likes
        raise ExportError(f"Could not make the {precision} graph: {_summary(exc)}") from exc
    proto = _check_onnx(reduced, module)
    _smoke_run(reduced, module)
    difference = onnx_graph.max_output_difference(data, reduced, module.example_inputs(64, seed=7), ACTION_OUTPUT_NAME)
    if not np.isfinite(difference):
        raise ExportError(f"The {precision} graph's actions are not finite where the float32 graph's are.")
    return reduced, proto, difference


def _description(
    module: ExportablePolicy,
    data: bytes,
    proto: Any,
    used: str,
    env_id: str | None,
    action_space: gymnasium.spaces.Box,
    surprise_threshold: float | None,
    graph: dict[str, Any] | None = None,
) -> str:
    """``policy.json``: the graph's inputs and output, the action bounds and where the policy came from;
    ``graph`` adds how the graph was made (``precision``, ``graph_rewrites``, ...)."""
    model = module.policy.model
    description = {
        "format": FILE_FORMAT,
        # Version 2 adds the recurrent section; a memoryless export stays readable by version-1 runners.
        "format_version": FILE_FORMAT_VERSION if module.carries_state else 1,
        "onnx_file": ONNX_NAME,
        "onnx_sha256": hashlib.sha256(data).hexdigest(),
        "inputs": [
            {"name": name, "dtype": dtype.name, "shape": list(shape)}
            for name, dtype, shape in module.inputs[: len(module.keys)]
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
        **(graph or {}),
    }
    if module.carries_state:
        description["recurrent"] = _recurrent_description(module)
    if module.surprise:
        # A version-2 runner that predates it ignores this section and the extra output.
        description["surprise"] = {
            "output": SURPRISE_NAME,
            "dtype": "float32",
            "shape": [],
            "threshold": surprise_threshold,
        }
    try:
        return json.dumps(description, indent=2, sort_keys=True) + "\n"
    except TypeError as exc:
        raise ExportError(f"backbone_kwargs {model.backbone_kwargs!r} are not JSON-serialisable: {exc}") from exc


def _recurrent_description(module: ExportablePolicy) -> dict[str, Any]:
    """What a runner feeds back: each state tensor (input and output names), the previous action, ``is_first``."""
    shapes = module.state_shapes
    return {
        "state": [
            {
                "key": key,
                "input": STATE_PREFIX + key,
                "output": NEXT_STATE_PREFIX + key,
                "dtype": "float32",
                "shape": list(shapes[key]),
            }
            for key in module.state_keys
        ],
        "prev_action": {"name": PREV_ACTION_NAME, "dtype": "float32", "shape": list(module.action_shape)},
        "is_first": {"name": IS_FIRST_NAME, "dtype": "bool", "shape": []},
    }


def _check_alarm_and_precision(surprise: bool, surprise_threshold: float | None, precision: str) -> None:
    """Refuse an alarm without a usable threshold (or a threshold without the alarm) and an unknown precision."""
    if surprise and (
        isinstance(surprise_threshold, bool)
        or not isinstance(surprise_threshold, (int, float))
        or not np.isfinite(surprise_threshold)
        or surprise_threshold < 0
    ):
        raise ConfigError(
            f"export_policy(surprise=True) needs surprise_threshold, a finite number >= 0, got {surprise_threshold!r}; "
            "calibrate it with `latent-residual diagnose` (coverage.threshold in report.json)."
        )
    if not surprise and surprise_threshold is not None:
        raise ConfigError(
            "export_policy: surprise_threshold is given but surprise=False; pass surprise=True to export the alarm."
        )
    if precision not in onnx_graph.PRECISIONS:
        raise ConfigError(f"Unknown precision {precision!r}; choose one of {list(onnx_graph.PRECISIONS)}.")


def export_policy(
    policy: Policy,
    directory: str | Path,
    *,
    env_id: str | None = None,
    opset: int | None = None,
    exporter: str = "auto",
    surprise: bool = False,
    surprise_threshold: float | None = None,
    check: Callable[[Path], None] | None = None,
    optimise: bool = True,
    precision: str = "fp32",
) -> Path:
    """Export ``policy`` to ``directory/policy.onnx`` and describe it in ``directory/policy.json``.

    The graph has one input per observation key, named like the key, with the space's dtype and
    shape behind a dynamic batch axis, and one output ``action`` (batch, A) float32 inside the
    action space. It is checked with ``onnx.checker`` and run in onnxruntime at two batch sizes
    before anything is written. The directory is written as a whole: both files go into a
    temporary directory beside it, which is then swapped into place, so a kill leaves either
    the previous export or the new one, never one file of each (the JSON also records the ONNX
    file's SHA-256, so a pair mixed by hand is detected on load). A killed export's temporary
    directory is removed by the next export beside it.

    :param policy: The policy (encoder -> posterior mode -> actor mean; a recurrent one carries its state).
    :param directory: Where to write; created if missing. An earlier export there is replaced;
        a directory holding anything else is refused (:class:`ExportError`), since the whole
        directory is replaced.
    :param env_id: The environment the policy is for, recorded in ``policy.json``.
    :param opset: ONNX opset; ``None`` takes the exporter's default (dynamo: 20, IR 10, onnxruntime
        >= 1.17; TorchScript: 17, IR 8). Older onboard runtimes want ``opset=17``.
    :param exporter: ``"auto"`` (dynamo, falling back to TorchScript; TorchScript first for an
        opset below 18), ``"dynamo"`` or ``"torchscript"``. ``policy.json`` records which one ran.
    :param surprise: Add the coverage alarm: a ``surprise`` output (batch,), KL(posterior of the new
        observation || the prior predicted from the previous step), 0 at episode starts. The graph
        then carries the filter's state even for a memoryless backbone (``recurrent`` section).
        The prior is ``policy.model``'s: build the policy on the adapted model
        (``Policy(adapted, actor)``) for the corrected prior.
    :param surprise_threshold: Required with ``surprise``: the threshold stored in ``policy.json``
        (calibrated on held-out target data by ``latent-residual diagnose``, ``coverage.threshold``
        in its report.json).
    :param check: Called with the temporary directory once both files are in it, before the swap: if
        it raises (a parity check above :data:`PARITY_TOLERANCE`, say), ``directory`` keeps what it
        held and the error propagates. With a reduced ``precision`` it sees the float32 graph the
        reduced one is made from (the faithful export); the reduced one replaces it after the check.
    :param optimise: Apply the exact graph rewrites of ``onnx_graph.optimise_graph`` that help ``precision``
        (recorded in ``policy.json``'s ``graph_rewrites``); ``False`` writes the exporter's graph as it comes.
    :param precision: ``"fp32"`` (the torch parity), or the opt-in ``"fp16"`` or ``"int8"`` (onnxruntime's
        dynamic quantisation of the MatMul/Gemm weights), which give up that parity for size or speed:
        ``policy.json`` records the precision and ``precision_max_abs_diff``, the largest action
        difference from the float32 graph on 64 example inputs. Measure its returns before using it.
    :returns: The path of ``policy.onnx``.
    """
    _check_arguments(env_id, opset, exporter)
    _check_alarm_and_precision(surprise, surprise_threshold, precision)
    directory = Path(directory)
    check_export_target(directory)
    module = ExportablePolicy(policy, surprise=surprise)
    _, action_space = _check_spaces(policy)
    with _evaluating(policy):
        data, proto, used = _export_graph(module, opset, _exporter_order(exporter, opset))
    graph: dict[str, Any] = {"precision": "fp32", "graph_rewrites": {}}
    if optimise:
        data, proto, graph["graph_rewrites"] = _optimised(module, data, proto, precision)
    threshold = float(surprise_threshold) if surprise else None
    text = _description(module, data, proto, used, env_id, action_space, threshold, graph)
    reduced_files = None  # (policy.onnx, policy.json) at a reduced precision
    if precision != "fp32":
        reduced, reduced_proto, difference = _reduced(module, data, precision)
        graph = {**graph, "precision": precision, "precision_max_abs_diff": difference}
        reduced_text = _description(module, reduced, reduced_proto, used, env_id, action_space, threshold, graph)
        reduced_files = (reduced, reduced_text)

    def write(tmp: Path) -> None:
        (tmp / ONNX_NAME).write_bytes(data)
        (tmp / POLICY_CONFIG_NAME).write_text(text, encoding="utf-8")
        if check is not None:
            check(tmp)
        if reduced_files is not None:
            (tmp / ONNX_NAME).write_bytes(reduced_files[0])
            (tmp / POLICY_CONFIG_NAME).write_text(reduced_files[1], encoding="utf-8")

    atomic_write_directory(directory, write)
    onnx_path = directory / ONNX_NAME
    logger.info("Exported %s with the %s exporter (opset %s, %s).", onnx_path, used, _opset_of(proto), precision)
    return onnx_path


def check_export_target(directory: str | Path) -> None:
    """Raise :class:`ExportError` if ``directory`` cannot take an export: it is a file, or a
    directory holding more than an earlier export (an export replaces its whole directory)."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ExportError(
            f"{directory} is a file; export_policy writes a directory ({ONNX_NAME} and {POLICY_CONFIG_NAME})."
        )
    if directory.is_dir():
        export = (ONNX_NAME, POLICY_CONFIG_NAME)
        others = sorted(
            entry.name for entry in directory.iterdir() if entry.name not in export and not is_orphan(entry.name)
        )
        if others:
            listed = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
            raise ExportError(
                f"{directory} holds {listed} besides an export; an export replaces its whole directory, so "
                "give a new or empty directory, or an earlier export."
            )


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


class TorchRunner:
    """The exported graph's torch twin: an :class:`ExportablePolicy` driven step by step the way
    :class:`~latent_residual.onnx_policy.OnnxPolicy` drives the graph (the same rescaled actions,
    fed back as ``prev_action``; the same state carried), for parity checks."""

    def __init__(self, policy: Policy, *, surprise: bool = False) -> None:
        self.module = ExportablePolicy(policy, surprise=surprise)
        self.device = next(policy.parameters()).device
        self.reset()

    def reset(self) -> None:
        self._carried: tuple[list[Tensor], Tensor] | None = None
        #: The surprise of the latest :meth:`act` (with ``surprise``), as ``OnnxPolicy.last_surprise``.
        self.last_surprise: float | None = None

    @torch.no_grad()
    def act_batch(self, batch: Mapping[str, np.ndarray]) -> np.ndarray:
        """A memoryless policy's actions for a batch of observations."""
        return self.module(*(torch.as_tensor(batch[key], device=self.device) for key in self.module.keys)).cpu().numpy()

    @torch.no_grad()
    def act(self, obs: Mapping[str, Any]) -> np.ndarray:
        batch = {key: np.asarray(obs[key])[None] for key in self.module.keys}
        if not self.module.carries_state:
            return self.act_batch(batch)[0]
        first = self._carried is None
        if first:
            state, prev_action = self.module.blank_state(1)
            states = [state[key] for key in self.module.state_keys]
        else:
            states, prev_action = self._carried
        observations = [torch.as_tensor(batch[key], device=self.device) for key in self.module.keys]
        is_first = torch.tensor([first], device=self.device)
        action, *outputs = self.module(*observations, *states, prev_action, is_first)
        if self.module.surprise:
            self.last_surprise = float(outputs.pop()[0])
        self._carried = (outputs, action)
        return action[0].cpu().numpy()


def _runner(directory: str | Path, providers: Sequence[str] | None) -> OnnxPolicy:
    return OnnxPolicy(directory, providers=list(providers) if providers else ["CPUExecutionProvider"])


def _difference(torch_action: np.ndarray, onnx_action: np.ndarray) -> float:
    if torch_action.shape != onnx_action.shape:
        raise ExportError(f"Torch returns actions {torch_action.shape} but the ONNX graph {onnx_action.shape}.")
    # A NaN difference would compare as "within tolerance" and be dropped by max(): refuse it instead.
    for side, action in (("The torch policy", torch_action), ("The ONNX graph", onnx_action)):
        bad = ~np.isfinite(action)
        if bad.any():
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ExportError(
                f"{side} returned {int(bad.sum())} non-finite action value(s), the first at index {first}; the "
                "parity check cannot pass."
            )
    return float(np.max(np.abs(torch_action.astype(np.float64) - onnx_action.astype(np.float64))))


def _step_difference(twin: TorchRunner, runner: OnnxPolicy, obs: Mapping[str, Any]) -> tuple[np.ndarray, float]:
    """One step of both sides on ``obs``: the torch action, and the larger of the action difference and,
    with the coverage alarm, the surprise's (relative to the surprise where it exceeds 1, as it is a
    KL that can reach tens of nats)."""
    action = twin.act(obs)
    worst = _difference(action, runner.act(obs))
    if twin.last_surprise is not None:
        surprises = np.array([twin.last_surprise, runner.last_surprise], dtype=np.float64)
        if not np.isfinite(surprises).all():
            raise ExportError(
                f"The surprise is not finite (torch {surprises[0]}, ONNX {surprises[1]}); the parity check cannot pass."
            )
        worst = max(worst, abs(surprises[0] - surprises[1]) / max(1.0, abs(surprises[0])))
    return action, worst


def verify_export(
    directory: str | Path,
    policy: Policy,
    observations: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    *,
    providers: Sequence[str] | None = None,
) -> float:
    """Run the exported graph in onnxruntime and return its max absolute action difference from ``policy``.

    Both sides see the same observations and return actions in the action space's units (the
    torch side goes through the same rescaling as the graph). A memoryless policy takes them as
    one batch; a recurrent one as the steps of one episode, in order, each side carrying its own
    state. A few 1e-7 is typical; more than :data:`PARITY_TOLERANCE` (1e-4) means the export is not faithful. With
    the coverage alarm, each step's surprise is compared too (relative above 1), and the larger difference is
    returned. A non-finite action or surprise on either side is an :class:`ExportError`.

    :param directory: The export directory (or the ``policy.onnx`` path).
    :param policy: The torch policy that was exported.
    :param observations: A dict of batched arrays (B, *shape), or a list of unbatched observation dicts.
    :param providers: onnxruntime execution providers; the CPU one by default.
    """
    runner = _runner(directory, providers)
    twin = TorchRunner(policy, surprise=runner.surprise_threshold is not None)
    batch = _as_batch(observations, twin.module.keys)
    with _evaluating(policy):
        if not twin.module.carries_state:
            onnx_action = runner.act_batch(batch)  # validates keys, dtypes and shapes
            return _difference(twin.act_batch(batch), onnx_action)
        runner.reset()
        steps = [{key: value[t] for key, value in batch.items()} for t in range(len(next(iter(batch.values()))))]
        return max(_step_difference(twin, runner, obs)[1] for obs in steps)


def verify_episodes(
    directory: str | Path,
    policy: Policy,
    env_id: str,
    *,
    steps: int = 200,
    seed: int = 0,
    env_kwargs: dict[str, Any] | None = None,
    providers: Sequence[str] | None = None,
) -> float:
    """Drive ``env_id`` with the torch policy for at least ``steps`` steps (whole episodes), feed the
    ONNX runner the same observations, and return the largest action (or surprise, as in
    :func:`verify_export`) difference at any step."""
    runner = _runner(directory, providers)
    twin = TorchRunner(policy, surprise=runner.surprise_threshold is not None)
    env = make_env(env_id, **(env_kwargs or {}))
    worst, taken, episode = 0.0, 0, 0
    try:
        with _evaluating(policy):
            while taken < steps:
                obs, _ = env.reset(seed=seed + episode)
                runner.reset()
                twin.reset()
                done = False
                while not done:
                    action, difference = _step_difference(twin, runner, obs)
                    worst = max(worst, difference)
                    obs, _, terminated, truncated, _ = env.step(action)
                    done, taken = terminated or truncated, taken + 1
                episode += 1
    finally:
        env.close()
    return worst


def export_and_verify(
    policy: Policy,
    directory: str | Path,
    *,
    env_id: str | None = None,
    episode_steps: int = 200,
    seed: int = 0,
    env_kwargs: dict[str, Any] | None = None,
    say: Callable[[str], Any] | None = None,
    **export_options: Any,
) -> dict[str, float]:
    """Export ``policy`` (:func:`export_policy`) and check it against torch before it replaces ``directory``: on
    example observations and, with ``env_id``, over ``episode_steps`` steps of whole episodes there (from ``seed``).

    A difference above :data:`PARITY_TOLERANCE` is an :class:`ExportError` and ``directory`` keeps what it held.

    :param say: Told each difference as it is measured (``checked the export: ...``).
    :param export_options: ``opset``, ``exporter``, ``surprise`` and ``surprise_threshold`` of :func:`export_policy`.
    :returns: ``max_abs_diff`` on the examples and, with ``env_id``, ``episode_max_abs_diff``.
    """
    say = say or (lambda _text: None)
    label = "max difference (action, surprise)" if export_options.get("surprise") else "max |onnx - torch|"
    found: dict[str, float] = {}

    def check(written: Path) -> None:
        found["max_abs_diff"] = verify_export(written, policy, example_observations(policy.model.observation_space, 64))
        say(f"checked the export: {label} = {found['max_abs_diff']:.2e}")
        if env_id is not None:
            found["episode_max_abs_diff"] = verify_episodes(
                written, policy, env_id, steps=episode_steps, seed=seed, env_kwargs=env_kwargs
            )
            say(f"over {episode_steps} steps of {env_id} episodes: {label} = {found['episode_max_abs_diff']:.2e}")
        difference = max(found.values())
        if difference > PARITY_TOLERANCE:
            raise ExportError(
                f"{directory}: ONNX Runtime differs from torch by {difference:.2e}, more than {PARITY_TOLERANCE}; the "
                "export is not faithful to the policy, so it was not written."
            )

    export_policy(policy, directory, env_id=env_id, check=check, **export_options)
    return found
