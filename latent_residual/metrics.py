"""Progress and metrics for long runs: a progress bar with rate and ETA, CSV and TensorBoard scalars.

What is measured is decided by the training loops; this module only shows and records it.
"""

from __future__ import annotations

import csv
import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

METRICS_CSV_NAME = "metrics.csv"


class RunLogger:
    """Show progress of a ``total``-step job and record scalars under ``directory``.

    Scalars go to ``directory/metrics.csv`` (long format: step, seconds, metric, value; append
    mode, so a resumed run continues the file) and to TensorBoard event files in
    ``directory/tensorboard``. With ``directory=None`` only the progress bar is shown.
    """

    def __init__(self, directory: str | Path | None, total: int, desc: str, *, quiet: bool = False) -> None:
        self.directory = Path(directory) if directory is not None else None
        self._start = time.monotonic()
        interactive = sys.stderr.isatty()
        self._bar = tqdm(
            total=total,
            desc=desc,
            disable=quiet,
            mininterval=0.5 if interactive else 10.0,
            dynamic_ncols=True,
            file=sys.stderr,
        )
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
        """Move the progress bar forward."""
        self._bar.update(steps)

    def log(self, step: int, **scalars: Any) -> None:
        """Record scalars at ``step`` and show them beside the progress bar."""
        seconds = time.monotonic() - self._start
        values = {key: float(value) for key, value in scalars.items()}
        self._bar.set_postfix({key: f"{value:.4g}" for key, value in values.items()}, refresh=False)
        if self._csv is not None:
            for key, value in values.items():
                self._csv.writerow([step, f"{seconds:.2f}", key, f"{value:.6g}"])
            self._csv_file.flush()
        if self._tb is not None:
            for key, value in values.items():
                self._tb.add_scalar(key, value, step)

    def close(self) -> None:
        self._bar.close()
        if self._csv_file is not None:
            self._csv_file.close()
        if self._tb is not None:
            self._tb.close()

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
