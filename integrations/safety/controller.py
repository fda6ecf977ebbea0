"""LaneFollowingController: the newest inputs in, one Command per step() out, running checks.CHECKS each step; a stop
zeroes the wheels, is logged and counted, and driving resumes only on a fresh frame. The loop around it is loop.py."""

from __future__ import annotations

import collections
import logging
import math
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np

from latent_residual.onnx_policy import OnnxPolicy
from latent_residual_integrations.safety import checks as _checks
from latent_residual_integrations.safety.checks import STAGES, Check, Reading, Step
from latent_residual_integrations.safety.commands import Command, StopReason
from latent_residual_integrations.safety.frames import decode_frame
from latent_residual_integrations.safety.inference import InferenceWorker
from latent_residual_integrations.safety.settings import ControllerSettings
from latent_residual_integrations.safety.velocity import VELOCITY_KEY, WheelSpeeds
from latent_residual_integrations.safety.wheels import ENCODER_RESOLUTION, action_to_wheels, kinematics

logger = logging.getLogger(__name__)

Stop = tuple["StopReason | str", str]  # (reason, detail)
_SHUTDOWN: Stop = (StopReason.SHUTDOWN, "the node is shutting down")


def camera_input(policy: OnnxPolicy) -> tuple[str, int, bool]:
    """(the camera input's name, its side in pixels, whether the policy reads a velocity); a one-line
    ``ValueError`` for a policy the Duckiebot nodes cannot feed."""
    images = [key for key, (dtype, shape) in policy.inputs.items() if dtype == np.uint8 and len(shape) == 3]
    if len(images) != 1 or policy.inputs[images[0]][1][0] != policy.inputs[images[0]][1][1]:
        raise ValueError(f"The policy needs exactly one square uint8 (H, W, 3) camera input; it has {policy.inputs}.")
    others = [key for key in policy.inputs if key not in (images[0], VELOCITY_KEY)]
    if others:
        raise ValueError(
            f"The Duckiebot nodes fill only the camera and {VELOCITY_KEY!r}; the policy also reads {others}."
        )
    if policy.action_shape != (2,):
        raise ValueError(
            f"The policy's action must be [forward, turn] (shape (2,)); it has shape {policy.action_shape}."
        )
    return images[0], policy.inputs[images[0]][1][0], VELOCITY_KEY in policy.inputs


class LaneFollowingController:
    """Turns the newest camera frame and wheel speeds into one ``Command`` per ``step()``, safely.

    ``step()`` never blocks past ``inference_deadline``: the policy runs on an ``InferenceWorker``. The command is
    zero when a check of ``checks.CHECKS`` fires (``Command.reason`` says why; each stop is logged and counted in
    ``stop_counts``; docs/safety.md lists them). After any stop it drives again only on a frame received after the
    stop (and a valid wheel-speed reading after an invalid one), and then ``reset()``s the policy first (a recurrent
    policy's filter state never carries over a gap). Faults that arrive with an input call ``on_alarm``
    (``ControlLoop`` sets it to wake up and stop the wheels at once, without waiting for the next period).

    :param policy: The exported policy; its one uint8 (H, W, 3) input is the camera, and a ``velocity`` input,
        if any, is filled from ``velocity_source``.
    :param calibration: The robot's kinematics ``Calibration``.
    :param clock: Seconds now, on the clock the input stamps use (ROS time on a robot; ``time.time`` by default).
    :param settings: Keywords of ``CONTROLLER_SETTINGS`` (``rate_hz``, ``max_frame_age``, ...; the table has each
        one's default and meaning), checked into ``self.settings``.
    """

    def __init__(
        self, policy: OnnxPolicy, calibration: Any = None, *, clock: Callable[[], float] = time.time, **settings: Any
    ) -> None:
        self.settings = ControllerSettings(**settings)
        self.image_key, self.image_size, self.reads_velocity = camera_input(policy)
        self.policy = policy
        self.calibration = calibration or kinematics().Calibration()
        self.period = 1.0 / self.settings.rate_hz
        self.clock = clock
        #: Called (from the input's thread) when an input brings a fault; ControlLoop wakes on it.
        self.on_alarm: Callable[[], None] | None = None
        #: Stop events by reason (a stop event: the first zero after driving, or a change of reason).
        self.stop_counts: collections.Counter[StopReason | str] = collections.Counter()
        #: How often it started driving (the first time, and after each stop), each time after a policy reset().
        self.resumes = 0
        #: How often the coverage alarm slowed the robot down (response "slow").
        self.slowdowns = 0
        self.last_action = np.zeros(2, dtype=np.float32)
        self.wheel_speeds = WheelSpeeds(self.settings, self.calibration, self.reads_velocity)
        self._decode = partial(
            decode_frame,
            size=self.image_size,
            crop_square=self.settings.crop_square,
            camera_size=self.settings.camera_size,
        )
        built = [check(self) for check in _checks.CHECKS]  # a check may refuse the settings or the policy
        self.checks: dict[str, list[Check]] = {stage: [c for c in built if c.stage == stage] for stage in STAGES}
        self.worker = InferenceWorker()
        # Everything below is shared between the input callbacks' threads and the control thread.
        self._lock = threading.RLock()
        self._frame: tuple[np.ndarray, float] | None = None  # (image, stamp) of the newest valid frame
        self._frame_seq = 0  # valid frames received so far
        self._resume_after = 0  # drive only on a frame with a higher number than this
        self._alarm: Stop | None = None  # a fault that arrived with an input
        self._driving = False
        self._reason: StopReason | str | None = StopReason.NO_FRAME
        self._need_reset = True
        self._closed = False

    @property
    def fallback_count(self) -> int:
        """How often the wheel-speed source went silent and the fallback took over."""
        return self.wheel_speeds.fallback_count

    # -- inputs (any thread) ---------------------------------------------------------------------

    @property
    def latest(self) -> tuple[np.ndarray | None, float]:
        """(image, stamp) of the newest valid frame; ``(None, -inf)`` before the first one."""
        frame = self._frame
        return frame if frame is not None else (None, -math.inf)

    def on_frame(self, data: bytes, stamp: float | None = None) -> None:
        """Take a compressed camera frame stamped ``stamp`` (seconds on ``clock``; ``None``: received now)."""
        now = self.clock()
        reading = Reading("frame", "frame", now if stamp is None else stamp, now, decode=partial(self._decode, data))
        stop = self._first_stop("input", reading)
        if stop is not None:
            self._raise_alarm(stop)
            return
        with self._lock:
            if self._frame is not None and reading.stamp < self._frame[1]:
                return  # out of order: keep the newer frame
            self._frame = (reading.image, float(reading.stamp))
            self._frame_seq += 1

    def on_encoder(
        self, side: str, ticks: float, stamp: float | None = None, resolution: int = ENCODER_RESOLUTION
    ) -> None:
        """Take a wheel encoder's cumulative tick count (``side`` is ``"left"`` or ``"right"``)."""
        if side not in ("left", "right"):
            raise ValueError(f"side must be 'left' or 'right', got {side!r}.")
        now = self.clock()
        stamp = now if stamp is None else stamp
        report = f"{side} encoder reports {{0!r}} ticks"
        stop = self._first_stop("input", Reading("encoder", f"{side} encoder reading", stamp, now, (ticks,), report))
        with self._lock:
            if stop is None:
                self.wheel_speeds.on_encoder(side, ticks, stamp, resolution)
                return
            self.wheel_speeds.refuse(side, stop[1])
        self._raise_alarm(stop)

    def on_odometry(self, speed: float, yaw_rate: float, stamp: float | None = None) -> None:
        """Take a measured body velocity (forward m/s, counter-clockwise rad/s) for ``velocity_source="odometry"``."""
        now = self.clock()
        stamp = now if stamp is None else stamp
        report = "odometry reports speed {0!r}, yaw rate {1!r}"
        stop = self._first_stop("input", Reading("odometry", "odometry reading", stamp, now, (speed, yaw_rate), report))
        with self._lock:
            if stop is None:
                self.wheel_speeds.on_odometry(speed, yaw_rate, stamp)
                return
            self.wheel_speeds.refuse(None, stop[1])
        self._raise_alarm(stop)

    def _raise_alarm(self, stop: Stop) -> None:
        with self._lock:
            self._alarm = stop
        if self.on_alarm is not None:
            self.on_alarm()

    def velocity(self) -> np.ndarray:
        """The ``velocity`` observation now (encoder speeds are measured between two calls)."""
        with self._lock:
            return self.wheel_speeds.observe(self.clock(), self.last_action)

    # -- the control period (the control thread) ---------------------------------------------------

    def step(self) -> Command:
        """This period's command: act on the newest frame, or zero wheels with the reason."""
        now = self.clock()
        with self._lock:
            if self._closed:
                return self._stop(_SHUTDOWN, now)
            velocity = self.wheel_speeds.observe(now, self.last_action)
            stop = self._due_stop(now)
            if stop is not None:
                return self._stop(stop, now)
            step = Step(now, {self.image_key: self._frame[0]}, reset=self._need_reset)
        if self.reads_velocity:
            step.obs[VELOCITY_KEY] = velocity
        stop = self._first_stop("observation", step) or self._act(step) or self._first_stop("action", step)
        with self._lock:
            return self._stop(stop, now) if stop is not None else self._drive(step)

    def _act(self, step: Step) -> Stop | None:
        """Run the policy on the worker, for at most ``inference_deadline``: its action into ``step``, or the stop
        the first ``inference`` check that claims its exception calls for (none claims it: raised)."""
        try:
            action = self.worker.call(lambda: self._infer(step.obs, step.reset), self.settings.inference_deadline)
        except Exception as exc:  # noqa: BLE001 - the inference checks decide
            stop = self._first_stop("inference", exc)
            if stop is None:
                raise
            return stop
        step.action = np.asarray(action, dtype=np.float32).reshape(-1)
        return None

    def _infer(self, obs: dict[str, np.ndarray], reset: bool) -> np.ndarray:
        """Runs on the worker thread, so a reset never races a late call."""
        if reset:
            self.policy.reset()
        return self.policy.act(obs)

    def _drive(self, step: Step) -> Command:
        """The command for ``step``'s action (lock held), unless a fault came or a bound passed while the policy ran."""
        now = self.clock()
        stop = self._due_stop(now)
        if stop is not None:
            return self._stop(stop, now)
        if not self._driving:
            self.resumes += 1
            if self._reason is not None:
                logger.info("driving again after %s (policy reset)", self._reason)
        self._driving, self._reason, self._need_reset = True, None, False
        self.last_action = step.action
        left, right = action_to_wheels(step.action, self.calibration)
        return Command(float(step.action[0]), float(step.action[1]), left, right, None, step.note, now)

    def check(self) -> Command | None:
        """A stop command if one is due now while driving (a fault arrived, a ``state`` check fires), else ``None``.

        Runs no inference; ``ControlLoop`` calls it between periods.
        """
        now = self.clock()
        with self._lock:
            if not self._driving:
                return None
            stop = self._due_stop(now)
            return None if stop is None else self._stop(stop, now)

    def seconds_to_deadline(self) -> float | None:
        """Seconds until the next bound passes while driving (``None`` when stopped): the earliest ``deadline()`` of
        the ``state`` checks (the newest frame's ``max_frame_age``, the wheel speeds' ``velocity_timeout``, ...).

        ``ControlLoop`` wakes at that moment, so a silent input stops the wheels at its bound, not at the next period.
        """
        with self._lock:
            if not self._driving:
                return None
            deadlines = [when for check in self.checks["state"] if (when := check.deadline()) is not None]
            return min(deadlines) - self.clock() if deadlines else None

    def fail(self, detail: str) -> Command:
        """A stop for an unexpected error in the controller (``ControlLoop`` calls it)."""
        try:
            now = self.clock()
        except Exception:  # noqa: BLE001 - the clock itself may be what failed
            now = math.nan
        with self._lock:
            return self._stop((StopReason.CONTROLLER_ERROR, detail), now)

    def shutdown(self) -> Command:
        """The final stop; every later ``step()`` is a stop too."""
        now = self.clock()
        with self._lock:
            self._closed = True
            command = self._stop(_SHUTDOWN, now)
        counts = ", ".join(f"{reason} {count}" for reason, count in sorted(self.stop_counts.items())) or "none"
        logger.info("stops while running: %s; wheel-speed fallbacks: %d", counts, self.fallback_count)
        return command

    # -- the checks and the stops (lock held where noted) ------------------------------------------

    def _first_stop(self, stage: str, subject: Any) -> Stop | None:
        """The stop of the first check of ``stage`` that fires on ``subject``, or ``None``."""
        for check in self.checks[stage]:
            detail = check(subject)
            if detail is not None:
                return check.reason, detail
        return None

    def _due_stop(self, now: float) -> Stop | None:
        """The stop due now (lock held): the shutdown, a fault an input brought, no frame received since the last
        stop, or the first ``state`` check that fires."""
        if self._closed:
            return _SHUTDOWN
        if self._alarm is not None:
            alarm, self._alarm = self._alarm, None
            return alarm
        if self._frame is not None and self._frame_seq <= self._resume_after:
            return self._reason or StopReason.STALE_FRAME, "waiting for a frame received after the stop"
        return self._first_stop("state", now)

    def _stop(self, stop: Stop, now: float) -> Command:
        """Zero wheels (lock held): count and log a new stop, and require a fresh frame to drive again."""
        reason, detail = stop
        if self._driving or reason != self._reason:
            self.stop_counts[reason] += 1
            log = logger.info if reason in (StopReason.NO_FRAME, StopReason.SHUTDOWN) else logger.warning
            log("stop (%s): %s", reason, detail)
        self._driving, self._reason, self._need_reset = False, reason, True
        self._resume_after = self._frame_seq
        self.last_action = np.zeros(2, dtype=np.float32)
        return Command(0.0, 0.0, 0.0, 0.0, reason, detail, now)
