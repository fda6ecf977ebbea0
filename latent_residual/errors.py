"""Exception classes, all rooted at LatentResidualError.

Messages name the value received, what is allowed, and the next step; no behaviour lives here.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class LatentResidualError(Exception):
    """Base class of every error this library raises on purpose."""


class ConfigError(LatentResidualError, ValueError):
    """A configuration value is out of range or of the wrong type."""


class RegistrationError(LatentResidualError):
    """A backbone or environment could not be registered (for example a duplicate id)."""


class NameNotFound(LatentResidualError, KeyError):
    """No backbone, environment or adapter is registered under the requested name."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""


class FileFormatError(LatentResidualError):
    """A file this library reads is missing, truncated, corrupt or not what it claims to be.

    Each kind of file raises its own subclass, so callers can catch one kind or all of them.
    """


class AdapterFileError(FileFormatError):
    """An adapter file is missing, truncated, corrupt or not what it claims to be."""


class CheckpointError(FileFormatError):
    """A world-model or actor-critic checkpoint is missing, corrupt, or does not fit the model."""


class DatasetError(FileFormatError):
    """Target data (a dataset file or in-memory sequences) lacks a key or has the wrong shape or dtype."""


class FitError(LatentResidualError):
    """A fit could not give a model better than its starting point: the residual's best held-out KL
    is worse than the base's, so the adapter would make the model's predictions worse."""


class TrainingDivergedError(LatentResidualError, FloatingPointError):
    """A training loss became NaN or infinite; training stopped before the step was applied."""


class NonFiniteObservationError(LatentResidualError, ValueError):
    """An observation handed to a policy holds NaN or infinite values (the runner's own class of the
    same name lives in ``onnx_policy.py``, which imports nothing of the library)."""


class IncompatibleAdapterError(LatentResidualError):
    """An adapter was made for a different base model (fingerprint or latent layout differ)."""


class ExportError(LatentResidualError):
    """A policy could not be exported to ONNX, or the exported file breaks the contract."""


class OutputPathError(ConfigError):
    """An output path cannot be written, or would replace a finished artefact; raised before any work.

    ``option`` names the flag or argument that gave the path; ``detail`` says what is wrong with it.
    """

    def __init__(self, option: str, detail: str) -> None:
        super().__init__(f"{option}: {detail}")
        self.option, self.detail = option, detail


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return ' Did you mean "x"?' for the closest choice, or an empty string."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f' Did you mean "{close[0]}"?' if close else ""


class CellError(LatentResidualError):
    """One cell of a comparison (a method, data size and seed) failed in a worker process; the message
    names the cell and the worker's own error."""


class WorkerError(LatentResidualError):
    """A process of a data-parallel run on this machine's cores failed; the message names the worker and
    the last line of its own error (its traceback was printed by the worker)."""
