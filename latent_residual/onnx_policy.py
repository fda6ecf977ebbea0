"""Run an exported policy with onnxruntime and NumPy only: no torch, for onboard computers (a Jetson).

``latent_residual.workflow.deployment.export`` writes the ``policy.onnx`` + ``policy.json`` pair this module reads
and owns its names; the contract is in docs/deployment.md. Only the standard library, NumPy and
onnxruntime are imported, so this file can also be copied onto a robot on its own.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ONNX_NAME = "policy.onnx"
POLICY_CONFIG_NAME = "policy.json"
FILE_FORMAT = "latent-residual-onnx-policy"
FILE_FORMAT_VERSION = 2
#: A recurrent policy's extra graph inputs and outputs (version 2's ``recurrent`` section names them).
PREV_ACTION_NAME = "prev_action"
IS_FIRST_NAME = "is_first"
STATE_PREFIX = "state_"
NEXT_STATE_PREFIX = "next_state_"
#: The coverage alarm's per-step output (``policy.json``'s ``surprise`` section names it and its threshold).
SURPRISE_NAME = "surprise"
#: Precisions an export can have (``policy.json``'s ``precision``; absent in older exports: float32).
PRECISIONS = ("fp32", "fp16", "int8")
#: Float observations up to this size are checked for NaN and infinity value by value (cheaper than NumPy's
#: reduction for a handful of values, right after a run has evicted the caches); larger ones with NumPy.
_SMALL_FLOAT_OBSERVATION = 256
#: Execution providers tried in this order when none are given (TensorRT only when asked for:
#: building its engine takes minutes on a Jetson).
PREFERRED_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")


def _export_paths(path: Path) -> tuple[Path, Path]:
    """The (policy.onnx, policy.json) pair of an export directory or of its ONNX file."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such export directory or ONNX file.")
    directory = path if path.is_dir() else path.parent
    onnx_path = path if path.suffix == ".onnx" and not path.is_dir() else directory / ONNX_NAME
    config_path = directory / POLICY_CONFIG_NAME
    if not config_path.is_file():
        raise FileNotFoundError(
            f"{config_path}: no policy description; export with "
            "latent_residual.workflow.deployment.export.export_policy, "
            f"which writes {ONNX_NAME} and {POLICY_CONFIG_NAME} together."
        )
    if not onnx_path.is_file():
        raise FileNotFoundError(f"{onnx_path}: no such ONNX file beside {config_path.name}.")
    return onnx_path, config_path


class PolicyFileError(ValueError):
    """An export the runner cannot use, in one line naming the file (a ValueError): ``policy.json`` is not
    valid JSON or one of its fields is malformed (the message names the key), ``policy.onnx`` does not
    load, or the two files disagree."""


_MISSING = object()
#: ONNX tensor element types whose NumPy name differs (onnxruntime reports ``tensor(float)``).
_ONNX_DTYPES = {"float": "float32", "double": "float64"}


class _Fields:
    """Reads ``policy.json``'s fields; each malformed one raises a PolicyFileError naming the file and the key."""

    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path

    def error(self, key: str, value: Any, expected: str) -> PolicyFileError:
        if value is _MISSING:
            received = "missing"
        else:
            received = json.dumps(value, sort_keys=True, default=repr)
            received = f"{received[:60]}..." if len(received) > 63 else received
        return PolicyFileError(
            f"{self.config_path}: malformed policy description: {key} is {received}, expected {expected}; "
            "copy both files again from the same export."
        )

    def section(self, value: Any, key: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.error(key, value, "a JSON object")
        return value

    def sections(self, value: Any, key: str) -> list[dict[str, Any]]:
        if not isinstance(value, list):
            raise self.error(key, value, "a list of JSON objects")
        return [self.section(item, f"{key}[{index}]") for index, item in enumerate(value)]

    def name(self, value: Any, key: str) -> str:
        if not isinstance(value, str) or not value:
            raise self.error(key, value, "a non-empty string")
        return value

    def dtype(self, value: Any, key: str) -> np.dtype:
        try:
            dtype = np.dtype(value) if isinstance(value, str) else None
        except TypeError:
            dtype = None
        if dtype is None or dtype.kind not in "biuf":
            raise self.error(key, value, 'a NumPy dtype name such as "float32" or "uint8"')
        return dtype

    def shape(self, value: Any, key: str) -> tuple[int, ...]:
        if not isinstance(value, list) or not all(type(size) is int and size > 0 for size in value):
            raise self.error(key, value, "a list of positive integers (without the batch axis)")
        return tuple(value)

    def numbers(self, value: Any, key: str, count: int) -> np.ndarray:
        numbers = isinstance(value, list) and all(type(item) in (int, float) for item in value)
        if not numbers or len(value) != count or not np.isfinite(np.asarray(value, np.float64)).all():
            raise self.error(key, value, f"a list of {count} finite numbers (one per action component)")
        return np.asarray(value, dtype=np.float32)


def _read_description(config_path: Path) -> dict[str, Any]:
    """``policy.json``, after checking its JSON, format and version."""
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PolicyFileError(
            f"{config_path}: not valid JSON ({exc}); copy {POLICY_CONFIG_NAME} again from the export."
        ) from exc
    if not isinstance(config, dict):
        raise PolicyFileError(f"{config_path}: expected a JSON object, got {type(config).__name__}.")
    if config.get("format") != FILE_FORMAT:
        raise PolicyFileError(f"{config_path}: format is {config.get('format')!r}, expected {FILE_FORMAT!r}.")
    version = config.get("format_version", _MISSING)
    if type(version) is not int or version < 1:
        raise _Fields(config_path).error("format_version", version, f"an integer from 1 to {FILE_FORMAT_VERSION}")
    if version > FILE_FORMAT_VERSION:
        raise PolicyFileError(
            f"{config_path}: format_version {version!r} is newer than this reader's {FILE_FORMAT_VERSION}; "
            "upgrade latent-residual on this machine."
        )
    return config


def _session(onnx_path: Path, data: bytes, providers: Sequence[str] | None, threads: int | None) -> Any:
    """An onnxruntime session on ``data`` (read from ``onnx_path``): CUDA when available unless ``providers`` are
    given."""
    import onnxruntime
    from onnxruntime.capi import onnxruntime_pybind11_state

    if providers is None:
        available = onnxruntime.get_available_providers()
        providers = [name for name in PREFERRED_PROVIDERS if name in available] or available
    options = onnxruntime.SessionOptions()
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be a positive integer or None, got {threads!r}.")
        options.intra_op_num_threads = threads
    # onnxruntime's own exception classes (InvalidProtobuf, InvalidGraph, Fail, ...): what a corrupt
    # or foreign file raises. A bad argument of ours (threads, providers) stays what it is.
    load_errors = tuple(
        value
        for value in vars(onnxruntime_pybind11_state).values()
        if isinstance(value, type) and issubclass(value, Exception)
    )
    try:
        return onnxruntime.InferenceSession(data, options, providers=list(providers))
    except load_errors as exc:
        reason = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise PolicyFileError(
            f"{onnx_path}: onnxruntime cannot load it ({reason}); copy both files again from the same export."
        ) from None  # onnxruntime's own traceback adds nothing to its message


class NonFiniteObservationError(ValueError):
    """An observation holds NaN or infinite values; the policy refuses it rather than act on it."""


class MissingObservationError(KeyError, ValueError):
    """An observation lacks a key the policy reads (both a KeyError and a ValueError)."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""


class OnnxPolicy:
    """An exported policy: observation dict in, action out, through an onnxruntime session.

    Observations are checked before they reach the session: a missing key, a wrong dtype, a
    wrong shape or a NaN/infinite value raises (``MissingObservationError``/``TypeError``/``ValueError``,
    ``NonFiniteObservationError``) naming the key, what the policy expects and what it received.
    Keys the policy does not use are ignored.

    :param path: The export directory, or its ``policy.onnx`` (``policy.json`` must sit beside it).
    :param providers: onnxruntime execution providers; by default CUDA when available, else CPU.
    :param threads: onnxruntime intra-op threads; ``None`` leaves onnxruntime's default (one per core).
    :param check_hash: Refuse a ``policy.onnx`` whose SHA-256 differs from the one in ``policy.json``.
    """

    def __init__(
        self,
        path: str | Path,
        providers: Sequence[str] | None = None,
        *,
        threads: int | None = None,
        check_hash: bool = True,
    ) -> None:
        onnx_path, config_path = _export_paths(Path(path))
        self.config: dict[str, Any] = _read_description(config_path)
        fields = _Fields(config_path)
        data = self._read_graph(onnx_path, config_path, fields, check_hash)
        self._read_inputs(fields)
        self._read_output(fields)
        env_id = self.config.get("env_id")
        if env_id is not None and not isinstance(env_id, str):
            raise fields.error("env_id", env_id, "a string or null")
        #: The graph's numeric precision (:data:`PRECISIONS`): "fp32" keeps the torch parity; "fp16" and "int8"
        #: are opt-in variants. A precision this runner does not know still runs: it is the graph that computes.
        self.precision: str = fields.name(self.config.get("precision", "fp32"), "precision")
        self._read_recurrent(fields)
        self._read_surprise(fields)
        self._carried: tuple[dict[str, np.ndarray], np.ndarray] | None = None
        #: The latest step's surprise (with the alarm): a float after :meth:`act`, (B,) after :meth:`step_batch`.
        self.last_surprise: float | np.ndarray | None = None
        self.session = _session(onnx_path, data, providers, threads)
        # What every step asks the graph for: the action, the next state, the surprise (with the alarm).
        self._outputs = [self.output_name, *(output for _, output, _ in self.state.values())]
        self._outputs += [self.surprise_output] if self.surprise_output else []
        self._action_output = [self.output_name]
        # (key, dtype, shape, whether to check for NaN and infinity) per input, for act()'s fast path.
        self._single = [(key, dtype, shape, dtype.kind == "f") for key, (dtype, shape) in self.inputs.items()]
        # Checked here rather than at the first step, which on a robot is when the wheels already wait for it.
        self._check_graph(onnx_path, config_path)

    def _read_graph(self, onnx_path: Path, config_path: Path, fields: _Fields, check_hash: bool) -> bytes:
        """policy.onnx's bytes, refused when they are not the file policy.json records (its SHA-256)."""
        data = onnx_path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        recorded = self.config.get("onnx_sha256")
        if recorded is not None and (not isinstance(recorded, str) or len(recorded) != 64):
            raise fields.error("onnx_sha256", recorded, "the SHA-256 of policy.onnx, 64 hexadecimal digits")
        if check_hash and recorded not in (None, digest):
            raise PolicyFileError(
                f"{onnx_path} (sha256 {digest[:12]}...) is not the file {config_path.name} describes "
                f"(sha256 {recorded[:12]}...); copy both files from the same export."
            )
        return data

    def _read_inputs(self, fields: _Fields) -> None:
        """The observation inputs, in the graph's order."""
        #: key -> (dtype, shape without the batch axis), in the graph's input order.
        self.inputs: dict[str, tuple[np.dtype, tuple[int, ...]]] = {}
        for index, item in enumerate(fields.sections(self.config.get("inputs", _MISSING), "inputs")):
            key = f"inputs[{index}]"
            name = fields.name(item.get("name", _MISSING), f"{key}.name")
            if name in self.inputs:
                raise fields.error(f"{key}.name", name, "a name no earlier input has")
            self.inputs[name] = (
                fields.dtype(item.get("dtype", _MISSING), f"{key}.dtype"),
                fields.shape(item.get("shape", _MISSING), f"{key}.shape"),
            )
        if not self.inputs:
            raise fields.error("inputs", [], "at least one input")

    def _read_output(self, fields: _Fields) -> None:
        """The action output and the action bounds."""
        output = fields.section(self.config.get("output", _MISSING), "output")
        self.output_name: str = fields.name(output.get("name", _MISSING), "output.name")
        if fields.dtype(output.get("dtype", _MISSING), "output.dtype") != np.float32:
            raise fields.error("output.dtype", output["dtype"], '"float32" (actions are float32)')
        self.action_shape: tuple[int, ...] = fields.shape(output.get("shape", _MISSING), "output.shape")
        size = int(np.prod(self.action_shape))
        self.action_low = fields.numbers(self.config.get("action_low", _MISSING), "action_low", size).reshape(
            self.action_shape
        )
        self.action_high = fields.numbers(self.config.get("action_high", _MISSING), "action_high", size).reshape(
            self.action_shape
        )
        if (self.action_low > self.action_high).any():
            raise fields.error(
                "action_high",
                self.config["action_high"],
                f"bounds no lower than action_low {self.config['action_low']}",
            )

    def _read_recurrent(self, fields: _Fields) -> None:
        """A recurrent policy's carried state (empty for a memoryless one)."""
        recurrent = self.config.get("recurrent")
        recurrent = {} if recurrent is None else fields.section(recurrent, "recurrent")
        #: A recurrent policy's state: key -> (graph input, graph output, shape without the batch axis).
        self.state: dict[str, tuple[str, str, tuple[int, ...]]] = {}
        for index, item in enumerate(fields.sections(recurrent.get("state", []), "recurrent.state")):
            key = f"recurrent.state[{index}]"
            self.state[fields.name(item.get("key", _MISSING), f"{key}.key")] = (
                fields.name(item.get("input", _MISSING), f"{key}.input"),
                fields.name(item.get("output", _MISSING), f"{key}.output"),
                fields.shape(item.get("shape", _MISSING), f"{key}.shape"),
            )

    def _read_surprise(self, fields: _Fields) -> None:
        """The coverage alarm's output and threshold, if the export has it."""
        surprise = self.config.get("surprise")
        surprise = None if surprise is None else fields.section(surprise, "surprise")
        #: The graph's surprise output, and the threshold calibrated for it; ``None`` without the alarm.
        self.surprise_output: str | None = (
            None if surprise is None else fields.name(surprise.get("output", _MISSING), "surprise.output")
        )
        self.surprise_threshold: float | None = None
        if surprise is not None:
            threshold = surprise.get("threshold", _MISSING)
            if type(threshold) not in (int, float) or not np.isfinite(threshold) or threshold < 0:
                raise fields.error("surprise.threshold", threshold, "a finite number >= 0")
            self.surprise_threshold = float(threshold)

    def _check_graph(self, onnx_path: Path, config_path: Path) -> None:
        """Refuse a graph whose inputs and outputs (names, dtypes, shapes) are not the ones ``policy.json``
        describes."""
        graph_inputs = [item.name for item in self.session.get_inputs()]
        extra = [name for name, _, _ in self.state.values()] + (
            [PREV_ACTION_NAME, IS_FIRST_NAME] if self.recurrent else []
        )
        if sorted(graph_inputs) != sorted([*self.inputs, *extra]):
            raise PolicyFileError(
                f"{onnx_path} has inputs {graph_inputs} but {config_path.name} lists {list(self.inputs)}; "
                "copy both files from the same export."
            )
        graph_outputs = [item.name for item in self.session.get_outputs()]
        missing = [name for name in self._outputs if name not in graph_outputs]
        if missing:
            raise PolicyFileError(
                f"{onnx_path} has outputs {graph_outputs} but {config_path.name} also names {missing}; "
                "copy both files from the same export."
            )
        # (where policy.json describes it, dtype, shape without the batch axis) of every graph tensor the runner
        # touches.
        float32 = np.dtype(np.float32)
        described = {
            **{
                name: (f"inputs[{index}]", dtype, shape)
                for index, (name, (dtype, shape)) in enumerate(self.inputs.items())
            },
            self.output_name: ("output", float32, self.action_shape),
        }
        for index, (name_in, name_out, shape) in enumerate(self.state.values()):
            described[name_in] = described[name_out] = (f"recurrent.state[{index}]", float32, shape)
        if self.recurrent:
            described[PREV_ACTION_NAME] = (f"output.shape (as {PREV_ACTION_NAME})", float32, self.action_shape)
            described[IS_FIRST_NAME] = ("recurrent", np.dtype(bool), ())
        if self.surprise_output:
            described[self.surprise_output] = ("surprise", float32, ())
        for item in [*self.session.get_inputs(), *self.session.get_outputs()]:
            if item.name not in described:
                continue
            key, dtype, shape = described[item.name]
            element = str(item.type).removeprefix("tensor(").removesuffix(")")
            graph_dtype = _ONNX_DTYPES.get(element, element)
            dims = list(item.shape or [])
            # The batch axis, and any axis the exporter left symbolic, match every size.
            fits = len(dims) == len(shape) + 1 and all(
                not isinstance(dim, int) or dim == size for dim, size in zip(dims[1:], shape)
            )
            if graph_dtype != dtype.name or not fits:
                graph = ", ".join(str(dim) for dim in dims)
                raise PolicyFileError(
                    f"{onnx_path}: {item.name!r} is {graph_dtype}[{graph}] in the graph but {config_path.name}'s {key} "
                    f"says {dtype.name}{list(shape)} after the batch axis; copy both files from the same export."
                )

    # -- description -------------------------------------------------------------------------

    @property
    def observation_keys(self) -> list[str]:
        """The observation keys the policy reads, in the graph's input order."""
        return list(self.inputs)

    @property
    def env_id(self) -> str | None:
        """The environment id recorded at export, if any."""
        return self.config.get("env_id")

    @property
    def recurrent(self) -> bool:
        """Whether the policy carries state between steps (a recurrent backbone's); ``reset()`` starts an episode."""
        return bool(self.state)

    def __repr__(self) -> str:
        inputs = ", ".join(f"{key}: {dtype.name}{list(shape)}" for key, (dtype, shape) in self.inputs.items())
        state = f", state={ {key: list(shape) for key, (_, _, shape) in self.state.items()} }" if self.recurrent else ""
        return (
            f"OnnxPolicy({inputs} -> {self.output_name}: float32{list(self.action_shape)}{state}, env={self.env_id!r})"
        )

    # -- acting ------------------------------------------------------------------------------

    def validate(self, obs: Mapping[str, Any], *, batched: bool) -> dict[str, np.ndarray]:
        """Return the graph's feeds for ``obs`` after checking every key's dtype and shape.

        :param obs: One array per key: ``shape`` when unbatched, ``(B, *shape)`` when batched.
        :param batched: Whether ``obs`` carries a leading batch axis.
        :raises MissingObservationError: A key the policy needs is missing (a KeyError and a ValueError).
        :raises TypeError: A value has the wrong dtype (no silent casts: float64 is not float32).
        :raises NonFiniteObservationError: A value holds NaN or infinity (a ValueError).
        :raises ValueError: A value has the wrong shape, or batch sizes differ between keys.
        """
        if not isinstance(obs, Mapping):
            raise TypeError(
                f"An observation must be a dict of arrays keyed {self.observation_keys}, got {type(obs).__name__}."
            )
        missing = [key for key in self.inputs if key not in obs]
        if missing:
            raise MissingObservationError(
                f"Observation lacks key(s) {missing}; the policy needs {self.observation_keys}, got {sorted(obs)}."
            )
        feeds, batch_sizes = {}, {}
        for key, (dtype, shape) in self.inputs.items():
            value = np.asarray(obs[key])
            if value.dtype != dtype:
                raise TypeError(
                    f"Observation {key!r} has dtype {value.dtype}, expected {dtype.name} "
                    f"(pass it exactly as the environment emits it)."
                )
            expected = ("B", *shape) if batched else shape
            if value.shape[int(batched) :] != shape or (batched and value.ndim != len(shape) + 1):
                hint = ""
                if not batched and value.shape[1:] == shape:
                    hint = " (this looks batched; use act_batch)"
                elif batched and value.shape == shape:
                    hint = " (this looks unbatched; use act)"
                raise ValueError(
                    f"Observation {key!r} has shape {tuple(value.shape)}, expected {tuple(expected)}{hint}."
                )
            if value.dtype.kind in "fc" and not np.isfinite(value).all():
                raise NonFiniteObservationError(
                    f"Observation {key!r} holds non-finite values ({int(np.isnan(value).sum())} NaN, "
                    f"{int(np.isinf(value).sum())} infinite); the policy refuses to act on it (check the sensor)."
                )
            if batched:
                batch_sizes[key] = value.shape[0]
            feeds[key] = np.ascontiguousarray(value if batched else value[None])
        if len(set(batch_sizes.values())) > 1:
            raise ValueError(f"Observations disagree on the batch size: {batch_sizes}.")
        if batched and next(iter(batch_sizes.values()), 1) == 0:
            raise ValueError("The batch is empty (batch size 0).")
        return feeds

    def _single_feeds(self, obs: Any) -> dict[str, np.ndarray] | None:
        """:meth:`validate`'s feeds for one observation when it is a dict of arrays of exactly the expected dtypes
        and shapes, all finite: the checks act() needs, done cheaply. ``None`` for anything else, which
        :meth:`validate` then checks again and names."""
        if obs.__class__ is not dict:
            return None
        feeds = {}
        isfinite = math.isfinite
        for key, dtype, shape, floating in self._single:
            value = obs.get(key)
            if value.__class__ is not np.ndarray or value.dtype != dtype or value.shape != shape:
                return None
            if floating:
                small = value.size <= _SMALL_FLOAT_OBSERVATION
                if not (all(map(isfinite, value.ravel().tolist())) if small else np.isfinite(value).all()):
                    return None
            feeds[key] = value[None] if value.flags.c_contiguous else np.ascontiguousarray(value[None])
        return feeds

    def act_batch(self, obs: Mapping[str, Any]) -> np.ndarray:
        """Return float32 actions (B, *action_shape) for a batch of observations, one (B, *shape) array per key.

        Only for a memoryless policy: a recurrent one steps with :meth:`step_batch` (or :meth:`act`).
        """
        if self.recurrent:
            raise ValueError(
                "This policy is recurrent: its actions depend on the previous steps. Use act() step by step "
                "(reset() at each episode start) or step_batch() with the state."
            )
        (action,) = self.session.run([self.output_name], self.validate(obs, batched=True))
        return action

    def blank_state(self, batch_size: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """A (state, previous action) pair for an episode's first step; its values are not read there."""
        state = {key: np.zeros((batch_size, *shape), np.float32) for key, (_, _, shape) in self.state.items()}
        return state, np.zeros((batch_size, *self.action_shape), np.float32)

    def step_batch(
        self, obs: Mapping[str, Any], state: Mapping[str, np.ndarray], prev_action: np.ndarray, is_first: np.ndarray
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """One step of a recurrent policy for a batch: (B, *action_shape) actions and the next state.

        :param state: The state :meth:`step_batch` returned at the previous step (or :meth:`blank_state`).
        :param prev_action: (B, *action_shape) the actions the environment received at the previous step.
        :param is_first: (B,) bool, true where this observation starts an episode (state and action are then ignored).
        """
        return self._step(self.validate(obs, batched=True), state, prev_action, is_first)

    def _step(
        self,
        feeds: dict[str, np.ndarray],
        state: Mapping[str, np.ndarray],
        prev_action: np.ndarray,
        is_first: np.ndarray,
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        batch_size = next(iter(feeds.values())).shape[0]
        for key, (name, _, shape) in self.state.items():
            feeds[name] = np.ascontiguousarray(np.asarray(state[key], np.float32).reshape(batch_size, *shape))
        feeds[PREV_ACTION_NAME] = np.asarray(prev_action, np.float32).reshape(batch_size, *self.action_shape)
        feeds[IS_FIRST_NAME] = np.asarray(is_first, bool).reshape(batch_size)
        outputs = self.session.run(self._outputs, feeds)
        if self.surprise_output:
            self.last_surprise = outputs.pop()
        return outputs[0], dict(zip(self.state, outputs[1:]))

    @property
    def surprised(self) -> bool:
        """Whether the latest :meth:`act`'s surprise exceeded the stored threshold or is not finite (False
        without the alarm)."""
        if self.surprise_threshold is None or self.last_surprise is None:
            return False
        surprise = np.asarray(self.last_surprise)
        return bool(not np.isfinite(surprise).all() or surprise.max() > self.surprise_threshold)

    def reset(self) -> None:
        """Start an episode: the next :meth:`act` forgets the carried state (a no-op for a memoryless policy)."""
        self._carried = None
        self.last_surprise = None

    def act(self, obs: Mapping[str, Any]) -> np.ndarray:
        """Return the float32 action (*action_shape) for one unbatched observation, as the env emits it.

        A recurrent policy carries its state from call to call; call :meth:`reset` at each episode start.
        """
        feeds = self._single_feeds(obs)
        if feeds is None:
            feeds = self.validate(obs, batched=False)  # raises, naming the key, if the observation is wrong
        if not self.recurrent:
            (action,) = self.session.run(self._action_output, feeds)
            return action[0]
        first = self._carried is None
        state, prev_action = self.blank_state(1) if first else self._carried
        action, state = self._step(feeds, state, prev_action, np.array([first]))
        self._carried = (state, action)
        if self.surprise_output:
            self.last_surprise = float(self.last_surprise[0])
        return action[0]

    __call__ = act

    def check_observation_space(self, space: Any) -> None:
        """Raise ValueError unless a (Gymnasium Dict) observation space matches the policy's inputs.

        Duck-typed on ``space.spaces[key].dtype`` and ``.shape``, so Gymnasium need not be imported.
        """
        spaces = getattr(space, "spaces", None)
        if not isinstance(spaces, Mapping):
            raise ValueError(
                f"The policy needs a Dict observation space with keys {self.observation_keys}, got {space!r}."
            )
        problems = []
        for key, (dtype, shape) in self.inputs.items():
            if key not in spaces:
                problems.append(f"{key!r} missing")
                continue
            got_dtype, got_shape = np.dtype(spaces[key].dtype), tuple(spaces[key].shape)
            if got_dtype != dtype or got_shape != shape:
                problems.append(f"{key!r} is {got_dtype.name}{list(got_shape)}, expected {dtype.name}{list(shape)}")
        if problems:
            raise ValueError(
                "The environment's observation space does not fit the policy: " + "; ".join(problems) + "."
            )


def run_episode(
    env: Any, policy: OnnxPolicy | Any, *, seed: int | None = None, max_steps: int | None = None
) -> dict[str, Any]:
    """Run one episode of a bare Gymnasium env with ``policy.act`` and return its ``return`` and ``length``.

    :param env: A Gymnasium env (``reset(seed=...)``, ``step(action)`` returning five values).
    :param policy: An :class:`OnnxPolicy`, or anything with ``act(obs) -> action``.
    :param seed: Passed to ``env.reset``.
    :param max_steps: Stop after this many steps even if the env does not (for envs without a time limit).
    :returns: ``{"return": float, "length": int, "terminated": bool, "truncated": bool}``.
    """
    if isinstance(policy, OnnxPolicy):
        policy.check_observation_space(env.observation_space)
    obs, _ = env.reset(seed=seed)
    if hasattr(policy, "reset"):
        policy.reset()
    total, length = 0.0, 0
    terminated = truncated = False
    while not (terminated or truncated):
        obs, reward, terminated, truncated, _ = env.step(policy.act(obs))
        total += float(reward)
        length += 1
        if max_steps is not None and length >= max_steps:
            truncated = True
    return {"return": total, "length": length, "terminated": bool(terminated), "truncated": bool(truncated)}
