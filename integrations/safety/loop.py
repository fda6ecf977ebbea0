"""Around a controller: ControlLoop publishes step() every period and a stop as soon as one is due; LogForwarder
passes this package's log to a ROS logger; stop_on_signals turns SIGINT/SIGTERM into a stop. No checks here."""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from latent_residual_integrations.safety.commands import Command
from latent_residual_integrations.safety.controller import LaneFollowingController

logger = logging.getLogger(__name__)
#: The integrations' logger, which the ROS nodes forward to their own log (``LogForwarder``).
PACKAGE_LOGGER = "latent_residual_integrations"


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
        #: Periods skipped because a step ran past them (skipped, not queued).
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
            self._thread.join(self.period + self.controller.settings.inference_deadline + 1.0)
        self._send(command)
        return command

    def _send(self, command: Command) -> None:
        try:
            self._publish(command)
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
