"""Adaptation methods: the one interface every way of turning a simulation-pretrained model into a target
policy implements, and the built-in methods (ReDRAW's residual, replacement dynamics, prior finetune, zero-shot).

They are registered entries (``methods.py`` registers these, a plugin's ``register_methods`` adds more);
``experiments.py`` runs whichever are asked for without knowing which they are.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from latent_residual.adapters import attach_residual, load_adapter
from latent_residual.checkpoints import save_world_model
from latent_residual.contract import WorldModel
from latent_residual.fitting import FitConfig, FitResult, finetune_dynamics, fit_residual
from latent_residual.residual import ResidualConfig
from latent_residual.workflow.deployment.loading import load_world_model

#: Where ``latent-residual adapt`` leaves the fit's metrics, inside the adapter directory.
FIT_LOG_DIR_NAME = "logs"
#: An experiment run's layout: a residual method's adapter, the fit's metrics and its summary beside it.
ADAPTER_DIR_NAME = "adapter"
RUN_FIT_LOG_DIR_NAME = "fit_logs"
RUN_FIT_INFO_NAME = "fit.json"


@dataclass
class MethodSettings:
    """The settings a method may read: the residual's, the residual fit's and the prior finetune's."""

    residual: ResidualConfig = field(default_factory=ResidualConfig)
    fit: FitConfig = field(default_factory=FitConfig)
    finetune: FitConfig = field(default_factory=lambda: FitConfig(lr=1e-4))


class AdaptationMethod:
    """One way to turn a simulation-pretrained world model and policy into a policy for the target.

    A method that uses target data implements :meth:`adapt` (fit a corrected model on reward-free
    sequences), :meth:`save` and :meth:`load` (so a re-run reuses the fit); a policy is then
    trained in the corrected model's imagination unless ``trains_policy`` is false. A method that
    uses no target data (``uses_target_data`` false) is a reference: the simulation policy is
    evaluated in the target as it is.
    """

    uses_target_data: bool = True
    trains_policy: bool = True
    #: Train the simulation policy further in the corrected model instead of a fresh one.
    continues_simulation_policy: bool = False

    def adapt(
        self,
        base: WorldModel,
        sequences: Mapping[str, Tensor],
        *,
        seed: int,
        settings: MethodSettings,
        log_dir: Path,
        quiet: bool,
    ) -> tuple[WorldModel, FitResult]:
        """Return the corrected model fitted on ``sequences`` (N, T, ...) and how the fit went; ``base`` stays unchanged."""
        raise NotImplementedError(f"{type(self).__name__} uses no target data; it has nothing to fit.")

    def save(self, model: WorldModel, directory: Path) -> None:
        """Write what :meth:`adapt` returned under ``directory``."""
        raise NotImplementedError(f"{type(self).__name__} has nothing to save.")

    def load(self, base: WorldModel, directory: Path) -> WorldModel:
        """Rebuild the corrected model that :meth:`save` wrote, on ``base``."""
        raise NotImplementedError(f"{type(self).__name__} has nothing to load.")


class ResidualMethod(AdaptationMethod):
    """ReDRAW: a small residual on the frozen model's prior logits, fitted on the target KL."""

    mode = "residual"

    def adapt(self, base, sequences, *, seed, settings, log_dir, quiet):
        torch.manual_seed(seed)
        adapted = attach_residual(base, dataclasses.replace(settings.residual, mode=self.mode))
        result = fit_residual(
            adapted, sequences, dataclasses.replace(settings.fit, seed=seed), log_dir=log_dir, quiet=quiet
        )
        return adapted, result

    def save(self, model, directory):
        model.save_pretrained(directory / ADAPTER_DIR_NAME)

    def load(self, base, directory):
        return load_adapter(base, directory / ADAPTER_DIR_NAME, trainable=False)


class ReplacementMethod(ResidualMethod):
    """The paper's ablation: the same small network outputs the prior logits itself, ignoring the prior."""

    mode = "replacement"


class PriorFinetuneMethod(AdaptationMethod):
    """The finetune baseline: the prior network alone trains on the target KL (encoder and heads frozen)."""

    def adapt(self, base, sequences, *, seed, settings, log_dir, quiet):
        torch.manual_seed(seed)
        return finetune_dynamics(
            base, sequences, dataclasses.replace(settings.finetune, seed=seed), log_dir=log_dir, quiet=quiet
        )

    def save(self, model, directory):
        save_world_model(model, directory / "world_model", extra={"method": "finetune"})

    def load(self, base, directory):
        return load_world_model(directory / "world_model")


class DreamerFinetune(PriorFinetuneMethod):
    """The poster's Dreamer-finetune baseline: the world model's dynamics train on the target data with
    its own loss, reward term off (encoder, posterior and heads frozen), and the simulation policy keeps
    training in the finetuned model."""

    continues_simulation_policy = True

    def adapt(self, base, sequences, *, seed, settings, log_dir, quiet):
        torch.manual_seed(seed)
        config = dataclasses.replace(settings.finetune, seed=seed)
        return finetune_dynamics(base, sequences, config, objective="world_model", log_dir=log_dir, quiet=quiet)


class ZeroShot(AdaptationMethod):
    """The reference: the simulation policy run in the target, unchanged."""

    uses_target_data = False
    trains_policy = False
