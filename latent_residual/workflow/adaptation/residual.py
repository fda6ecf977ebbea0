"""ReDRAW's method (``redraw``): a small residual on the frozen model's prior logits, fitted on the target KL; its
config, and the ``adapt`` step (an adapter fitted on a dataset and saved).

The interface is ``base.py``; the replacement ablation, which shares this config, is ``replacement.py``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch

from latent_residual.adapters import attach_residual, load_adapter
from latent_residual.fitting import FitConfig, FitResult, fit_residual
from latent_residual.residual import ResidualConfig
from latent_residual.workflow.adaptation.base import ADAPTER_DIR_NAME, FIT_LOG_DIR_NAME, AdaptationMethod
from latent_residual.workflow.data.datasets import reward_free_sequences
from latent_residual.workflow.deployment.loading import load_world_model
from latent_residual.workflow.paths import removed_on_failure


@dataclass
class ResidualMethodConfig:
    """ReDRAW's settings: the residual's (``--residual-*``) and its fit's (``--fit-*``).

    Each is a config of its own, so every method whose config has a ``residual`` or ``fit`` field of the same class
    (the replacement ablation) takes the same flags.
    """

    residual: ResidualConfig = field(
        default_factory=ResidualConfig,
        # The method sets the mode itself (residual or replacement): no flag.
        metadata={"help": "The residual network.", "fixed": ("mode",)},
    )
    fit: FitConfig = field(default_factory=FitConfig, metadata={"help": "The residual's fit on the target data."})


class ResidualMethod(AdaptationMethod):
    """ReDRAW: a small residual on the frozen model's prior logits, fitted on the target KL."""

    mode = "residual"

    def adapt(self, base, sequences, *, seed, config: ResidualMethodConfig, log_dir, quiet):
        torch.manual_seed(seed)
        adapted = attach_residual(base, dataclasses.replace(config.residual, mode=self.mode))
        result = fit_residual(
            adapted, sequences, dataclasses.replace(config.fit, seed=seed), log_dir=log_dir, quiet=quiet
        )
        return adapted, result

    def save(self, model, directory):
        model.save_pretrained(directory / ADAPTER_DIR_NAME)

    def load(self, base, directory):
        return load_adapter(base, directory / ADAPTER_DIR_NAME, trainable=False)


def fit_adapter(
    world_model: Path,
    data: Path,
    out: Path,
    residual: ResidualConfig,
    fit: FitConfig,
    *,
    max_transitions: int | None = None,
    sequence_length: int = 32,
) -> FitResult:
    """Fit a residual on ``world_model`` (frozen) to the target dataset ``data`` and save the adapter to ``out``
    (the fit's metrics in ``out/logs``). A fit that fails (no better than the base) leaves nothing in ``out``."""
    torch.manual_seed(fit.seed)  # the residual's initial weights: the same seed gives the same adapter
    adapted = attach_residual(load_world_model(world_model), residual)
    sequences = reward_free_sequences(data, sequence_length, max_transitions=max_transitions)
    adapted.print_trainable_parameters()
    with removed_on_failure(out):
        result = fit_residual(
            adapted,
            sequences,
            fit,
            log_dir=out / FIT_LOG_DIR_NAME,
            data_summary={"dataset": str(data), "world_model": str(world_model)},
        )
        adapted.save_pretrained(out)
    return result
