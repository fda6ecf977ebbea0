"""The policy off the control thread: InferenceWorker runs one call at a time on a daemon thread, with a deadline.
Which stop a late or failed call calls for is decided by the inference checks in checks.py, not here."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any


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
