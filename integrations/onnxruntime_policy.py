"""Deprecated alias of :mod:`latent_residual.onnx_policy`, kept for one release (see the README's changelog).

Import ``OnnxPolicy`` and ``run_episode`` from ``latent_residual.onnx_policy`` instead.
"""

from __future__ import annotations

import warnings

from latent_residual.onnx_policy import MissingObservationError, OnnxPolicy, run_episode

__all__ = ["MissingObservationError", "OnnxPolicy", "run_episode"]

warnings.warn(
    "latent_residual_integrations.onnxruntime_policy is deprecated; import from latent_residual.onnx_policy.",
    DeprecationWarning,
    stacklevel=2,
)
