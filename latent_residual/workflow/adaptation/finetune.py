"""The prior-finetune baseline (``finetune``): the prior network alone trains on the target KL; and the ``finetune``
step (a finetuned checkpoint from a dataset).

Its config is the kernel's ``FinetuneConfig`` (the world model's own learning rate); Dreamer's variant is
``dreamer_finetune.py``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from latent_residual.checkpoints import save_world_model
from latent_residual.fitting import FinetuneConfig, FitResult, finetune_dynamics
from latent_residual.workflow.adaptation.base import AdaptationMethod
from latent_residual.workflow.data.datasets import reward_free_sequences
from latent_residual.workflow.deployment.loading import load_world_model
from latent_residual.workflow.paths import removed_on_failure

#: Where a finetune method saves its model in a run directory.
WORLD_MODEL_DIR_NAME = "world_model"


class PriorFinetuneMethod(AdaptationMethod):
    """The finetune baseline: the prior network alone trains on the target KL (encoder and heads frozen)."""

    #: What :func:`latent_residual.fitting.finetune_dynamics` minimises.
    objective = "kl"

    def adapt(self, base, sequences, *, seed, config: FinetuneConfig, log_dir, quiet):
        torch.manual_seed(seed)
        config = dataclasses.replace(config, seed=seed)
        return finetune_dynamics(base, sequences, config, objective=self.objective, log_dir=log_dir, quiet=quiet)

    def save(self, model, directory):
        save_world_model(model, directory / WORLD_MODEL_DIR_NAME, extra={"method": "finetune"})

    def load(self, base, directory):
        return load_world_model(directory / WORLD_MODEL_DIR_NAME)


def finetune_checkpoint(
    world_model: Path,
    data: Path,
    out: Path,
    config: FinetuneConfig,
    *,
    max_transitions: int | None = None,
    sequence_length: int = 32,
) -> FitResult:
    """Finetune ``world_model``'s prior on the target dataset ``data`` and save the checkpoint to ``out`` (the fit's
    metrics in ``out/logs``). A fit that fails leaves nothing in ``out``."""
    base = load_world_model(world_model)
    sequences = reward_free_sequences(data, sequence_length, max_transitions=max_transitions)
    with removed_on_failure(out):
        tuned, result = finetune_dynamics(base, sequences, config, log_dir=out / "logs")
        save_world_model(tuned, out, extra={"method": "finetune", "dataset": str(data)})
    return result
