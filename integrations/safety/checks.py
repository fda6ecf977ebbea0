"""The safety checks, one small class each (a name, the StopReason of its stop, the stage it runs at), and CHECKS, the
ordered list the controller runs. When a stop ends and what a stop does (count, log, zero wheels) is controller.py."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from latent_residual.onnx_policy import NonFiniteObservationError
from latent_residual_integrations.safety.commands import StopReason
from latent_residual_integrations.safety.frames import FrameSizeError
from latent_residual_integrations.safety.inference import InferenceBusy, InferenceTimeout
from latent_residual_integrations.safety.settings import CONTROLLER_SETTINGS, Setting, finite

if TYPE_CHECKING:
    from latent_residual_integrations.safety.controller import LaneFollowingController

logger = logging.getLogger(__name__)

#: Where a check runs, and what it is called with:
#: ``input``: each frame, encoder or odometry reading as it arrives (a ``Reading``, any thread); a stop drops the
#: reading and reaches the wheels at once, between periods.
#: ``state``: the controller's inputs now (the clock's ``now``, lock held): before the policy runs, again after it, and
#: between periods while driving; ``deadline()`` says when the check will next fire, and the loop wakes then.
#: ``observation``: the observation before the policy runs (a ``Step``).
#: ``inference``: the exception the policy call raised (the first check that claims it decides the stop).
#: ``action``: the action the policy returned (a ``Step``; a check may scale ``step.action`` and set ``step.note``).
STAGES = ("input", "state", "observation", "inference", "action")


@dataclass
class Reading:
    """One input as it arrives, for the ``input`` checks.

    :param kind: ``"frame"``, ``"encoder"`` or ``"odometry"``.
    :param what: The input in a stop's detail (``"frame"``, ``"left encoder reading"``).
    :param values: An encoder's ticks, odometry's speed and yaw rate (a frame has none).
    :param report: The detail for values that are not finite, a format string over ``values``.
    :param decode: Makes a frame's image (``image`` calls it once).
    """

    kind: str
    what: str
    stamp: Any
    now: float
    values: tuple[Any, ...] = ()
    report: str = ""
    decode: Callable[[], np.ndarray] | None = field(default=None, repr=False)

    @cached_property
    def image(self) -> np.ndarray:
        """The frame decoded to the policy's input (raises what decoding raises)."""
        if self.decode is None:
            raise TypeError(f"a {self.kind} reading has no image")
        return self.decode()


@dataclass
class Step:
    """One period's way through the policy, for the ``observation`` and ``action`` checks."""

    now: float
    obs: dict[str, np.ndarray]
    reset: bool  # the policy is reset before this call (the first drive after a stop)
    action: np.ndarray | None = None
    note: str = ""  # the driving command's detail (e.g. "slowed: ...")


class Check:
    """One safety check; a subclass sets ``name``, ``reason`` and ``stage`` and defines ``__call__``.

    A controller builds each check once (``check(controller)``): ``__init__`` may refuse settings or a policy
    the check cannot work with (a one-line ``ValueError``) and may keep state across steps. ``__call__(subject)``
    returns why to stop (the stop's detail) or ``None``; its subject depends on ``stage`` (``STAGES``).
    """

    name: ClassVar[str]
    reason: ClassVar[StopReason | str]
    stage: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        missing = [attribute for attribute in ("name", "reason", "stage") if not hasattr(cls, attribute)]
        if missing or cls.stage not in STAGES:
            raise TypeError(f"{cls.__name__} needs a name, a reason and a stage in {STAGES}.")

    def __init__(self, controller: LaneFollowingController) -> None:
        self.controller = controller
        self.settings = controller.settings

    def __call__(self, subject: Any) -> str | None:
        raise NotImplementedError

    def deadline(self) -> float | None:
        """``state`` checks: when (on the controller's clock) this check will fire unless its input is renewed."""
        return None


# -- input: each reading as it arrives ------------------------------------------------------------------


class BadStamp(Check):
    """An input stamped with what is no finite number (NaN, inf)."""

    name, reason, stage = "bad_stamp", StopReason.BAD_STAMP, "input"

    def __call__(self, reading: Reading) -> str | None:
        return None if finite(reading.stamp) else f"{reading.what} stamped {reading.stamp!r}"


class FutureStamp(Check):
    """An input stamped more than ``max_future`` ahead of the controller's clock."""

    name, reason, stage = "future_stamp", StopReason.FUTURE_STAMP, "input"

    def __call__(self, reading: Reading) -> str | None:
        bound = self.settings.max_future
        if reading.stamp <= reading.now + bound:
            return None
        return f"{reading.what} stamped {reading.stamp - reading.now:.3f} s in the future (bound {bound:g} s)"


class FrameDecodes(Check):
    """A frame that does not decode to an image, or not from a frame of ``camera_size``."""

    name, reason, stage = "frame_decodes", StopReason.BAD_FRAME, "input"

    def __call__(self, reading: Reading) -> str | None:
        if reading.kind != "frame":
            return None
        try:
            reading.image  # noqa: B018 - decoding is the check
        except FrameSizeError as exc:
            return str(exc)
        except Exception as exc:  # noqa: BLE001 - any undecodable frame is a stop, not a crash
            return f"frame does not decode ({type(exc).__name__}: {exc})"
        return None


class FiniteReading(Check):
    """An encoder or odometry reading that is not finite (it is dropped until a valid one comes)."""

    name, reason, stage = "finite_reading", StopReason.NON_FINITE_OBSERVATION, "input"

    def __call__(self, reading: Reading) -> str | None:
        return None if all(finite(value) for value in reading.values) else reading.report.format(*reading.values)


# -- state: the inputs now, before and after the policy and between periods -------------------------------


class NoFrame(Check):
    """No valid frame yet."""

    name, reason, stage = "no_frame", StopReason.NO_FRAME, "state"

    def __call__(self, now: float) -> str | None:
        return "no camera frame yet" if self.controller.latest[0] is None else None


class StaleFrame(Check):
    """The newest frame is older than ``max_frame_age``."""

    name, reason, stage = "stale_frame", StopReason.STALE_FRAME, "state"

    def __call__(self, now: float) -> str | None:
        image, stamp = self.controller.latest
        age, bound = now - stamp, self.settings.max_frame_age
        if image is None or age <= bound:
            return None
        return f"newest frame is {age:.3f} s old (bound {bound:g} s)"

    def deadline(self) -> float | None:
        image, stamp = self.controller.latest
        return None if image is None else stamp + self.settings.max_frame_age


class VelocityFault(Check):
    """The last encoder or odometry reading was refused: wait for a valid one."""

    name, reason, stage = "velocity_fault", StopReason.NON_FINITE_OBSERVATION, "state"

    def __call__(self, now: float) -> str | None:
        speeds = self.controller.wheel_speeds
        if not speeds.measured_source or speeds.fault is None:
            return None
        return f"{speeds.fault}; waiting for a valid reading"


class VelocitySilent(Check):
    """The encoders (or odometry) are silent for ``velocity_timeout`` and ``velocity_fallback`` is ``stop``."""

    name, reason, stage = "velocity_silent", StopReason.VELOCITY_SILENT, "state"

    def __call__(self, now: float) -> str | None:
        speeds = self.controller.wheel_speeds
        return speeds.silence(now) if speeds.stops_on_silence else None

    def deadline(self) -> float | None:
        speeds = self.controller.wheel_speeds
        return speeds.silence_deadline() if speeds.stops_on_silence else None


# -- observation, inference and action: one period's way through the policy --------------------------------


class FiniteObservation(Check):
    """A NaN or infinity in the assembled observation, caught before the policy runs."""

    name, reason, stage = "finite_observation", StopReason.NON_FINITE_OBSERVATION, "observation"

    def __call__(self, step: Step) -> str | None:
        for key, value in step.obs.items():
            if value.dtype.kind == "f" and not np.isfinite(value).all():
                return f"{key} observation {value.tolist()}"
        return None


class LateCallRunning(Check):
    """A call that missed its deadline still runs: no new one is started."""

    name, reason, stage = "late_call_running", StopReason.INFERENCE_DEADLINE, "inference"

    def __call__(self, error: BaseException) -> str | None:
        if not isinstance(error, InferenceBusy):
            return None
        running = self.controller.worker.busy_for
        return "the late inference call is still running" + (f" ({running * 1000:.0f} ms)" if running else "")


class DeadlineMissed(Check):
    """No action within ``inference_deadline``."""

    name, reason, stage = "deadline_missed", StopReason.INFERENCE_DEADLINE, "inference"

    def __call__(self, error: BaseException) -> str | None:
        return str(error) if isinstance(error, InferenceTimeout) else None


class ObservationRefused(Check):
    """The runner refused a non-finite observation."""

    name, reason, stage = "observation_refused", StopReason.NON_FINITE_OBSERVATION, "inference"

    def __call__(self, error: BaseException) -> str | None:
        return str(error) if isinstance(error, NonFiniteObservationError) else None


class PolicyRaised(Check):
    """Whatever else the policy raised (the last inference check: it claims every exception)."""

    name, reason, stage = "policy_raised", StopReason.INFERENCE_ERROR, "inference"

    def __call__(self, error: BaseException) -> str | None:
        return f"{type(error).__name__}: {error}"


class FiniteAction(Check):
    """An action with a NaN or infinity, or not of the shape ``[forward, turn]``."""

    name, reason, stage = "finite_action", StopReason.NON_FINITE_ACTION, "action"

    def __call__(self, step: Step) -> str | None:
        action = step.action
        return None if action.shape == (2,) and np.isfinite(action).all() else f"the policy returned {action.tolist()}"


class CoverageAlarm(Check):
    """The policy's surprise above its threshold ``surprise_steps`` steps in a row (0: off): a stop with response
    ``stop``; with ``slow`` the action is scaled by ``surprise_slow`` while it stays above (counted in the
    controller's ``slowdowns``). A reset policy (after any stop) counts from zero again."""

    name, reason, stage = "coverage_alarm", StopReason.OUT_OF_COVERAGE, "action"

    def __init__(self, controller: LaneFollowingController) -> None:
        super().__init__(controller)
        if self.settings.surprise_steps and getattr(controller.policy, "surprise_threshold", None) is None:
            raise ValueError(
                "surprise_steps needs a policy exported with the coverage alarm "
                "(export_policy(..., surprise=True, surprise_threshold=...)); this one has none."
            )
        self.surprised = 0  # consecutive steps above the threshold

    def __call__(self, step: Step) -> str | None:
        steps, response = self.settings.surprise_steps, self.settings.surprise_response
        if not steps:
            return None
        policy = self.controller.policy
        threshold, surprise = policy.surprise_threshold, policy.last_surprise
        was_alarmed = not step.reset and self.surprised >= steps
        # A non-finite surprise counts as over.
        self.surprised = (0 if step.reset else self.surprised) + 1 if policy.surprised else 0
        if self.surprised < steps:
            if was_alarmed and response == "slow":
                logger.info("surprise %.3g back under the threshold %.3g: full speed again", surprise, threshold)
            return None
        detail = (
            f"surprise {surprise:.3g} above the threshold {threshold:.3g} for {self.surprised} steps: "
            "out of the model's coverage"
        )
        if response == "stop":
            return detail
        if not was_alarmed:
            self.controller.slowdowns += 1
            logger.warning("slowing down to %g: %s", self.settings.surprise_slow, detail)
        step.action = step.action * np.float32(self.settings.surprise_slow)
        step.note = f"slowed: {detail}"
        return None


#: The checks a controller runs, in order: within a stage, the first that fires decides the stop.
CHECKS: list[type[Check]] = [
    # input
    BadStamp,
    FutureStamp,
    FrameDecodes,
    FiniteReading,
    # state
    NoFrame,
    StaleFrame,
    VelocityFault,
    VelocitySilent,
    # observation
    FiniteObservation,
    # inference
    LateCallRunning,
    DeadlineMissed,
    ObservationRefused,
    PolicyRaised,
    # action
    FiniteAction,
    CoverageAlarm,
]


def register(check: type[Check], *settings: Setting, before: type[Check] | None = None) -> type[Check]:
    """Add a check kept outside this module to ``CHECKS`` (last, or just ``before`` another) and the rows of the
    settings it reads to ``CONTROLLER_SETTINGS``: controllers built from then on run it, the nodes take its settings.

    An ``inference`` check must come ``before=PolicyRaised``, which claims every exception.
    """
    if check in CHECKS or any(known.name == check.name for known in CHECKS):
        raise ValueError(f"a check named {check.name!r} is registered already.")
    taken = {setting.name for setting in CONTROLLER_SETTINGS} | {setting.keyword for setting in CONTROLLER_SETTINGS}
    clashes = [setting.name for setting in settings if {setting.name, setting.keyword} & taken]
    if clashes:
        raise ValueError(f"the settings table has {', '.join(clashes)} already.")
    CONTROLLER_SETTINGS.extend(settings)
    CHECKS.insert(len(CHECKS) if before is None else CHECKS.index(before), check)
    return check
