"""The onboard safety layer the Duckiebot nodes share: frame, wheel speeds and an OnnxPolicy in, a command every period out, zero on any fault.
No ROS and no torch here: the ROS shells are duckiebot_ros.py (ROS 1) and ros2_node.py (ROS 2); docs/safety.md has the guarantees and measurements."""

# From the inside out: pure helpers (decode_frame, action_to_wheels, wheel_velocity,
# load_calibration); InferenceWorker (the policy on its own thread, with a deadline);
# LaneFollowingController (the checks, one Command per step(), stops logged and counted, a policy
# reset() on every resume); ControlLoop (a thread that publishes step() every period and a stop at
# once when a fault arrives between periods); LogForwarder (this package's log into a ROS logger);
# stop_on_signals (SIGINT/SIGTERM -> publish a stop).

from __future__ import annotations

import collections
import enum
import io
import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from latent_residual import onnx_policy as _runtime
from latent_residual.onnx_policy import OnnxPolicy

logger = logging.getLogger(__name__)
#: The integrations' logger, which the ROS nodes forward to their own log (``LogForwarder``).
PACKAGE_LOGGER = "latent_residual_integrations"
#: What the runner raises for a NaN/infinite observation (when it has that check): a stop for that reason.
_NON_FINITE_ERRORS: tuple[type[BaseException], ...] = tuple(
    error for error in (getattr(_runtime, "NonFiniteObservationError", None),) if error is not None
)

#: DB21 wheel encoders: ticks per wheel revolution.
ENCODER_RESOLUTION = 135
#: The DB21 camera's frames (width, height), from which decode_frame's resize rule makes the policy's
#: square input: the size the target data were recorded at, so the only size the policy has seen.
CAMERA_SIZE = "640x480"
#: Where a Duckiebot keeps its camera's intrinsic calibration (image_width, image_height among its keys):
#: the ROS 1 node reads the expected frame size from it when ``--camera-size`` is not given.
CAMERA_INTRINSICS = "/data/config/calibrations/camera_intrinsic/{robot}.yaml"
#: The twin's agent step is 0.1 s (``CONTROL_PERIOD`` in the Duckiebot env).
DEFAULT_RATE_HZ = 10.0
#: Stop the wheels when the newest camera frame is older than this (seconds).
MAX_FRAME_AGE = 0.5
#: Refuse a frame stamped further ahead of the controller's clock than this (seconds).
MAX_FUTURE = 0.05
#: Treat the wheel-speed source (encoders, odometry) as silent after this long without a reading (seconds).
VELOCITY_TIMEOUT = 0.5
VELOCITY_KEY = "velocity"
#: Where the ``velocity`` observation comes from: wheel encoders, a measured body velocity
#: (``on_odometry``), the last command's nominal velocity, or zeros.
VELOCITY_SOURCES = ("encoders", "odometry", "command", "zero")
#: What to do when the encoders (or odometry) go silent: stop, or carry on with the last
#: command's velocity or with zeros (logged when it starts and when the readings come back).
VELOCITY_FALLBACKS = ("stop", "command", "zero")
#: What to do when the coverage alarm fires (an export with ``surprise``): stop, or drive on slowed down.
SURPRISE_RESPONSES = ("stop", "slow")


@dataclass(frozen=True)
class Setting:
    """A controller setting both robot nodes expose: ``name`` is the ROS 2 parameter (and, dashed, the
    ROS 1 flag), ``keyword`` the ``LaneFollowingController`` argument it sets."""

    name: str
    keyword: str
    default: Any
    help: str
    choices: tuple[str, ...] = ()


#: The controller's settings, declared once for both nodes (ROS 1 ``--max-frame-age``, ROS 2
#: ``max_frame_age``). An ``inference_deadline`` of 0 means half a period: a ROS 2 parameter has no None.
CONTROLLER_SETTINGS = (
    Setting("rate", "rate_hz", DEFAULT_RATE_HZ, "commands per second (the twin: 10)"),
    Setting("max_frame_age", "max_frame_age", MAX_FRAME_AGE, "stop when the newest frame is older than this (s)"),
    Setting("max_future", "max_future", MAX_FUTURE, "refuse inputs stamped further ahead of the node's clock (s)"),
    Setting("inference_deadline", "inference_deadline", 0.0, "seconds the policy may take; 0: half a period"),
    Setting(
        "velocity_source", "velocity_source", "encoders",
        "the velocity observation: encoders, odometry, command or zero", VELOCITY_SOURCES,
    ),
    Setting(
        "velocity_fallback", "velocity_fallback", "stop",
        "encoders/odometry silent: stop, or the last command's velocity, or zeros", VELOCITY_FALLBACKS,
    ),
    Setting("velocity_timeout", "velocity_timeout", VELOCITY_TIMEOUT, "encoders/odometry silent after this long (s)"),
    Setting("crop_square", "crop_square", False, "crop the frame's centre square before resizing"),
    Setting(
        "camera_size", "camera_size", CAMERA_SIZE,
        "the camera's WIDTHxHEIGHT before the resize, or its calibration .yaml (image_width, image_height): a "
        "frame of another size stops the wheels (bad_frame); the ROS 1 node's default is the robot's own "
        "calibration when it has one",
    ),
    Setting(
        "surprise_steps", "surprise_steps", 0,
        "coverage alarm: respond after this many steps in a row above the policy's surprise threshold (0: off)",
    ),
    Setting("surprise_response", "surprise_response", "stop", "coverage alarm: stop, or slow down", SURPRISE_RESPONSES),
    Setting("surprise_slow", "surprise_slow", 0.3, "coverage alarm: action scale while slowed down"),
)


def controller_keywords(values: Mapping[str, Any]) -> dict[str, Any]:
    """``LaneFollowingController`` keywords from a node's setting values, keyed by ``Setting.name``."""
    keywords = {setting.keyword: values[setting.name] for setting in CONTROLLER_SETTINGS}
    keywords["inference_deadline"] = keywords["inference_deadline"] or None
    return keywords


class StopReason(str, enum.Enum):
    """Why the controller commands zero wheels (``Command.reason``; ``None`` while driving)."""

    NO_FRAME = "no_frame"  # no valid frame received yet
    STALE_FRAME = "stale_frame"  # the newest frame is older than max_frame_age
    FUTURE_STAMP = "future_stamp"  # an input stamped more than max_future ahead of the clock
    BAD_STAMP = "bad_stamp"  # an input stamp that is not a finite number
    BAD_FRAME = "bad_frame"  # a frame that does not decode to an image, or not of the camera's size
    NON_FINITE_OBSERVATION = "non_finite_observation"  # NaN/inf in an input or in the observation
    NON_FINITE_ACTION = "non_finite_action"  # the policy returned NaN/inf (or the wrong shape)
    INFERENCE_ERROR = "inference_error"  # the policy raised
    INFERENCE_DEADLINE = "inference_deadline"  # no action within the deadline, or the late call still runs
    VELOCITY_SILENT = "velocity_silent"  # encoders/odometry silent and velocity_fallback is "stop"
    OUT_OF_COVERAGE = "out_of_coverage"  # surprise above the policy's threshold for surprise_steps steps (response "stop")
    CONTROLLER_ERROR = "controller_error"  # an unexpected error in the controller itself
    SHUTDOWN = "shutdown"  # the node is exiting

    def __str__(self) -> str:
        return self.value


def _kinematics() -> Any:
    """The twin's kinematics module (constants and ``Calibration``); NumPy only, no MuJoCo."""
    try:
        # latent_residual first: importing a plugin submodule before it leaves the plugin unregistered.
        import latent_residual  # noqa: F401
        from latent_residual_plugins.duckiebot import robot
    except ImportError as exc:  # pragma: no cover - depends on the robot's image
        raise ImportError(
            "The Duckiebot nodes reuse latent_residual_plugins.duckiebot.robot for the wheel kinematics; "
            "install latent-residual on the robot (pip install --no-deps latent-residual, plus numpy, "
            "pillow, onnxruntime, pluggy and gymnasium)."
        ) from exc
    return robot


# ----------------------------------------------------------------------------------------------
# Pure functions
# ----------------------------------------------------------------------------------------------


class FrameSizeError(ValueError):
    """A camera frame decodes, but not to the camera's size: resized, it would not be the pixels the policy knows."""


def load_camera_size(path: str | Path) -> tuple[int, int]:
    """(width, height) from a camera's intrinsic calibration YAML (ROS camera_info: ``image_width``,
    ``image_height``), as a Duckiebot keeps it in :data:`CAMERA_INTRINSICS`."""
    import yaml  # on the robot: part of every ROS install

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such camera calibration file.")
    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not a YAML camera calibration ({type(exc).__name__}).") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a YAML mapping with image_width and image_height, got {type(values).__name__}.")
    size = []
    for key in ("image_width", "image_height"):
        value = values.get(key)
        if type(value) is not int or value < 1:
            raise ValueError(f"{path}: key {key!r} is {value!r}, expected a positive number of pixels.")
        size.append(value)
    return size[0], size[1]


def parse_camera_size(value: str | Path | Sequence[int]) -> tuple[int, int]:
    """(width, height) from ``"640x480"``, a pair of positive integers, or the path of a camera calibration
    YAML (``.yaml``/``.yml``, read by :func:`load_camera_size`)."""
    if isinstance(value, (str, Path)) and str(value).lower().endswith((".yaml", ".yml")):
        return load_camera_size(value)
    try:
        parts = [int(part) for part in value.lower().split("x")] if isinstance(value, str) else list(value)
    except (AttributeError, TypeError, ValueError):
        parts = []
    if len(parts) == 2 and all(type(part) is int and part > 0 for part in parts):
        return parts[0], parts[1]
    raise ValueError(
        f"camera_size must be WIDTHxHEIGHT in pixels, like {CAMERA_SIZE!r}, or a camera calibration .yaml, got {value!r}."
    )


def decode_frame(
    data: bytes, size: int = 64, *, crop_square: bool = False, camera_size: tuple[int, int] | None = None
) -> np.ndarray:
    """Decode a JPEG (or PNG) camera frame to a uint8 (size, size, 3) RGB array.

    The whole frame is resized (antialiased bilinear), squashing 640x480 to a square; with
    ``crop_square`` the centre square is cut out first. Whatever is chosen must also be used
    when recording the robot's target dataset, so that data and deployment see the same pixels.

    :param camera_size: The (width, height) the frame must have; another raises ``FrameSizeError``
        (any size resizes to ``size``, so only the size before the resize tells a wrong frame).
    """
    from PIL import Image

    with Image.open(io.BytesIO(bytes(data))) as image:
        if camera_size is not None and image.size != tuple(camera_size):
            width, height = image.size
            raise FrameSizeError(f"frame is {width}x{height}, expected {camera_size[0]}x{camera_size[1]} (camera_size)")
        image = image.convert("RGB")
        if crop_square:
            width, height = image.size
            side = min(width, height)
            left, top = (width - side) // 2, (height - side) // 2
            image = image.crop((left, top, left + side, top + side))
        image = image.resize((size, size), Image.Resampling.BILINEAR)
        return np.asarray(image, dtype=np.uint8).copy()


def action_to_wheels(action: Sequence[float] | np.ndarray, calibration: Any = None) -> tuple[float, float]:
    """Map a policy action ``[forward, turn]`` in [-1, 1] to wheel commands (vel_left, vel_right).

    As in the simulated twin: ``forward`` commands ``MAX_SPEED`` m/s and ``turn`` ``MAX_YAW_RATE``
    rad/s (counter-clockwise); Duckietown's inverse kinematics (gain, trim, k, limit, radius
    0.0318 m, baseline 0.1 m) turn them into duty cycles in [-limit, limit].

    :param calibration: A ``Calibration`` (the robot's kinematics calibration); defaults to gain 1, trim 0.
    """
    robot = _kinematics()
    calibration = calibration or robot.Calibration()
    forward, turn = np.clip(np.asarray(action, dtype=np.float64).reshape(2), -1.0, 1.0)
    return calibration.duty_cycles(forward * robot.MAX_SPEED, turn * robot.MAX_YAW_RATE)


def load_calibration(path: str | Path) -> Any:
    """Read a Duckietown kinematics calibration YAML (``gain``, ``trim``, ``k``, ``limit``, ``radius``, ``baseline``)."""
    import yaml  # on the robot: part of every ROS install

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such kinematics calibration file.")
    values = yaml.safe_load(path.read_text()) or {}
    robot = _kinematics()
    fields = ("gain", "trim", "k", "limit", "radius", "baseline")
    return robot.Calibration(**{name: float(values[name]) for name in fields if name in values})


def wheel_velocity(
    left_ticks: float,
    right_ticks: float,
    dt: float,
    *,
    resolution: int = ENCODER_RESOLUTION,
    radius: float = 0.0318,
    baseline: float = 0.1,
) -> np.ndarray:
    """The ``velocity`` observation from encoder tick increments over ``dt`` seconds.

    :returns: float32 ``[yaw rate / MAX_YAW_RATE, forward speed / MAX_SPEED]`` clipped to [-1, 1],
        the layout the twin's ``velocity`` observation has.
    """
    if dt <= 0:
        raise ValueError(f"dt must be positive, got {dt}.")
    left = 2 * math.pi * radius * left_ticks / resolution / dt  # m/s at the rim
    right = 2 * math.pi * radius * right_ticks / resolution / dt
    return body_velocity((left + right) / 2, (right - left) / baseline)


def body_velocity(speed: float, yaw_rate: float) -> np.ndarray:
    """The ``velocity`` observation ``[yaw rate / MAX_YAW_RATE, speed / MAX_SPEED]`` (float32, clipped to [-1, 1])."""
    robot = _kinematics()
    velocity = np.array([yaw_rate / robot.MAX_YAW_RATE, speed / robot.MAX_SPEED])
    return np.clip(velocity, -1.0, 1.0).astype(np.float32)


def _finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except TypeError:
        return False


# ----------------------------------------------------------------------------------------------
# Inference off the control thread
# ----------------------------------------------------------------------------------------------


class InferenceTimeout(TimeoutError):
    """The policy gave no action within the deadline (the call goes on; its result is dropped)."""


class InferenceBusy(TimeoutError):
    """A previous call that missed its deadline is still running: no new call is started."""


class InferenceWorker:
    """Runs one call at a time on a daemon thread; ``call`` waits at most ``timeout`` seconds.

    A call that overruns cannot be killed (Python has no way to stop a thread): it keeps the
    worker busy, every later ``call`` raises ``InferenceBusy`` at once until it returns, and its
    result is thrown away. Being a daemon, a hung worker never keeps the process from exiting.
    """

    def __init__(self, name: str = "policy-inference") -> None:
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._pending: _Call | None = None
        self._running: _Call | None = None
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    @property
    def busy_for(self) -> float | None:
        """Seconds the current call has been running, or ``None`` when idle."""
        with self._lock:
            current = self._running or self._pending
            return None if current is None else time.monotonic() - current.started

    def call(self, function: Callable[[], Any], timeout: float) -> Any:
        """Run ``function`` on the worker and return its result, or raise what it raised.

        :raises InferenceBusy: An earlier call is still running.
        :raises InferenceTimeout: ``function`` did not return within ``timeout`` seconds.
        """
        job = _Call(function)
        with self._lock:
            if self._pending is not None or self._running is not None:
                raise InferenceBusy("the previous inference is still running")
            self._pending = job
            self._ready.notify()
        if not job.done.wait(timeout):
            raise InferenceTimeout(f"no action within {timeout * 1000:.0f} ms")
        if job.error is not None:
            raise job.error
        return job.result

    def _work(self) -> None:
        while True:
            with self._lock:
                while self._pending is None:
                    self._ready.wait()
                job, self._pending = self._pending, None
                self._running = job
            try:
                job.result = job.function()
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                job.error = exc
            with self._lock:
                self._running = None
            job.done.set()


class _Call:
    __slots__ = ("function", "started", "done", "result", "error")

    def __init__(self, function: Callable[[], Any]) -> None:
        self.function = function
        self.started = time.monotonic()
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None


# ----------------------------------------------------------------------------------------------
# The controller
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    """One control period's output: the action, the wheels' duty cycles, and why it is zero (if it is)."""

    forward: float
    turn: float
    left: float
    right: float
    reason: StopReason | None = None
    detail: str = ""
    stamp: float = 0.0

    @property
    def stopped(self) -> bool:
        return self.reason is not None

    @property
    def wheels(self) -> tuple[float, float]:
        return self.left, self.right

    def twist(self, max_speed: float | None = None, max_yaw_rate: float | None = None) -> tuple[float, float]:
        """(linear x in m/s, angular z in rad/s): 1 is the twin's 0.5 m/s and 5 rad/s unless given."""
        if max_speed is None or max_yaw_rate is None:
            robot = _kinematics()
            max_speed = robot.MAX_SPEED if max_speed is None else max_speed
            max_yaw_rate = robot.MAX_YAW_RATE if max_yaw_rate is None else max_yaw_rate
        return self.forward * max_speed, self.turn * max_yaw_rate


class LaneFollowingController:
    """Turns the newest camera frame and wheel speeds into one ``Command`` per ``step()``, safely.

    ``step()`` never blocks past ``inference_deadline``: the policy runs on an ``InferenceWorker``.
    The command is zero (``Command.reason`` says why; each stop is logged and counted in
    ``stop_counts``) when there is no frame newer than ``max_frame_age``, when an input arrived
    with a stamp that is not finite or lies more than ``max_future`` ahead of the clock, when a
    frame does not decode or is not ``camera_size``, when an input or the observation is not finite, when the policy
    raises, overruns its deadline (or its late call still runs) or returns a non-finite action,
    and when the encoders/odometry are silent for ``velocity_timeout`` with ``velocity_fallback``
    ``"stop"``. After any stop it drives again only on a frame received after the stop (and a valid
    wheel-speed reading after an invalid one), and then ``reset()``s the policy first (a recurrent
    policy's filter state never carries over a gap).

    Faults that arrive with an input call ``on_alarm`` (``ControlLoop`` sets it to wake up and
    stop the wheels at once, without waiting for the next period).

    :param policy: The exported policy; its one uint8 (H, W, 3) input is the camera, and a
        ``velocity`` input, if any, is filled from ``velocity_source``.
    :param calibration: The robot's kinematics ``Calibration``.
    :param velocity_source: One of ``VELOCITY_SOURCES``.
    :param velocity_fallback: One of ``VELOCITY_FALLBACKS``: what to do when encoders/odometry are silent.
    :param crop_square: Cut the centre square out of each frame before resizing.
    :param camera_size: The camera's frame size, ``"WIDTHxHEIGHT"`` or (width, height); a frame of another
        size is refused (``BAD_FRAME``) before the resize would hide it.
    :param rate_hz: Control rate; ``step()`` is meant to be called once per period.
    :param max_frame_age: Stop when the newest frame is older than this (seconds).
    :param max_future: Refuse inputs stamped further ahead of ``clock()`` than this (seconds).
    :param inference_deadline: Seconds ``step()`` waits for the policy; default half a period.
    :param velocity_timeout: Seconds without an encoder/odometry reading before it counts as silent.
    :param surprise_steps: The coverage alarm (a policy exported with ``surprise``): after this many
        consecutive steps whose surprise exceeds the policy's ``surprise_threshold``, respond with
        ``surprise_response``; 0 turns the alarm off.
    :param surprise_response: ``"stop"`` (a stop for ``OUT_OF_COVERAGE``; driving resumes on a fresh
        frame with a reset policy, so the alarm needs ``surprise_steps`` steps again) or ``"slow"``
        (actions scaled by ``surprise_slow`` for as long as the surprise stays above; logged when it
        starts and ends, counted in ``slowdowns``).
    :param surprise_slow: The action scale while slowed, in (0, 1).
    :param clock: Seconds now, on the clock the input stamps use (ROS time on a robot; ``time.time`` by default).
    """

    def __init__(
        self,
        policy: OnnxPolicy,
        calibration: Any = None,
        *,
        velocity_source: str = "encoders",
        velocity_fallback: str = "stop",
        crop_square: bool = False,
        camera_size: str | tuple[int, int] = CAMERA_SIZE,
        rate_hz: float = DEFAULT_RATE_HZ,
        max_frame_age: float = MAX_FRAME_AGE,
        max_future: float = MAX_FUTURE,
        inference_deadline: float | None = None,
        velocity_timeout: float = VELOCITY_TIMEOUT,
        surprise_steps: int = 0,
        surprise_response: str = "stop",
        surprise_slow: float = 0.3,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if velocity_source not in VELOCITY_SOURCES:
            raise ValueError(f"velocity_source must be one of {VELOCITY_SOURCES}, got {velocity_source!r}.")
        if velocity_fallback not in VELOCITY_FALLBACKS:
            raise ValueError(f"velocity_fallback must be one of {VELOCITY_FALLBACKS}, got {velocity_fallback!r}.")
        for name, value in (("rate_hz", rate_hz), ("max_frame_age", max_frame_age), ("velocity_timeout", velocity_timeout)):
            if not _finite(value) or value <= 0:
                raise ValueError(f"{name} must be a positive number of seconds (Hz for rate_hz), got {value!r}.")
        if not _finite(max_future) or max_future < 0:
            raise ValueError(f"max_future must be a non-negative number of seconds, got {max_future!r}.")
        period = 1.0 / rate_hz
        inference_deadline = period / 2 if inference_deadline is None else inference_deadline
        if not _finite(inference_deadline) or not 0 < inference_deadline < period:
            raise ValueError(
                f"inference_deadline must lie between 0 and the control period ({period:.3f} s at {rate_hz:g} Hz), "
                f"got {inference_deadline!r}."
            )
        images = [key for key, (dtype, shape) in policy.inputs.items() if dtype == np.uint8 and len(shape) == 3]
        if len(images) != 1 or policy.inputs[images[0]][1][0] != policy.inputs[images[0]][1][1]:
            raise ValueError(f"The policy needs exactly one square uint8 (H, W, 3) camera input; it has {policy.inputs}.")
        others = [key for key in policy.inputs if key not in (images[0], VELOCITY_KEY)]
        if others:
            raise ValueError(f"The Duckiebot nodes fill only the camera and {VELOCITY_KEY!r}; the policy also reads {others}.")
        if isinstance(surprise_steps, bool) or not isinstance(surprise_steps, int) or surprise_steps < 0:
            raise ValueError(f"surprise_steps must be an integer >= 0 (0: no coverage alarm), got {surprise_steps!r}.")
        if surprise_response not in SURPRISE_RESPONSES:
            raise ValueError(f"surprise_response must be one of {SURPRISE_RESPONSES}, got {surprise_response!r}.")
        if not _finite(surprise_slow) or not 0 < surprise_slow < 1:
            raise ValueError(f"surprise_slow must be a scale in (0, 1), got {surprise_slow!r}.")
        if surprise_steps and getattr(policy, "surprise_threshold", None) is None:
            raise ValueError(
                "surprise_steps needs a policy exported with the coverage alarm "
                "(export_policy(..., surprise=True, surprise_threshold=...)); this one has none."
            )
        if policy.action_shape != (2,):
            raise ValueError(f"The policy's action must be [forward, turn] (shape (2,)); it has shape {policy.action_shape}.")
        self.policy = policy
        self.calibration = calibration or _kinematics().Calibration()
        self.image_key = images[0]
        self.image_size = policy.inputs[self.image_key][1][0]
        self.reads_velocity = VELOCITY_KEY in policy.inputs
        self.velocity_source = velocity_source
        self.velocity_fallback = velocity_fallback
        self.crop_square = crop_square
        self.camera_size = parse_camera_size(camera_size)
        self.rate_hz = float(rate_hz)
        self.period = period
        self.max_frame_age = float(max_frame_age)
        self.max_future = float(max_future)
        self.inference_deadline = float(inference_deadline)
        self.velocity_timeout = float(velocity_timeout)
        self.surprise_steps = surprise_steps
        self.surprise_response = surprise_response
        self.surprise_slow = float(surprise_slow)
        self.clock = clock
        #: Called (from the input's thread) when an input brings a fault; ControlLoop wakes on it.
        self.on_alarm: Callable[[], None] | None = None
        #: Stop events by reason (a stop event: the first zero after driving, or a change of reason).
        self.stop_counts: collections.Counter[StopReason] = collections.Counter()
        #: How often the wheel-speed source went silent and the fallback took over.
        self.fallback_count = 0
        #: How often it started driving (the first time, and after each stop), each time after a policy reset().
        self.resumes = 0
        #: How often the coverage alarm slowed the robot down (response "slow").
        self.slowdowns = 0
        self._surprised = 0  # consecutive steps above the surprise threshold
        self.last_action = np.zeros(2, dtype=np.float32)
        self.worker = InferenceWorker()
        # Everything below is shared between the input callbacks' threads and the control thread.
        self._lock = threading.RLock()
        self._frame: tuple[np.ndarray, float] | None = None  # (image, stamp) of the newest valid frame
        self._frame_seq = 0  # valid frames received so far
        self._resume_after = 0  # drive only on a frame with a higher number than this
        self._alarm: tuple[StopReason, str] | None = None  # a fault that arrived with an input
        self._driving = False
        self._reason: StopReason | None = StopReason.NO_FRAME
        self._need_reset = True
        self._closed = False
        self._ticks: dict[str, tuple[float, float, int]] = {}  # side -> (ticks, stamp, resolution), newest
        self._ticks_at_step: dict[str, tuple[float, float, int]] = {}
        self._measured: tuple[np.ndarray, float] | None = None  # odometry: (velocity, stamp)
        self._velocity_fault: str | None = None  # an invalid reading; cleared by the next valid one
        self._velocity = np.zeros(2, dtype=np.float32)  # the encoders' estimate
        self._falling_back = False

    # -- inputs (any thread) ---------------------------------------------------------------------

    @property
    def latest(self) -> tuple[np.ndarray | None, float]:
        """(image, stamp) of the newest valid frame; ``(None, -inf)`` before the first one."""
        frame = self._frame
        return frame if frame is not None else (None, -math.inf)

    def on_frame(self, data: bytes, stamp: float | None = None) -> None:
        """Take a compressed camera frame stamped ``stamp`` (seconds on ``clock``; ``None``: received now)."""
        now = self.clock()
        stamp = now if stamp is None else stamp
        problem = self._stamp_problem(stamp, now, "frame")
        if problem is not None:
            self._raise_alarm(*problem)
            return
        try:
            image = decode_frame(data, self.image_size, crop_square=self.crop_square, camera_size=self.camera_size)
        except FrameSizeError as exc:
            self._raise_alarm(StopReason.BAD_FRAME, str(exc))
            return
        except Exception as exc:  # noqa: BLE001 - any undecodable frame is a stop, not a crash
            self._raise_alarm(StopReason.BAD_FRAME, f"frame does not decode ({type(exc).__name__}: {exc})")
            return
        with self._lock:
            if self._frame is not None and stamp < self._frame[1]:
                return  # out of order: keep the newer frame
            self._frame = (image, float(stamp))
            self._frame_seq += 1

    def on_encoder(self, side: str, ticks: float, stamp: float | None = None, resolution: int = ENCODER_RESOLUTION) -> None:
        """Take a wheel encoder's cumulative tick count (``side`` is ``"left"`` or ``"right"``)."""
        if side not in ("left", "right"):
            raise ValueError(f"side must be 'left' or 'right', got {side!r}.")
        now = self.clock()
        stamp = now if stamp is None else stamp
        problem = self._stamp_problem(stamp, now, f"{side} encoder reading")
        if problem is None and not _finite(ticks):
            problem = (StopReason.NON_FINITE_OBSERVATION, f"{side} encoder reports {ticks!r} ticks")
        if problem is not None:
            with self._lock:
                self._velocity_fault = problem[1]
                self._ticks.pop(side, None)
            self._raise_alarm(*problem)
            return
        with self._lock:
            self._ticks[side] = (float(ticks), float(stamp), int(resolution) or ENCODER_RESOLUTION)
            if self.velocity_source == "encoders":
                self._velocity_fault = None

    def on_odometry(self, speed: float, yaw_rate: float, stamp: float | None = None) -> None:
        """Take a measured body velocity (forward m/s, counter-clockwise rad/s) for ``velocity_source="odometry"``."""
        now = self.clock()
        stamp = now if stamp is None else stamp
        problem = self._stamp_problem(stamp, now, "odometry reading")
        if problem is None and not (_finite(speed) and _finite(yaw_rate)):
            problem = (StopReason.NON_FINITE_OBSERVATION, f"odometry reports speed {speed!r}, yaw rate {yaw_rate!r}")
        if problem is not None:
            with self._lock:
                self._velocity_fault = problem[1]
                self._measured = None
            self._raise_alarm(*problem)
            return
        with self._lock:
            self._measured = (body_velocity(speed, yaw_rate), float(stamp))
            self._velocity_fault = None

    def _stamp_problem(self, stamp: Any, now: float, what: str) -> tuple[StopReason, str] | None:
        if not _finite(stamp):
            return StopReason.BAD_STAMP, f"{what} stamped {stamp!r}"
        if stamp > now + self.max_future:
            return StopReason.FUTURE_STAMP, f"{what} stamped {stamp - now:.3f} s in the future (bound {self.max_future:g} s)"
        return None

    def _raise_alarm(self, reason: StopReason, detail: str) -> None:
        with self._lock:
            self._alarm = (reason, detail)
        if self.on_alarm is not None:
            self.on_alarm()

    # -- the velocity observation ------------------------------------------------------------------

    def velocity(self) -> np.ndarray:
        """The ``velocity`` observation now (encoder speeds are measured between two calls)."""
        with self._lock:
            return self._velocity_now(self.clock())[0]

    def _velocity_now(self, now: float) -> tuple[np.ndarray, tuple[StopReason, str] | None]:
        """(velocity, stop or None); call with the lock held."""
        zero = np.zeros(2, dtype=np.float32)
        if self.velocity_source == "zero" or not self.reads_velocity:
            return zero, None
        if self.velocity_source == "command":
            return self._command_velocity(), None
        if self._velocity_fault is not None:
            return zero, (StopReason.NON_FINITE_OBSERVATION, f"{self._velocity_fault}; waiting for a valid reading")
        silent = self._silence(now)
        if silent is None:
            if self.velocity_source == "encoders":
                self._update_encoder_estimate()
            if self._falling_back:
                source = "the wheel encoders report" if self.velocity_source == "encoders" else "odometry reports"
                logger.info("wheel speeds: %s again", source)
                self._falling_back = False
            return (self._velocity if self.velocity_source == "encoders" else self._measured[0]), None
        if not self._falling_back:
            self._falling_back = True
            self.fallback_count += 1
            consequence = {
                "stop": "stopping until it reports",
                "command": "using the last command's velocity until it reports",
                "zero": "using a zero velocity until it reports",
            }[self.velocity_fallback]
            logger.warning("wheel speeds: %s (bound %.2f s); %s", silent, self.velocity_timeout, consequence)
        self._ticks_at_step = {}
        if self.velocity_fallback == "stop":
            return zero, (StopReason.VELOCITY_SILENT, silent)
        return (self._command_velocity() if self.velocity_fallback == "command" else zero), None

    def _command_velocity(self) -> np.ndarray:
        forward, turn = self.last_action
        return np.clip(np.array([turn, forward]), -1.0, 1.0).astype(np.float32)

    def _silence(self, now: float) -> str | None:
        """Why the encoders (or odometry) count as silent now, or ``None`` (lock held; other sources never fall silent)."""
        if self.velocity_source == "encoders":
            return self._encoders_silent(now)
        measured = self._measured
        age = math.inf if measured is None else now - measured[1]
        if age <= self.velocity_timeout:
            return None
        return "no odometry yet" if measured is None else f"odometry silent for {age:.2f} s"

    def _stops_on_silence(self) -> bool:
        return self.reads_velocity and self.velocity_source in ("encoders", "odometry") and self.velocity_fallback == "stop"

    def _silence_stop(self, now: float) -> tuple[StopReason, str] | None:
        """The stop a silent wheel-speed source calls for now (lock held), when its fallback is to stop."""
        silent = self._silence(now) if self._stops_on_silence() else None
        return None if silent is None else (StopReason.VELOCITY_SILENT, silent)

    def _silence_deadline(self) -> float | None:
        """When (on ``clock``) the newest wheel-speed reading passes ``velocity_timeout``, if that stops the
        wheels (lock held); ``None`` otherwise, or before the first reading (then no step drives)."""
        if not self._stops_on_silence():
            return None
        if self.velocity_source == "encoders":
            if set(self._ticks) != {"left", "right"}:
                return None
            return min(stamp for _, stamp, _ in self._ticks.values()) + self.velocity_timeout
        return None if self._measured is None else self._measured[1] + self.velocity_timeout

    def _encoders_silent(self, now: float) -> str | None:
        missing = [side for side in ("left", "right") if side not in self._ticks]
        if missing:
            return f"no {' or '.join(missing)} wheel encoder reading yet"
        age = now - min(stamp for _, stamp, _ in self._ticks.values())
        if age > self.velocity_timeout:
            return f"wheel encoders silent for {age:.2f} s"
        return None

    def _update_encoder_estimate(self) -> None:
        if set(self._ticks_at_step) == {"left", "right"}:
            rates = []  # ticks per second, in units of the DB21's resolution
            for side in ("left", "right"):
                (ticks, stamp, resolution), (old_ticks, old_stamp, _) = self._ticks[side], self._ticks_at_step[side]
                if stamp <= old_stamp:  # no new reading since the last step: keep the estimate
                    break
                rates.append((ticks - old_ticks) / (stamp - old_stamp) * ENCODER_RESOLUTION / resolution)
            else:
                self._velocity = wheel_velocity(
                    rates[0], rates[1], 1.0, radius=self.calibration.radius, baseline=self.calibration.baseline
                )
        self._ticks_at_step = dict(self._ticks)

    # -- the control period (the control thread) ---------------------------------------------------

    def step(self) -> Command:
        """This period's command: act on the newest frame, or zero wheels with the reason."""
        now = self.clock()
        with self._lock:
            if self._closed:
                return self._stop(StopReason.SHUTDOWN, "the node is shutting down", now)
            velocity, velocity_stop = self._velocity_now(now)
            stop = self._input_stop(now) or velocity_stop
            if stop is not None:
                return self._stop(*stop, now)
            image, _ = self._frame
            reset = self._need_reset
        obs = {self.image_key: image}
        if self.reads_velocity:
            obs[VELOCITY_KEY] = velocity
            if not np.isfinite(velocity).all():
                with self._lock:
                    return self._stop(StopReason.NON_FINITE_OBSERVATION, f"velocity observation {velocity.tolist()}", now)
        try:
            action = self.worker.call(lambda: self._infer(obs, reset), self.inference_deadline)
        except InferenceBusy:
            running = self.worker.busy_for
            detail = "the late inference call is still running" + (f" ({running * 1000:.0f} ms)" if running else "")
            with self._lock:
                return self._stop(StopReason.INFERENCE_DEADLINE, detail, now)
        except InferenceTimeout as exc:
            with self._lock:
                return self._stop(StopReason.INFERENCE_DEADLINE, str(exc), now)
        except _NON_FINITE_ERRORS as exc:
            with self._lock:
                return self._stop(StopReason.NON_FINITE_OBSERVATION, str(exc), now)
        except Exception as exc:  # noqa: BLE001 - whatever the policy raises stops the wheels
            with self._lock:
                return self._stop(StopReason.INFERENCE_ERROR, f"{type(exc).__name__}: {exc}", now)
        action = np.asarray(action, dtype=np.float32).reshape(-1)
        if action.shape != (2,) or not np.isfinite(action).all():
            with self._lock:
                return self._stop(StopReason.NON_FINITE_ACTION, f"the policy returned {action.tolist()}", now)
        action, detail = self._coverage(action, reset)
        if detail and self.surprise_response == "stop":
            with self._lock:
                return self._stop(StopReason.OUT_OF_COVERAGE, detail, now)
        with self._lock:
            now = self.clock()
            if self._closed:
                return self._stop(StopReason.SHUTDOWN, "the node is shutting down", now)
            # A fault may have arrived, or a bound passed, while the policy ran.
            stop = self._input_stop(now) or self._silence_stop(now)
            if stop is not None:
                return self._stop(*stop, now)
            if not self._driving:
                self.resumes += 1
                if self._reason is not None:
                    logger.info("driving again after %s (policy reset)", self._reason)
            self._driving, self._reason, self._need_reset = True, None, False
            self.last_action = action
            left, right = action_to_wheels(action, self.calibration)
            return Command(float(action[0]), float(action[1]), left, right, None, detail, now)

    def _coverage(self, action: np.ndarray, reset: bool) -> tuple[np.ndarray, str]:
        """Count steps whose surprise exceeds the threshold; past ``surprise_steps`` in a row, the
        alarm's detail (and the slowed action for response "slow"); else the action and ""."""
        if not self.surprise_steps:
            return action, ""
        threshold, surprise = self.policy.surprise_threshold, self.policy.last_surprise
        was_alarmed = not reset and self._surprised >= self.surprise_steps
        over = self.policy.surprised  # a non-finite surprise counts as over
        self._surprised = (0 if reset else self._surprised) + 1 if over else 0
        if self._surprised < self.surprise_steps:
            if was_alarmed and self.surprise_response == "slow":
                logger.info("surprise %.3g back under the threshold %.3g: full speed again", surprise, threshold)
            return action, ""
        detail = f"surprise {surprise:.3g} above the threshold {threshold:.3g} for {self._surprised} steps: out of the model's coverage"
        if self.surprise_response == "stop":
            return action, detail
        if not was_alarmed:
            self.slowdowns += 1
            logger.warning("slowing down to %g: %s", self.surprise_slow, detail)
        return action * np.float32(self.surprise_slow), f"slowed: {detail}"

    def _infer(self, obs: dict[str, np.ndarray], reset: bool) -> np.ndarray:
        """Runs on the worker thread, so a reset never races a late call."""
        if reset:
            self.policy.reset()
        return self.policy.act(obs)

    def check(self) -> Command | None:
        """A stop command if one is due now while driving (a fault arrived, the frame expired, the
        wheel speeds fell silent with ``velocity_fallback`` "stop"), else ``None``.

        Runs no inference; ``ControlLoop`` calls it between periods.
        """
        now = self.clock()
        with self._lock:
            if not self._driving:
                return None
            stop = self._input_stop(now) or self._silence_stop(now)
            return None if stop is None else self._stop(*stop, now)

    def seconds_to_deadline(self) -> float | None:
        """Seconds until the next bound passes while driving (``None`` when stopped): the newest frame's
        ``max_frame_age``, or the newest wheel-speed reading's ``velocity_timeout`` when silence stops the wheels.

        ``ControlLoop`` wakes at that moment, so a silent input stops the wheels at its bound, not at the next period.
        """
        with self._lock:
            if not self._driving or self._frame is None:
                return None
            deadline = self._frame[1] + self.max_frame_age
            silence = self._silence_deadline()
            return (deadline if silence is None else min(deadline, silence)) - self.clock()

    def fail(self, detail: str) -> Command:
        """A stop for an unexpected error in the controller (``ControlLoop`` calls it)."""
        try:
            now = self.clock()
        except Exception:  # noqa: BLE001 - the clock itself may be what failed
            now = math.nan
        with self._lock:
            return self._stop(StopReason.CONTROLLER_ERROR, detail, now)

    def shutdown(self) -> Command:
        """The final stop; every later ``step()`` is a stop too."""
        now = self.clock()
        with self._lock:
            self._closed = True
            command = self._stop(StopReason.SHUTDOWN, "the node is shutting down", now)
        counts = ", ".join(f"{reason} {count}" for reason, count in sorted(self.stop_counts.items())) or "none"
        logger.info("stops while running: %s; wheel-speed fallbacks: %d", counts, self.fallback_count)
        return command

    def _input_stop(self, now: float) -> tuple[StopReason, str] | None:
        """The stop the inputs call for now (lock held): an alarm, no fresh frame, or a stale one."""
        if self._alarm is not None:
            alarm, self._alarm = self._alarm, None
            return alarm
        if self._frame is None:
            return StopReason.NO_FRAME, "no camera frame yet"
        if self._frame_seq <= self._resume_after:
            return self._reason or StopReason.STALE_FRAME, "waiting for a frame received after the stop"
        age = now - self._frame[1]
        if age > self.max_frame_age:
            return StopReason.STALE_FRAME, f"newest frame is {age:.3f} s old (bound {self.max_frame_age:g} s)"
        return None

    def _stop(self, reason: StopReason, detail: str, now: float) -> Command:
        """Zero wheels (lock held): count and log a new stop, and require a fresh frame to drive again."""
        if self._driving or reason != self._reason:
            self.stop_counts[reason] += 1
            log = logger.info if reason in (StopReason.NO_FRAME, StopReason.SHUTDOWN) else logger.warning
            log("stop (%s): %s", reason, detail)
        self._driving, self._reason, self._need_reset = False, reason, True
        self._resume_after = self._frame_seq
        self.last_action = np.zeros(2, dtype=np.float32)
        return Command(0.0, 0.0, 0.0, 0.0, reason, detail, now)


# ----------------------------------------------------------------------------------------------
# The control loop
# ----------------------------------------------------------------------------------------------


class ControlLoop:
    """Publishes ``controller.step()`` every period on its own thread, whatever else happens.

    Between periods it sleeps until the next tick, the next input bound (the newest frame's expiry,
    the wheel speeds' silence: ``controller.seconds_to_deadline``), or an alarm from an input
    (``controller.on_alarm``), and publishes a stop at once when one is due. An error in the
    controller publishes a stop (``CONTROLLER_ERROR``); an error in ``publish`` is logged and the
    loop goes on. ``close()`` ends the thread and publishes a final stop.

    :param controller: The ``LaneFollowingController`` (its ``period`` sets the rate).
    :param publish: Sends one ``Command`` (called from the loop's thread, and from ``close()``'s caller).
    """

    def __init__(self, controller: LaneFollowingController, publish: Callable[[Command], None]) -> None:
        self.controller = controller
        self.period = controller.period
        self._publish = publish
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self.published = 0
        self.overruns = 0
        controller.on_alarm = self.wake

    def start(self) -> ControlLoop:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="control-loop", daemon=True)
            self._thread.start()
        return self

    def wake(self) -> None:
        """Check for a due stop now (thread-safe; inputs call it through ``controller.on_alarm``)."""
        self._wake.set()

    def close(self) -> Command:
        """Stop the loop and publish the final stop (the shutdown's); returns that command."""
        self._closing.set()
        self._wake.set()
        command = self.controller.shutdown()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(self.period + self.controller.inference_deadline + 1.0)
        self._send(command)
        return command

    def _send(self, command: Command) -> None:
        try:
            self._publish(command)
            self.published += 1
        except Exception as exc:  # noqa: BLE001 - keep publishing next period
            logger.error("publishing the command failed: %s: %s", type(exc).__name__, exc)

    def _tick(self) -> None:
        try:
            command = self.controller.step()
        except Exception as exc:  # noqa: BLE001 - a bug must not silence the loop
            command = self._failed(exc)
        self._send(command)

    def _failed(self, exc: Exception) -> Command:
        logger.exception("the controller failed; stopping the wheels")
        return self.controller.fail(f"{type(exc).__name__}: {exc}")

    def _run(self) -> None:
        next_tick = time.monotonic()
        while not self._closing.is_set():
            now = time.monotonic()
            if now >= next_tick:
                self._tick()
                next_tick += self.period
                now = time.monotonic()
                if now >= next_tick:  # overran whole periods: skip them, keep the phase
                    missed = math.floor((now - next_tick) / self.period) + 1
                    self.overruns += missed
                    next_tick += missed * self.period
                continue
            timeout = next_tick - now
            try:
                bound_in = self.controller.seconds_to_deadline()
            except Exception:  # noqa: BLE001 - the next tick reports it
                bound_in = None
            if bound_in is not None:  # 1 ms past the bound: the checks stop only once an age exceeds it
                timeout = min(timeout, max(bound_in, 0.0) + 0.001)
            self._wake.wait(timeout)
            self._wake.clear()
            if self._closing.is_set():
                break
            if time.monotonic() < next_tick:
                try:
                    command = self.controller.check()
                except Exception as exc:  # noqa: BLE001 - a bug must not silence the loop
                    command = self._failed(exc)
                if command is not None:
                    self._send(command)


class LogForwarder(logging.Handler):
    """Forwards the safety layer's log records to a ROS logger's ``error``/``warning``/``info`` functions."""

    def __init__(self, error: Callable[[str], Any], warning: Callable[[str], Any], info: Callable[[str], Any]) -> None:
        super().__init__()
        self.error, self.warning, self.info = error, warning, info

    def emit(self, record: logging.LogRecord) -> None:
        message = self.format(record)
        if record.levelno >= logging.ERROR:
            self.error(message)
        elif record.levelno >= logging.WARNING:
            self.warning(message)
        else:
            self.info(message)

    def attach(self) -> LogForwarder:
        """Forward this package's INFO and above from now on (``detach`` ends it)."""
        package_logger = logging.getLogger(PACKAGE_LOGGER)
        package_logger.addHandler(self)
        package_logger.setLevel(logging.INFO)
        return self

    def detach(self) -> None:
        logging.getLogger(PACKAGE_LOGGER).removeHandler(self)


def stop_on_signals(event: threading.Event, signals: Sequence[int] = (signal.SIGINT, signal.SIGTERM)) -> None:
    """Make SIGINT and SIGTERM set ``event`` (call from the main thread); the node then publishes a stop and exits."""

    def handler(signum: int, _frame: Any) -> None:
        logger.info("received %s: stopping the wheels and exiting", signal.Signals(signum).name)
        event.set()

    for signum in signals:
        signal.signal(signum, handler)
