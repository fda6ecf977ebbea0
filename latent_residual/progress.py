"""Progress and metrics for long runs: periodic progress lines with rate and ETA, CSV and TensorBoard scalars.

What is measured is decided by the training loops; this module only shows and records it.
"""

from __future__ import annotations

import csv
import math
import sys
import time
from pathlib import Path
from typing import Any

METRICS_CSV_NAME = "metrics.csv"
#: Seconds between progress lines: often on a terminal (one line redrawn), rarely in a log file.
_INTERVAL_TTY, _INTERVAL_LOG = 0.5, 10.0


def clock(seconds: float) -> str:
    """Seconds as mm:ss, or h:mm:ss from an hour on; "?" when not finite (an ETA before any rate)."""
    if not math.isfinite(seconds):
        return "?"
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes:02d}:{seconds:02d}"


class RunLogger:
    """Show progress of a ``total``-step job and record scalars under ``directory``.

    Progress goes to standard error: one line redrawn in place on a terminal, a new line every
    10 s otherwise (a log file stays readable), each with the rate, the time spent, the ETA and
    the latest scalars. Scalars go to ``directory/metrics.csv`` (long format: step, seconds,
    metric, value; append mode, so a resumed run continues the file) and to TensorBoard event
    files in ``directory/tensorboard``. With ``directory=None`` only progress is shown.

    :param initial: Steps already done before this run (a resumed job); the rate counts only new ones.
    :param unit: What a step is, for the rate ("episodes": episodes/s).
    """

    def __init__(
        self,
        directory: str | Path | None,
        total: int,
        desc: str,
        *,
        quiet: bool = False,
        initial: int = 0,
        unit: str = "steps",
    ) -> None:
        self.directory = Path(directory) if directory is not None else None
        self.total, self.desc, self.quiet, self.unit = total, desc, quiet, unit
        self._start = time.monotonic()
        self._initial = self._done = initial
        self._postfix: dict[str, float] = {}
        self._interactive = sys.stderr.isatty()
        self._last_shown = self._start
        self._csv_file = None
        self._csv = None
        self._tb = None
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            path = self.directory / METRICS_CSV_NAME
            new = not path.exists()
            self._csv_file = path.open("a", newline="", encoding="utf-8")
            self._csv = csv.writer(self._csv_file)
            if new:
                self._csv.writerow(["step", "seconds", "metric", "value"])
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.directory / "tensorboard"))

    def advance(self, steps: int = 1) -> None:
        """Count ``steps`` more steps done; shows a progress line when one is due."""
        self._done += steps
        now = time.monotonic()
        if now - self._last_shown >= (_INTERVAL_TTY if self._interactive else _INTERVAL_LOG):
            self._show(now)

    def line(self, now: float | None = None) -> str:
        """The progress line as it would be shown now."""
        elapsed = (time.monotonic() if now is None else now) - self._start
        rate = (self._done - self._initial) / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self._done) / rate if rate > 0 else math.inf
        percent = 100.0 * self._done / self.total if self.total else 100.0
        scalars = " ".join(f"{key}={value:.4g}" for key, value in self._postfix.items())
        return (
            f"{self.desc}: {self._done}/{self.total} ({percent:.0f}%) {rate:.3g} {self.unit}/s, "
            f"{clock(elapsed)} elapsed, ETA {clock(eta)}" + (f" | {scalars}" if scalars else "")
        )

    def _show(self, now: float, *, final: bool = False) -> None:
        self._last_shown = now
        if self.quiet:
            return
        if self._interactive:
            sys.stderr.write("\r\x1b[K" + self.line(now) + ("\n" if final else ""))
        else:
            sys.stderr.write(self.line(now) + "\n")
        sys.stderr.flush()

    def log(self, step: int, **scalars: Any) -> None:
        """Record scalars at ``step`` and show them with the next progress line."""
        seconds = time.monotonic() - self._start
        values = {key: float(value) for key, value in scalars.items()}
        self._postfix = values
        if self._csv is not None:
            for key, value in values.items():
                self._csv.writerow([step, f"{seconds:.2f}", key, f"{value:.6g}"])
            self._csv_file.flush()
        if self._tb is not None:
            for key, value in values.items():
                self._tb.add_scalar(key, value, step)

    def close(self) -> None:
        self._show(time.monotonic(), final=True)
        if self._csv_file is not None:
            self._csv_file.close()
        if self._tb is not None:
            self._tb.close()

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
